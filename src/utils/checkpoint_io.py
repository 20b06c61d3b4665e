"""Checkpoint files that are whole or absent, also across filesystems and power losses.

Lightning's `TorchCheckpointIO` serialises the checkpoint into memory, then fsspec writes it to
a temporary file in the system's temp folder and moves it into place. Where that folder and the
checkpoint folder are different filesystems (a node-local /tmp beside shared cluster storage:
the usual SLURM setup) the move is a copy that first empties the existing `last.ckpt`, so a job
killed during the copy (SLURM sends SIGKILL some 30 s after SIGTERM; a U-GAT-IT checkpoint is
gigabytes) leaves it cut short. Nothing is synced to disk either, so after a node's power loss
a renamed file can lack its data.

Here the temporary file sits beside its target (a hidden name that no `*.ckpt` search finds),
`torch.save` writes into it directly (no second copy of the checkpoint in memory), it is synced,
renamed over the target in one step (`os.replace`, atomic on one filesystem), and the folder's
entry is synced. Paths with a scheme (`s3://`, `gs://`) keep Lightning's way.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)
#: Windows refuses to replace a file another program holds open (an eval.py reading last.ckpt,
#: a virus scanner, a sync client): the rename is retried for this long
REPLACE_RETRY_SECONDS = 10.0
#: a temporary checkpoint untouched for this long is a killed writer's: one being written (by
#: another job sharing the folder, say) has its modification time moved by every write
STALE_TEMPORARY_SECONDS = 600.0


class DurableCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_whole(Path(path), lambda stream: torch.save(checkpoint, stream))


def write_whole(path: Path, write) -> None:
    """`write(stream)` into a temporary file beside `path`, synced, then renamed over `path`:
    `path` is the old file or the new one, whole, at every moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Left by a writer that was killed (gigabytes each), also of a name never written again
    # (crashed.ckpt). Only old ones: another process may be writing into this folder right now.
    for stale in path.parent.glob(".*.ckpt.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - stale.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                stale.unlink()
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "xb") as stream:   # created with the umask's permissions, as the target would be
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    sync_folder(path.parent)


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
            log.warning("Could not sync the folder %s after renaming a checkpoint into it (%s); the file itself "
                        "is synced", folder, error)


_unsyncable_folders: set[Path] = set()
