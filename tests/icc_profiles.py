"""Minimal ICC v2 profiles written byte by byte, for tests of colour-managed image reading.

Only the tags littlecms needs for a matrix/curve transform are written (white point,
colourants, tone curves), so a test can make a profile whose meaning it knows exactly.
"""

from __future__ import annotations

import struct

D50 = (0.9642, 1.0, 0.8249)   # the ICC profile connection space's white
# sRGB's primaries adapted to D50, as sRGB profiles hold them.
SRGB_RED, SRGB_GREEN, SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)


def _s15_fixed16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15_fixed16(x) + _s15_fixed16(y) + _s15_fixed16(z)


def _gamma_curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)


def _profile(colour_space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    table_end = 128 + 4 + 12 * len(tags)
    entries, body = b"", b""
    for signature, data in tags:
        entries += struct.pack(">4sII", signature, table_end + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    header = struct.pack(">I4sI4s4s4s12s4s", table_end + len(body), b"none", 0x02100000, b"mntr",
                         colour_space, b"XYZ ", bytes(12), b"acsp")
    header += bytes(68 - len(header)) + b"".join(_s15_fixed16(v) for v in D50)
    return header + bytes(128 - len(header)) + struct.pack(">I", len(tags)) + entries + body


def rgb_profile_with_red_and_blue_swapped() -> bytes:
    """An RGB profile whose first channel is sRGB's blue and third its red: sRGB blue is stored
    as (255, 0, 0), so an image read without the profile shows red where its colour is blue."""
    return _profile(b"RGB ", [(b"wtpt", _xyz(*D50)), (b"rXYZ", _xyz(*SRGB_BLUE)), (b"gXYZ", _xyz(*SRGB_GREEN)),
                              (b"bXYZ", _xyz(*SRGB_RED)), (b"rTRC", _gamma_curve(2.2)),
                              (b"gTRC", _gamma_curve(2.2)), (b"bTRC", _gamma_curve(2.2))])


def linear_gray_profile() -> bytes:
    """A grayscale profile with linear values: stored 128 (half the light) is sRGB's 188."""
    return _profile(b"GRAY", [(b"wtpt", _xyz(*D50)), (b"kTRC", _gamma_curve(1.0))])
