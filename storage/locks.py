"""Entry locks that a crash cannot leave behind, and the owner tags that make staging reclaimable.

A writer holds ``locks/<fingerprint>.lock`` with ``flock(2)`` while it checks whether the entry
exists, computes it and commits it. The kernel drops an ``flock`` when its process dies, however
it dies (``kill -9`` included), so there is no stale lock to expire or break: the next run simply
gets it. A second writer of the same entry waits, says whom it waits for (the holder writes its
pid, host and stage into the file), and then finds the entry committed and reuses it, so two
concurrent runs never compute one entry twice. (Prefect's file lock manager, used before, wrote
``"expiration": null`` files that outlived a killed run and hung every later one.)

``flock`` works across processes on one host and, on Linux, over NFS (emulated with POSIX locks);
stores on other network filesystems should be checked before relying on it.

Staging folders and scratch folders carry an owner tag (host, pid, process start time) in their
names, so :func:`owner_alive` can tell an abandoned folder (its process is gone) from one a live
run is still writing, with no age threshold to guess.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

#: How often a waiting writer re-tries the lock (seconds) and re-prints that it is waiting.
POLL_S = 0.2
REMIND_S = 30.0
_HOST = socket.gethostname().replace("-", "_") or "host"


def _start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (clock ticks since boot), or "" where /proc is absent.

    A pid alone can be reused by a new process after the owner died; pid + start time cannot.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tag() -> str:
    """This process as a file-name-safe tag: ``host-pid-starttime``."""
    pid = os.getpid()
    return f"{_HOST}-{pid}-{_start_time(pid) or 0}"


def owner_alive(tag: str) -> bool | None:
    """Is the process named by an :func:`owner_tag` still running? None if it ran on another host."""
    try:
        host, pid_s, start = tag.rsplit("-", 2)
        pid = int(pid_s)
    except ValueError:
        return None
    if host != _HOST:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    return start in ("0", _start_time(pid))


class EntryLock:
    """An exclusive lock on one fingerprint under ``<store>/locks/`` (see the module docstring)."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.path = Path(folder) / f"{fingerprint}.lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never blocks."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return False
                raise
            # `store clean` may have unlinked the file between our open and flock: then we hold a
            # lock on a dead inode that nobody else can see, so start again on the live path.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)

    def acquire(self, what: str, timeout: float | None = None,
                on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock, waiting for the holder (and saying so) if there is one.

        ``what`` (e.g. ``"dedup 1a2b3c4d5e6f"``) is written into the lock file for others to see.
        Raises TimeoutError after ``timeout`` seconds (None waits as long as the holder lives).
        """
        say = on_wait or (lambda msg: print(msg, file=sys.stderr, flush=True))
        started = time.monotonic()
        reminded = None
        while not self.try_acquire():
            now = time.monotonic()
            if reminded is None or now - reminded >= REMIND_S:
                say(f"winnow: waiting for {self.holder() or 'another process'} to finish {what} "
                    f"(it holds {self.path.name}; this run will reuse its result)")
                reminded = now
            if timeout is not None and now - started >= timeout:
                raise TimeoutError(f"{what}: still locked by {self.holder() or 'another process'} after {timeout:.0f} s")
            time.sleep(POLL_S)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "owner": owner_tag(), "what": what,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(info) + "\n").encode(), 0)

    def holder(self) -> str:
        """Who holds the lock, as written by the holder ("pid N on HOST since T"), or ""."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return ""
        if not info:
            return ""
        return f"pid {info.get('pid')} on {info.get('host')} (since {info.get('since')})"

    def release(self) -> None:
        """Let go of the lock; the file stays (deleting it would race with waiters)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextlib.contextmanager
def entry_lock(folder: Path, fingerprint: str, what: str, timeout: float | None = None,
               on_wait: Callable[[str], None] | None = None) -> Iterator[EntryLock]:
    """``with entry_lock(...)``: hold the lock on ``fingerprint`` for the block."""
    lock = EntryLock(folder, fingerprint)
    lock.acquire(what, timeout=timeout, on_wait=on_wait)
    try:
        yield lock
    finally:
        lock.release()


def remove_free_locks(folder: Path) -> list[Path]:
    """Delete the lock files nobody holds (housekeeping); returns what was removed."""
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    for path in sorted(Path(folder).glob("*.lock")):
        lock = EntryLock(path.parent, path.name[: -len(".lock")])
        if lock.try_acquire():
            try:
                path.unlink(missing_ok=True)  # a waiter that opened it re-checks the inode
                removed.append(path)
            finally:
                lock.release()
    return removed
