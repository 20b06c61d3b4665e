"""Environment variables set for a while (stdlib only: imported before torch, whose CUDA
allocator reads its settings from the environment when it loads)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable


@contextlib.contextmanager
def environment_restored(names: Iterable[str]):
    """The environment variables `names` as they were before the block (unset where they were)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
