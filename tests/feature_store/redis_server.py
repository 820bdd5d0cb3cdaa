"""A private redis-server for the Redis online store's tests and benchmark: a free 127.0.0.1 port, in memory only
(no RDB snapshots, no AOF), its files in a folder of the caller's, stopped on exit.

    with redis_server(folder) as connection:    # "127.0.0.1:<port>", Feast's Redis connection_string
        ...
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

from tests.helpers.ports import free_ports

NOT_FOUND = ("no redis-server binary on PATH: install it (`apt-get install redis-server`, which `make test` runs "
             "where it can) to use the Redis online store here")


@contextlib.contextmanager
def redis_server(folder: Path, tries: int = 3):
    """Start redis-server, wait until it answers PING, yield its connection string, stop it. FileNotFoundError
    (NOT_FOUND) where no binary exists; RuntimeError with the server's log where it does not start."""
    import redis  # the client comes with the feature_store extra (feast[redis])

    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError(NOT_FOUND)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "redis.log"
    for _ in range(tries):  # another process may take the free port before the server binds it
        port = free_ports()[0]
        with open(log_path, "w") as log:
            command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", str(folder)]
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            deadline = time.monotonic() + 10
            while server.poll() is None and time.monotonic() < deadline:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            else:
                continue  # exited (port taken) or never answered: stopped below, then another port
            yield f"127.0.0.1:{port}"
            return
        finally:
            client.close()
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    raise RuntimeError(f"redis-server did not start: {log_path.read_text()[-2000:]}")
