"""The code revision a run or a benchmark row was made with: results depend on the code."""
from __future__ import annotations

import subprocess
from pathlib import Path


def git_revision(root: Path, ignored: tuple[str, ...] = ()) -> str | None:
    """The short commit hash of the checkout at `root`, with "+dirty" when its tracked files
    (outside `ignored` pathspecs) have uncommitted changes; None without git or a checkout."""
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *ignored],
                               cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return revision + ("+dirty" if dirty else "")
