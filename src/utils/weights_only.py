"""Every torch.load inside a block reads tensors only, also one a library makes with
`weights_only=False` (torch-fidelity's Inception weights, torch.export's pickled constants):
torch reads TORCH_FORCE_WEIGHTS_ONLY_LOAD at each call, and it wins over the argument. A file
swapped between a check and a library's own load is then read as safely as the check read it."""
from __future__ import annotations

import contextlib
import os
from unittest import mock


@contextlib.contextmanager
def weights_only_loads():
    with mock.patch.dict(os.environ, {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}):
        # Its opposite, which users set for torch >= 2.6's default, would make torch refuse
        # every load ("only one of ... should be set"); restored with the rest after the block.
        os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        yield
