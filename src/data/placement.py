"""A dataset built in a scratch folder, renamed into place whole: readers see no folder or a
complete one, and two jobs building the same data at once both end with it."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable


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
