"""Compile and load the Winograd tile-transform kernels (`winograd_kernels.c`).

Plain C through ctypes rather than a torch C++ extension: the file needs no torch or Python
headers, so it builds in about a second with the system C compiler (a torch extension takes a
minute and needs ninja and the Python headers). It is compiled for the CPU it runs on
(`-march=native`), so the cached library is keyed by the source, the flags and the CPU's
feature flags; a home directory shared by different machines gets one library per CPU kind.
The library links the same OpenMP runtime torch has loaded (libgomp), so its threads do not
compete with a second pool.
"""
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from src.utils.whole_files import staged

SOURCE = Path(__file__).with_name("winograd_kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


class WinogradUnavailable(RuntimeError):
    """The Winograd kernels cannot be built here (no C compiler, or it failed)."""


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:   # not Linux (platform.machine: Windows has no os.uname)
        return platform.machine()
    flags = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return platform.machine() + flags


def _writable(folder: Path) -> bool:
    """Whether `folder` can be made and written: its nearest existing ancestor is a folder this
    user may write in (a read-only home, a file in the way, no permission: no). Nothing is made
    here; `_build` makes the folder."""
    try:
        existing = next((parent for parent in (folder, *folder.parents) if parent.exists()), None)
    except OSError:   # a folder on the way that cannot be looked into
        return False
    return existing is not None and existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def _user_cache_dir() -> Path | None:
    """XDG_CACHE_HOME, or ~/.cache; None without a home (HOME unset and no passwd entry, as in
    some containers, where Path.home() raises RuntimeError)."""
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"])
    try:
        return Path.home() / ".cache"
    except RuntimeError:
        return None


def _temporary_cache_dir() -> Path:
    """This user's own folder under the temporary directory: made private, and refused when someone
    else owns it or may write in it (a library planted there would be loaded into the run)."""
    if not hasattr(os, "getuid"):   # Windows: the temporary directory is the user's own already
        return Path(tempfile.gettempdir()) / "gan-i2i" / "winograd"
    uid = os.getuid()
    private = Path(tempfile.gettempdir()) / f"gan-i2i-{uid}"
    try:
        private.mkdir(mode=0o700, exist_ok=True)
        status = private.lstat()
    except OSError as error:
        raise WinogradUnavailable(f"no folder to cache the compiled kernels in ({private}: {error}); set "
                                  f"XDG_CACHE_HOME to a writable folder, or model.fast_conv=false") from error
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != uid or status.st_mode & 0o022:   # a link: not S_ISDIR
        raise WinogradUnavailable(f"{private}, the fallback folder for the compiled kernels, is not this user's own "
                                  f"private folder; set XDG_CACHE_HOME to a writable folder of yours, or "
                                  f"model.fast_conv=false")
    return private / "winograd"


def _cache_dir() -> Path:
    """Where the compiled library is cached: XDG_CACHE_HOME or ~/.cache, or, where that cannot be
    written (a read-only or missing home on a cluster's compute node), a private folder under the
    temporary directory, built again there by each new machine, rather than no kernels at all."""
    root = _user_cache_dir()
    if root is not None and _writable(root / "gan-i2i" / "winograd"):
        return root / "gan-i2i" / "winograd"
    return _temporary_cache_dir()


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise WinogradUnavailable("no C compiler found (set CC, or install gcc); "
                              "set model.fast_conv=false to use torch's convolution")


def _build(target: Path) -> None:
    compiler = _compiler()
    # Built beside the target, synced and renamed: ranks of a DDP run may build at the same time,
    # and a library the name points at is on disk whole.
    with staged(target) as tmp:
        result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(tmp)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise WinogradUnavailable(f"compiling {SOURCE} with {compiler} failed "
                                      f"(set model.fast_conv=false to use torch's convolution):\n"
                                      f"{result.stderr.strip()}")


#: why the kernels could not be built or loaded in this process (not tried again: every model
#: built would otherwise run the compiler once more, or open macOS's install-the-tools dialog)
_failure: list[WinogradUnavailable] = []


@functools.cache
def kernels() -> ctypes.CDLL:
    """The compiled kernels, built on first use and cached on disk.

    Raises WinogradUnavailable (with the compiler's or the loader's message) when they cannot be
    built or loaded; the models then keep torch's convolutions (`model.fast_conv=auto`).
    """
    if _failure:
        raise _failure[0]
    try:
        return load_kernels()
    except WinogradUnavailable as error:
        _failure.append(error)
        raise
    except OSError as error:   # built, but not loadable here (Windows: no OpenMP DLL on the search path), or not replaceable
        _failure.append(WinogradUnavailable(f"the Winograd kernels cannot be loaded ({error}); set "
                                            f"model.fast_conv=false to use torch's convolution"))
        raise _failure[0] from error


def load_kernels() -> ctypes.CDLL:
    """`kernels()` without the memory of a failure: build if needed, load, declare the signatures."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()
                         + _cpu_signature().encode()).hexdigest()[:16]
    target = _cache_dir() / f"winograd_{key}.so"
    fresh = not target.exists()
    if fresh:
        _build(target)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError:
        if fresh:
            raise
        # A cached library that does not load (cut short by a machine that went down before
        # it reached the disk) is built again, once, rather than refused by every later run.
        _build(target)
        lib = ctypes.CDLL(str(target))
    pointer, size, threads = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for prefix in ("winograd_", "winograd_k4_"):
        for name in ("input_transform", "input_transform_adjoint"):   # ..., Hs, Ws, ph, pw, reflect
            getattr(lib, prefix + name).argtypes = [pointer, pointer, size, size, size, size,
                                                    size, size, size, size, ctypes.c_int, threads]
        getattr(lib, prefix + "output_transform_adjoint").argtypes = [pointer, pointer, size, size, size, size, threads]
        for name in ("weight_transform", "weight_transform_adjoint"):
            getattr(lib, prefix + name).argtypes = [pointer, pointer, size, size, threads]
        getattr(lib, prefix + "output_transform").argtypes = [pointer, pointer, pointer, size, size, size, size, threads]
    return lib
