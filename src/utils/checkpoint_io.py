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

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from src.utils.whole_files import remove_stale_temporaries, write_whole

#: a temporary checkpoint untouched for this long is a killed writer's: one being written (by
#: another job sharing the folder, say) has its modification time moved by every write
STALE_TEMPORARY_SECONDS = 600.0


class DurableCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # Temporary checkpoints of killed writers are gigabytes each, also of a name never written
        # again (crashed.ckpt).
        remove_stale_temporaries(Path(path).parent, "*.ckpt", STALE_TEMPORARY_SECONDS)
        write_whole(Path(path), lambda stream: torch.save(checkpoint, stream))
