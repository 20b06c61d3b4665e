"""Files that are whole or absent: written beside their target, synced, renamed into place.

A reader (a resumed job, `ckpt_path=auto`, another job of a sweep reading its table) sees the
old file or the new one, never one cut short by a writer killed mid-write or by two writers
taking turns. The temporary file sits beside its target under a hidden name (`.<name>.<id>.tmp`),
on the same filesystem, so the rename is one atomic step; the folder's entry is then synced so
the rename survives a power loss. A name too long for that is cut at its start in the hidden one
(`NAME_MAX_BYTES`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)
#: Windows refuses to replace a file another program holds open (an eval.py reading last.ckpt,
#: a virus scanner, a sync client): the rename is retried for this long
REPLACE_RETRY_SECONDS = 10.0


#: the longest file name, in bytes, of the common file systems (ext4, XFS, APFS, Lustre, NFS
#: exports of those); a temporary name longer than its target's is refused with ENAMETOOLONG
NAME_MAX_BYTES = 255
#: bytes a writer's id takes at most (`writer_id`), kept free in every temporary name
WRITER_ID_BYTES = 16


def writer_id() -> str:
    """This write's part of a temporary name: the process id (at most 8 hex digits), which no live
    process shares, and 8 random hex digits for two threads of one process or two machines
    writing to one network folder. (A 32-digit uuid made the temporary names of legal names of
    218 bytes and more too long to create.)"""
    return f"{os.getpid():x}{uuid.uuid4().hex[:8]}"


def temporary_name(name: str, writer: str) -> str:
    """The hidden name a writer's temporary file of `name` has (`writer`: a glob's `*` too). A
    `name` too long to take the hidden name's 22 more bytes within NAME_MAX_BYTES loses its start,
    whole characters, so that its end (the extension a `*.ckpt` glob of stale ones matches) stays
    and the same `name` always gives the same cut (a glob of one exact name finds its files)."""
    room = NAME_MAX_BYTES - len(f"..{'x' * WRITER_ID_BYTES}.tmp")
    encoded = os.fsencode(name)   # the bytes the file system counts (undecodable ones included)
    if len(encoded) > room:
        cut = encoded[-room:]
        while cut and cut[0] & 0xC0 == 0x80:   # a UTF-8 character's continuation byte: drop its rest
            cut = cut[1:]
        name = os.fsdecode(cut)
    return f".{name}.{writer}.tmp"


def remove_stale_temporaries(folder: Path, name_glob: str, older_than_s: float) -> None:
    """Temporary files of the names `name_glob` matches, left by writers that were killed (and of
    names never written again), untouched for `older_than_s` seconds: younger ones may be
    another process's write in progress."""
    for stale in folder.glob(temporary_name(name_glob, "*")):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - stale.stat().st_mtime > older_than_s:
                stale.unlink()


@contextlib.contextmanager
def staged(path: Path, sync: bool = True):
    """A temporary path beside `path` for the block to write (itself, an exporter, a compiler):
    renamed over `path` when the block ends well, removed when it fails, so `path` is the old
    file or the new one, whole, at every moment. Synced before the rename, and the folder after,
    unless `sync=False` (against a power loss; a killed writer is covered without them), for
    files remade by running again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / temporary_name(path.name, writer_id())
    try:
        yield temporary
        if sync:
            # A handle that may write: Windows' fsync (FlushFileBuffers) refuses a read-only one.
            with open(temporary, "r+b") as stream:
                os.fsync(stream.fileno())
        replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()   # a failed block's (renamed, it is gone)
    if sync:
        sync_folder(path.parent)


def write_whole(path: Path, write, sync: bool = True) -> None:
    """`write(stream)` into a file at `path`, whole or not at all (`staged`)."""
    with staged(path, sync) as temporary:
        with open(temporary, "xb") as stream:   # created with the umask's permissions, as the target would be
            write(stream)


def replace(source: Path, target: Path) -> None:
    """os.replace, retried for a while on Windows where another program holds `target` open."""
    deadline = time.monotonic() + REPLACE_RETRY_SECONDS
    while True:
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if os.name != "nt" or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; Windows cannot open a folder for syncing). Some
    network and FUSE file systems refuse to sync a folder: the file itself is synced and renamed
    already, so that is said once, not raised."""
    if os.name == "nt":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        if folder not in _unsyncable_folders:
            _unsyncable_folders.add(folder)
            log.warning("Could not sync the folder %s after renaming a file into it (%s); the file itself "
                        "is synced", folder, error)


_unsyncable_folders: set[Path] = set()


def write_text_whole(path: Path, text: str) -> None:
    write_whole(Path(path), lambda stream: stream.write(text.encode()))


def whole_zip_archive(path: str | Path) -> bool:
    """Whether `path` is a whole zip archive, as torch.save writes (its directory comes last, so
    a file cut short has none). Unlike zipfile.is_zipfile, which answers False for any OSError,
    a read the system refuses (permissions, a network file system's I/O error) is raised: the
    file may be whole."""
    try:
        with zipfile.ZipFile(path):
            return True
    except zipfile.BadZipFile:
        return False
