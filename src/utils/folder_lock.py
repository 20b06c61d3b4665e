"""One process at a time writes a folder: a run folder, an evaluation's output folder, a results file.

Two training runs in one folder (a job submitted again while the first still runs, two runs a
job script starts in the same second under SLURM, whose folder names stop at the second) would
take turns replacing `last.ckpt`, mix their rows in `metrics.csv` and their images in
`samples/`, and nothing would say so. The first to start holds an exclusive lock on a file in
the folder (`.lock`, which records who holds it) until it ends; a second is refused, naming the
holder. The kernel drops the lock when its process dies, however it dies, so a killed run never
leaves its folder locked for the next start.

The lock is `flock`'s: it works across the machines of a cluster on NFS (which Linux maps to its
own locks) and on Lustre or GPFS mounted with locking. Where the filesystem has none (Lustre
without `-o flock`) or the system has no `fcntl` (Windows), the folder is used unlocked, with a
warning: the lock only guards against a mistake, and must not stop a run that would work.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:   # Windows
    fcntl = None

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
#: what flock raises on a filesystem without locks (macOS's SMB and shared folders: ENOTSUP, which
#: is not EOPNOTSUPP there)
NO_LOCKS_ERRNOS = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


#: descriptors of the locks this process holds. A child Python forks (a DataLoader worker, a
#: multiprocessing fork; subprocess's children close them at exec) shares each one's open file,
#: and flock's lock lives as long as any descriptor of that file is open: a worker outliving the
#: run (a notebook's failed fit keeps its loader's iterator and persistent workers alive) kept
#: the folder locked against the next run.
_held_descriptors: set[int] = set()


def _close_inherited_locks() -> None:
    """In a forked child: close its copies of the parent's lock descriptors (close, never unlock:
    LOCK_UN would release the parent's lock, which the open file shares)."""
    for fd in _held_descriptors:
        try:
            os.close(fd)
        except OSError:
            pass
    _held_descriptors.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock."""


def holder_description() -> str:
    """Who holds a lock, in the words of the error a second process gets: enough to find it."""
    job = os.environ.get("SLURM_JOB_ID")
    return (f"process {os.getpid()} on {socket.gethostname()}" + (f" (SLURM job {job})" if job else "")
            + f", since {time.strftime('%Y-%m-%d %H:%M:%S')}")


class FolderLock:
    """`with FolderLock(folder, what, fix):` holds `folder/<name>` locked for the block, or raises
    FolderInUse("<folder> is in use by <holder> ... <fix>") when another process holds it
    (`what`: what the folder is, for the error). `wait_s`: how long to wait for the lock first
    (0: refuse at once; a results file's quick read-merge-write waits for the other writer)."""

    def __init__(self, folder: str | Path, what: str, fix: str, name: str = LOCK_NAME, wait_s: float = 0.0):
        self.folder, self.what, self.fix, self.wait_s = Path(folder), what, fix, wait_s
        self.path = self.folder / name
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        if fcntl is None:
            log.warning("%s is not locked: this system has no fcntl, so nothing stops a second process from "
                        "writing there at the same time", self.folder)
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            taken = self._acquire(fd)
            if taken is False:
                raise FolderInUse(f"{self.folder} is in use by {self._holder(fd)}: {self.what} is written by one "
                                  f"process at a time. {self.fix}")
        except BaseException:
            os.close(fd)
            raise
        if taken is None:   # a filesystem without locks
            os.close(fd)
            return self
        self._fd = fd
        _held_descriptors.add(fd)
        # Who holds it, for the error of the next process (the file is not the lock: it stays).
        # Only a courtesy: a full disk or quota must neither fail the claim nor keep the lock.
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder_description().encode(), 0)
        except OSError:
            pass
        return self

    def _acquire(self, fd: int) -> bool | None:
        """True when the lock was taken, False when another process holds it (after `wait_s`),
        None when the filesystem has no locks (warned: the folder is used unlocked)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(min(0.1, self.wait_s))
            except OSError as error:
                if error.errno not in NO_LOCKS_ERRNOS:
                    raise
                log.warning("%s is not locked: its filesystem refuses locks (%s), so nothing stops a second "
                            "process from writing there at the same time", self.folder, error.strerror)
                return None

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        except OSError:
            return "another process"

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            _held_descriptors.discard(self._fd)
            os.close(self._fd)   # closing the file releases the lock
            self._fd = None
