"""Colour profiles whose meaning a test knows exactly, built with src.data.colour_profiles."""

from __future__ import annotations

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
