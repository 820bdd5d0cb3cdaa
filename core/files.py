"""Atomic writes: a reader sees an old file or folder or the new one, never a half-written one.

    with staged_folder(out) as tmp:      # an empty hidden sibling of `out`
        write_everything_into(tmp)       # an error here removes tmp and leaves `out` as it was
    # here `out` is the new folder

    with staged_file(path) as tmp:       # a hidden sibling file of `path`
        pq.write_table(table, tmp)

Renames stay on one file system because the staging path is a sibling of the target.

Fault injection for the kill-and-resume tests (tests/reliability): DASHCLIP_KILL_AT="<moment>:<glob>[#n]", with
several rules separated by ";", makes this process SIGKILL itself at the n-th (default first) atomic write whose
target path matches the glob (fnmatch on the whole path), at one of these moments:
    before-rename   the staged file or folder is complete but not yet under its name (a kill mid-write)
    between-renames a folder replacing an older one: the older one moved aside (to `old`), the new one not yet in
                    place; a restarted writer must find the older one there (replace_folder's `old`)
    after-rename    the new file or folder is in place (e.g. right after a checkpoint)
Unset (always, outside those tests) it costs one dictionary lookup per write.

    with locked(folder / ".lock", busy=lambda pid: InUse(f"... pid {pid}")):   # one writer at a time
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path


@contextmanager
def staged_folder(target: str | os.PathLike, old: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield an empty temporary sibling of `target`; swap it into place when the block ends without an error,
    remove it otherwise. `old`: see replace_folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        replace_folder(tmp, target, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(tmp: str | os.PathLike, target: str | os.PathLike, old: str | os.PathLike | None = None) -> None:
    """Move the finished folder `tmp` to `target`. A folder cannot be replaced while it holds files, so an older
    `target` is renamed to `old` first and removed after the swap. By default `old` is a hidden sibling private to
    this process; a fixed name lets a restarted process find the previous folder if it was killed between the two
    renames."""
    tmp, target = Path(tmp), Path(target)
    fault_point("before-rename", target)
    previous = None
    if target.exists():
        previous = Path(old) if old is not None else target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(target, previous)
        fault_point("between-renames", target)
    os.replace(tmp, target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    fault_point("after-rename", target)


def previous_version(target: str | os.PathLike) -> Path:
    """The fixed name (`.<name>.old`) under which `target`'s previous version waits while a new one is swapped in
    (staged_folder's `old`): a process restarted after a kill between the two renames finds it there, which a
    name with the pid in it would not allow."""
    target = Path(target)
    return target.with_name(f".{target.name}.old")


def current_or_previous(target: str | os.PathLike, complete: Callable[[Path], bool]) -> Path | None:
    """`target` if `complete` says so, else its previous version if a kill between the two renames left it
    complete at `previous_version(target)`, else None."""
    return next((c for c in (Path(target), previous_version(target)) if complete(c)), None)


def restore_previous(target: str | os.PathLike) -> None:
    """Put `target`'s previous version back at its name if a kill between the two renames left only that."""
    target, previous = Path(target), previous_version(target)
    if previous.exists() and not target.exists():
        os.replace(previous, target)


def _remove_orphans(target: Path) -> None:
    """Remove staging folders of `target` left by killed processes (their pid is in the name)."""
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.tmp-*-*"):
        pid = leftover.name[len(target.name) + 6:].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether process `pid` still runs on this machine (staging folders, locks and MLflow runs name their pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextmanager
def staged_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden sibling path of `target` to write; rename it to `target` when the block ends without an
    error, remove it otherwise."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fault_point("before-rename", target)
        os.replace(tmp, target)
        fault_point("after-rename", target)
    finally:
        tmp.unlink(missing_ok=True)


def read_json_object(path: str | os.PathLike, error: type[Exception]) -> dict:
    """The JSON object stored in `path`; `error` naming the file when it cannot be read, is not JSON (or not UTF-8)
    or holds something other than an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    with staged_file(path) as tmp:
        tmp.write_text(text)


KILL_AT = "DASHCLIP_KILL_AT"
_fault_hits: Counter[str] = Counter()


def fault_point(moment: str, target: str | os.PathLike) -> None:
    """SIGKILL this process here if a DASHCLIP_KILL_AT rule names this moment and target (see the module doc).
    Writers that publish by their own rename (a new export version) call it around that rename too."""
    rules = os.environ.get(KILL_AT)
    if not rules:
        return
    for rule in rules.split(";"):
        when, _, rest = rule.strip().partition(":")
        pattern, _, nth = rest.partition("#")
        if when == moment and fnmatch(str(target), pattern):
            _fault_hits[rule] += 1
            if _fault_hits[rule] == int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def locked(path: str | os.PathLike, busy: Callable[[str], Exception] | None = None,
           waiting: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the file `path` while the block runs; the file holds the holder's pid.

    fcntl.flock: the kernel releases it when the holder ends, SIGKILL included, so a killed run never blocks its
    rerun. If another process holds it: with `busy`, raise busy(<the holder's pid>) (a second run refuses);
    otherwise print `waiting` (if any) on stderr and wait for it (a second run queues)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy is not None:
                raise busy(os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown") from None
            if waiting:
                print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
