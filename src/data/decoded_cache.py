"""Decoded images kept in memory (`data.cache_decoded`), for datasets of small images read many
times: the noise models' 32 px shapes, MNIST and CIFAR-10 decode 64 PNGs per batch (a WGAN
critic's iteration 320), on the training process's thread without loader workers. Measured on
a 2-core Xeon, the 32 px shapes: 11 ms per 64-image batch decoding, 3.5 ms from the cache (from
the second epoch on).

Decoding is deterministic, so a cached image is the one the file would give again; the random
steps (flips, crops) run on every access as before. Each loader process keeps its own cache
(persistent workers keep theirs across epochs); the memory is the decoded dataset's size per
process, which is why it is off for folders of photos.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import Callable, TypeVar

import numpy as np

Decoded = TypeVar("Decoded", np.ndarray, tuple[np.ndarray, ...])


class DecodedImages:
    """`get(key, decode)`: `decode()`'s array (or arrays: a pair's) for `key` (a file and how it
    is read), decoded once."""

    def __init__(self) -> None:
        self._images: dict[Hashable, np.ndarray | tuple[np.ndarray, ...]] = {}

    def nbytes(self) -> int:
        """The decoded arrays held."""
        return sum(sum(a.nbytes for a in (images if isinstance(images, tuple) else (images,)))
                   for images in self._images.values())

    def get(self, key: Hashable, decode: Callable[[], Decoded]) -> Decoded:
        images = self._images.get(key)
        if images is None:
            images = self._images[key] = decode()
        # Copies (a few KB): a step that works in place must not change the cached image.
        return images.copy() if isinstance(images, np.ndarray) else tuple(image.copy() for image in images)


def read(decoded: DecodedImages | None, key: Hashable, decode: Callable[[], Decoded]) -> Decoded:
    """`decode()`'s result, from `decoded` where a dataset keeps one (data.cache_decoded)."""
    return decode() if decoded is None else decoded.get(key, decode)
