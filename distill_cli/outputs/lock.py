"""run.lock: one live run per output folder.

An OS file lock (flock), which the OS releases when its process ends, even by SIGKILL; the file
holds the holder's process id, for the refusal message and for the log line of a run that takes
over the file a dead one left. On a file system without flock, the process id decides.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from distill_cli.errors import DistillError
from distill_cli.reporting import log

LOCK = "run.lock"


def acquire(out: Path) -> int:
    """Hold ``out/run.lock`` and return its descriptor, or refuse (exit 2) naming the holder."""
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd, wait=True)
            no_flock = e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN)
            if not no_flock or (holder and _alive(holder)):
                os.close(fd)
                raise DistillError(
                    f"output folder {out} is in use by process {holder or '(unknown)'} "
                    f"(see {path}); wait for it to end, or choose another --output-dir"
                ) from None
        try:  # the holder may have removed the file while we opened it: lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    previous = _holder(fd)
    if previous and previous != str(os.getpid()):
        log(f"{path}: taking over the lock of process {previous}, which is no longer running")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def drop(out: Path, fd: int) -> None:
    """Remove the file while still holding it, then let go."""
    try:
        (out / LOCK).unlink(missing_ok=True)
    except OSError:
        pass
    finally:
        os.close(fd)


def _holder(fd: int, wait: bool = False) -> str:
    for _ in range(20 if wait else 1):  # a new holder writes its pid just after locking
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.05)
    return ""


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
