"""16-bit colour PNG and TIFF files written byte by byte, so that a test controls what neither PIL
nor OpenCV writes: grey with alpha, EXIF orientation after the pixel data, orientation tags in
TIFFs, colour profiles in 16-bit files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

# PNG colour types by channel count: grey, grey + alpha, RGB, RGBA.
_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def exif_chunk(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return png_chunk(b"eXIf", exif.tobytes().removeprefix(b"Exif\0\0"))   # the chunk holds the bare TIFF block


def icc_chunk(profile: bytes) -> bytes:
    return png_chunk(b"iCCP", b"profile\0\0" + zlib.compress(profile))


def write_png_16(path: Path, samples: np.ndarray, before_pixels: bytes = b"", after_pixels: bytes = b"") -> Path:
    """A 16-bit PNG of HxWxC samples (C = 1 to 4), with extra chunks before or after its pixels."""
    height, width, channels = samples.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)   # filter 0 (none) per row
    header = struct.pack(">IIBBBBB", width, height, 16, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + before_pixels
                     + png_chunk(b"IDAT", zlib.compress(rows)) + after_pixels + png_chunk(b"IEND", b""))
    return path


def write_tiff_16(path: Path, samples: np.ndarray, orientation: int | None = None) -> Path:
    """An uncompressed little-endian 16-bit RGB or RGBA TIFF (one strip), with an orientation tag."""
    height, width, channels = samples.shape
    pixels = samples.astype("<u2").tobytes()
    bits_offset = 8
    pixels_offset = bits_offset + 2 * channels
    entries = [(256, width), (257, height), (258, bits_offset), (259, 1), (262, 2), (273, pixels_offset),
               (274, orientation), (277, channels), (278, height), (279, len(pixels)), (284, 1),
               (338, 2 if channels == 4 else None)]   # 338 ExtraSamples: 2 = unassociated alpha
    entries = [(tag, value) for tag, value in entries if value is not None]
    directory = struct.pack("<H", len(entries))
    for tag, value in entries:
        if tag == 258:   # BitsPerSample: one per channel, stored before the pixels
            directory += struct.pack("<HHII", tag, 3, channels, value)
        elif tag in (273, 279):
            directory += struct.pack("<HHII", tag, 4, 1, value)
        else:
            directory += struct.pack("<HHIHH", tag, 3, 1, value, 0)
    directory += struct.pack("<I", 0)
    header = b"II*\0" + struct.pack("<I", pixels_offset + len(pixels))
    path.write_bytes(header + struct.pack(f"<{channels}H", *[16] * channels) + pixels + directory)
    return path
