"""Free TCP ports on 127.0.0.1 for the local services tests and benchmarks start (redis-server, TF workers, torchrun).

The sockets stay open until all n ports are chosen, so the n ports differ; another process may still take one
before its user binds it, a race the callers accept (they start in milliseconds, on ports the kernel just freed)."""

from __future__ import annotations

import socket


def free_ports(n: int = 1) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
