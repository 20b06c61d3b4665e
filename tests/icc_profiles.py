"""Colour profiles whose meaning a test knows exactly, built with src.data.colour_profiles."""

from __future__ import annotations

import struct

from src.data.colour_profiles import SRGB_CURVE, D50_XYZ, curve_tag, icc_profile, rgb_profile, xyz_tag

# sRGB's (BT.709's) chromaticities.
SRGB_RED, SRGB_GREEN, SRGB_BLUE, D65_WHITE = (0.64, 0.33), (0.30, 0.60), (0.15, 0.06), (0.3127, 0.3290)


def rgb_profile_with_red_and_blue_swapped() -> bytes:
    """sRGB with its first and third primaries swapped: sRGB blue is stored as (255, 0, 0), so an
    image read without the profile shows red where its colour is blue."""
    return rgb_profile(SRGB_BLUE, SRGB_GREEN, SRGB_RED, D65_WHITE, SRGB_CURVE)


def linear_gray_profile() -> bytes:
    """A grayscale profile with linear values: stored 128 (half the light) is sRGB's 188."""
    return icc_profile(b"GRAY", [(b"wtpt", xyz_tag(D50_XYZ)), (b"kTRC", curve_tag((1.0, 1.0, 0.0, 0.0, 0.0)))])


def cmyk_profile_that_prints_everything_black() -> bytes:
    """A CMYK printer profile whose table gives black (Lab 0, 0, 0) for every ink mix, paper
    white (0, 0, 0, 0) included, where PIL's plain conversion makes that white."""
    grid_points, inputs, outputs = 2, 4, 3
    black_lab = struct.pack(">3H", 0, 128 * 256, 128 * 256)   # lut16's Lab: L 0..100 -> 0..65280, a/b + 128
    table = (b"mft2" + bytes(4) + struct.pack(">4B", inputs, outputs, grid_points, 0)
             + b"".join(struct.pack(">i", 65536 if row == column else 0) for row in range(3) for column in range(3))
             + struct.pack(">2H", 2, 2)
             + struct.pack(">2H", 0, 65535) * inputs            # identity input curves
             + black_lab * grid_points ** inputs                # the colour table
             + struct.pack(">2H", 0, 65535) * outputs)          # identity output curves
    return icc_profile(b"CMYK", [(b"wtpt", xyz_tag(D50_XYZ)), (b"A2B0", table)], device_class=b"prtr",
                       connection_space=b"Lab ")
