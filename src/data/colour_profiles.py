"""ICC profiles written from a colour space's description, for images that describe their colours
without one: HEIF's "nclx" colour information (primaries and transfer function by number, as
phones other than Apple's write it).

A matrix/curve profile holds what littlecms needs to convert such pixels to sRGB: the white
point, the three primaries as XYZ colourants adapted to the profile connection space's D50
white, and one tone curve per channel.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import numpy as np

D50_XYZ = (0.9642, 1.0, 0.8249)   # the profile connection space's white

# Bradford's cone response matrix, the ICC's choice for adapting colourants to D50.
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])

# Parameters (g, a, b, c, d) of ICC parametric curve type 3: value = (a x + b)^g for x >= d, else c x.
SRGB_CURVE = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
BT709_CURVE = (1 / 0.45, 1 / 1.099, 0.099 / 1.099, 1 / 4.5, 0.081)   # the inverse of BT.709's camera curve

# nclx transfer characteristics (ISO/IEC 23091-2) -> tone curve: the sRGB curve (13; also taken
# for 2, unspecified, as sRGB is what an untagged image means), BT.709's and its same-curve kin
# (1, 6, 14, 15), pure gammas 2.2 and 2.8 (4, 5) and linear light (8).
_NCLX_CURVES = {13: SRGB_CURVE, 2: SRGB_CURVE, 1: BT709_CURVE, 6: BT709_CURVE, 14: BT709_CURVE,
                15: BT709_CURVE, 4: (2.2, 1.0, 0.0, 0.0, 0.0), 5: (2.8, 1.0, 0.0, 0.0, 0.0),
                8: (1.0, 1.0, 0.0, 0.0, 0.0)}
# nclx colour primaries that are sRGB's (BT.709) or unspecified.
_SRGB_PRIMARIES = (1, 2)


def _s15_fixed16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def xyz_tag(xyz) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15_fixed16(v) for v in xyz)


def curve_tag(parameters: tuple[float, float, float, float, float]) -> bytes:
    """An ICC parametric curve of type 3 (see SRGB_CURVE)."""
    return b"para" + bytes(4) + struct.pack(">HH", 3, 0) + b"".join(_s15_fixed16(v) for v in parameters)


def icc_profile(colour_space: bytes, tags: list[tuple[bytes, bytes]], device_class: bytes = b"mntr",
                connection_space: bytes = b"XYZ ") -> bytes:
    """An ICC v2 profile of `colour_space` (b"RGB ", b"GRAY", b"CMYK") holding `tags`
    ((signature, data) pairs); a display profile ("mntr") with XYZ as its connection space unless told."""
    table_end = 128 + 4 + 12 * len(tags)
    entries, body = b"", b""
    for signature, data in tags:
        entries += struct.pack(">4sII", signature, table_end + len(body), len(data))
        body += data + bytes(-len(data) % 4)   # tags start on 4-byte boundaries
    header = struct.pack(">I4sI4s4s4s12s4s", table_end + len(body), b"none", 0x02100000, device_class,
                         colour_space, connection_space, bytes(12), b"acsp")
    header += bytes(68 - len(header)) + b"".join(_s15_fixed16(v) for v in D50_XYZ)   # the illuminant field
    return header + bytes(128 - len(header)) + struct.pack(">I", len(tags)) + entries + body


def _xyz_of(xy: tuple[float, float]) -> np.ndarray:
    x, y = xy
    return np.array([x / y, 1.0, (1.0 - x - y) / y])


def rgb_profile(red: tuple[float, float], green: tuple[float, float], blue: tuple[float, float],
                white: tuple[float, float], curve: tuple[float, float, float, float, float]) -> bytes:
    """An RGB profile from the CIE xy chromaticities of the primaries and the white, and one tone curve."""
    primaries = np.stack([_xyz_of(red), _xyz_of(green), _xyz_of(blue)], axis=1)
    white_xyz = _xyz_of(white)
    rgb_to_xyz = primaries * np.linalg.solve(primaries, white_xyz)   # scaled so that RGB 1,1,1 is the white
    cone_ratio = (_BRADFORD @ np.array(D50_XYZ)) / (_BRADFORD @ white_xyz)
    to_d50 = np.linalg.inv(_BRADFORD) @ np.diag(cone_ratio) @ _BRADFORD
    colourants = to_d50 @ rgb_to_xyz
    curve_data = curve_tag(curve)
    return icc_profile(b"RGB ", [(b"wtpt", xyz_tag(D50_XYZ)), (b"rXYZ", xyz_tag(colourants[:, 0])),
                                 (b"gXYZ", xyz_tag(colourants[:, 1])), (b"bXYZ", xyz_tag(colourants[:, 2])),
                                 (b"rTRC", curve_data), (b"gTRC", curve_data), (b"bTRC", curve_data)])


def profile_for_nclx(nclx: dict) -> bytes | None:
    """The ICC profile of a HEIF's nclx colour information (pillow-heif's `nclx_profile`), or None
    when its colours are sRGB's already. Raises ValueError for a transfer function that is not a
    tone curve of standard-range pictures (PQ and HLG: HDR photos)."""
    transfer = nclx.get("transfer_characteristics", 2)
    if transfer not in _NCLX_CURVES:
        raise ValueError(f"its nclx colour information has transfer characteristics {transfer} (16: PQ, 18: HLG "
                         f"are HDR), which has no sRGB rendering here")
    if nclx.get("color_primaries", 2) in _SRGB_PRIMARIES and _NCLX_CURVES[transfer] is SRGB_CURVE:
        return None
    chromaticities = tuple((float(nclx[f"color_primary_{name}_x"]), float(nclx[f"color_primary_{name}_y"]))
                           for name in ("red", "green", "blue", "white"))
    return _cached_rgb_profile(chromaticities, transfer)


@lru_cache(maxsize=16)
def _cached_rgb_profile(chromaticities: tuple, transfer: int) -> bytes:
    return rgb_profile(*chromaticities, curve=_NCLX_CURVES[transfer])
