"""The code revision a run or a benchmark row was made with: results depend on the code."""
from __future__ import annotations

import subprocess
from pathlib import Path

#: where a file not yet added to git takes part in a run (a new model module, a new config): the
#: code and the configs. Untracked files elsewhere (notes, notebooks, outputs) do not count.
CODE_FOLDERS = ("src", "conf")


def _git(root: Path, *args: str, check: bool = True) -> str:
    # git writes UTF-8 (paths, diffs); the system's code page (Windows', an ASCII locale) would
    # fail on a non-ASCII character of an uncommitted change, or garble code.patch.
    return subprocess.run(["git", *args], cwd=root, capture_output=True, encoding="utf-8", errors="replace",
                          check=check, timeout=30).stdout


def git_revision(root: Path, ignored: tuple[str, ...] = ()) -> str | None:
    """The short commit hash of the checkout at `root`, with "+dirty" when its tracked files
    (outside `ignored` pathspecs) have uncommitted changes, or its code folders files git does not
    track yet; None without git or a checkout."""
    try:
        revision = _git(root, "rev-parse", "--short", "HEAD").strip()
        dirty = (_git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *ignored).strip()
                 or untracked_code(root, ignored))
    except (OSError, subprocess.SubprocessError):
        return None
    return revision + ("+dirty" if dirty else "")


def untracked_code(root: Path, ignored: tuple[str, ...] = ()) -> list[str]:
    """Files under CODE_FOLDERS that git neither tracks nor ignores (paths from `root`)."""
    folders = [folder for folder in CODE_FOLDERS if (Path(root) / folder).is_dir()]
    if not folders:
        return []
    listed = _git(root, "ls-files", "--others", "--exclude-standard", "--", *folders, *ignored)
    return listed.splitlines()


#: an untracked code file larger than this is named in the record, not kept (a data file or a
#: checkpoint put under src/ would fill every start's record)
MAX_KEPT_UNTRACKED_BYTES = 1_000_000


def uncommitted_changes(root: Path) -> tuple[str, list[str]] | None:
    """(the checkout's uncommitted code as one patch, the untracked code files it could not keep)
    at `root`, what a "+dirty" revision leaves out: `git diff HEAD` of the tracked files, then each
    untracked code file (a researcher's new model module, its config) as a new file, so that
    `git apply` of the patch on the revision gives the code the run ran; binary files and those
    over MAX_KEPT_UNTRACKED_BYTES are only named. None without git or a checkout."""
    try:
        diff, not_kept = _git(root, "diff", "HEAD"), []
        for name in untracked_code(root):
            added = new_file_diff(root, name) if (Path(root) / name).stat().st_size <= MAX_KEPT_UNTRACKED_BYTES else ""
            if added.startswith("diff --git") and "\nBinary files " not in added:
                diff += added
            else:
                not_kept.append(name)
        return diff, not_kept
    except (OSError, subprocess.SubprocessError):
        return None


def new_file_diff(root: Path, name: str) -> str:
    """The patch that adds the file `name` (a path from `root`) as it is."""
    # (--no-index exits 1 where the files differ, which they do)
    return _git(root, "diff", "--no-index", "--", "/dev/null", name, check=False)
