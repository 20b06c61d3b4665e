"""A dataset built in a scratch folder, renamed into place whole: readers see no folder or a
complete one, and two jobs building the same data at once both end with it."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

#: A build's scratch folder untouched this long was left by a build that was killed (a live one
#: writes every second while it fetches, extracts or generates).
STALE_SCRATCH_S = 3600


def scratch_prefix(target: Path) -> str:
    """The name every scratch folder of a build of `target` starts with (beside `target`)."""
    return f".{target.name}-"


def remove_stale_scratch(target: Path) -> None:
    """Scratch folders of earlier builds of `target` that were killed (SIGKILL, a job's time
    limit: no cleanup ran), holding partial archives or images of up to several GB; a younger
    one may be another job's build in progress, and stays."""
    for scratch in target.parent.glob(scratch_prefix(target) + "*"):
        if not scratch.is_dir():
            continue
        try:
            newest = max((entry.stat().st_mtime for entry in [scratch, *scratch.rglob("*")]), default=0.0)
        except FileNotFoundError:
            # An entry gone since it was listed, or a folder in the walk (pathlib's rglob raises
            # then): another job's build, cleaned up or placed meanwhile, in progress, not stale.
            continue
        if time.time() - newest > STALE_SCRATCH_S:
            log.warning("Removing %s, left by a build of %s that was stopped", scratch, target.name)
            shutil.rmtree(scratch, ignore_errors=True)


def place(built: Path, target: Path, complete: Callable[[Path], bool]) -> bool:
    """Rename the dataset `built` (beside `target`) to `target`; False where another process (a
    job started at the same time, building the same data) put a dataset that `complete` accepts
    there first. A rename never nests one folder in the other, as a move into an existing folder
    would. POSIX renames over an empty folder; Windows refuses any existing target, so an empty
    one is removed first (a filled one refuses, and is then judged by `complete`).

    A `target` that is a symbolic link (data/<name> pointing at scratch storage, its folder empty
    or not made yet) is filled through it: the link itself can be neither removed as a folder nor
    renamed over (NotADirectoryError). Build beside the link's target (`target.resolve()`), so the
    rename stays on one file system."""
    target = target.resolve()
    try:
        if target.exists():
            with contextlib.suppress(FileNotFoundError):   # another job removed it first
                target.rmdir()   # empty when the build started; not where another job filled it since
        os.rename(built, target)
        return True
    except OSError:
        if target.is_dir() and complete(target):
            return False
        raise
