"""Reading samples deeper than 8 bits (16-bit PNG/TIFF, 32-bit integer or float grayscale) as 8-bit
values, at the data's own bit depth (`data.bit_depth`).

A scanner's or camera's 12-bit values are often stored in 16-bit files. Read as 16-bit data they
come out dark (at most 16 of 255); read at their own depth they fill 0..255, with one range for
every image so that brightness compares across the dataset.
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps

log = logging.getLogger(__name__)

# Grayscale modes whose samples do not fit in 8 bits; PIL's convert("L") would clip them at 255.
HIGH_BIT_DEPTH_GRAYSCALE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
#: whether this process has said that an image's samples leave the top bits of data.bit_depth unused
_told_of_unused_top_bits = False


def bit_depth_fix(bits: int) -> str:
    """How each tool is told to read `bits`-bit samples. translate.py takes no reading settings: it
    reads as its checkpoint's training data were read."""
    return (f"++data.bit_depth={bits} to train.py or eval.py, --bit-depth {bits} to python -m src.data.check_images "
            f"or src.data.convert_images; translate.py reads at its checkpoint's bit depth")


def tell_of_unused_top_bits(values: np.ndarray, bit_depth: int, source: str | Path) -> None:
    """Once per process (each loader worker, each rank): samples that never reach the top 4 bits of `bit_depth` (12-bit data in
    16-bit files, at the default data.bit_depth=16) read as nearly black images. Said, not
    refused: a dark image can be one."""
    global _told_of_unused_top_bits
    if _told_of_unused_top_bits or not values.size or bit_depth <= 8:
        return
    top = int(values.max())
    if top < 2 ** (bit_depth - 4):
        _told_of_unused_top_bits = True
        bits = max(8, top.bit_length())
        log.warning("%s: its %d-bit samples all lie in 0..%d, so it reads nearly black (at most %d of 255). If the "
                    "files hold %d-bit data, read them at that depth (%s); a dark image is read as it is. (Said "
                    "once per process.)", source, bit_depth, top,
                    round(top * 255 / (2 ** bit_depth - 1)), bits, bit_depth_fix(bits))


def integers_to_uint8(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """`bit_depth`-bit integer samples as uint8, 0..2**bit_depth-1 onto 0..255, rounded. A value
    beyond that range raises ValueError (with the fix), rather than being clipped."""
    top = 2 ** bit_depth - 1
    if values.size and (values.min() < 0 or values.max() > top):
        fix = (f"set data.bit_depth to the images' bit depth (for full 16-bit images: {bit_depth_fix(16)})"
               if bit_depth < 16 else "the file holds more than unsigned 16-bit data; convert it to 16-bit or 8-bit images")
        raise ValueError(f"values {values.min()}..{values.max()} lie outside the {bit_depth}-bit range "
                         f"0..{top}: {fix}")
    return np.rint(values.astype(np.float64) * (255.0 / top)).astype(np.uint8)


def grayscale_to_uint8(image: Image.Image, bit_depth: int = 16, source: str | Path = "image") -> Image.Image:
    """A 16/32-bit integer or float grayscale image (HIGH_BIT_DEPTH_GRAYSCALE_MODES) as an "L" image.

    Integer modes are read as `bit_depth`-bit data (integers_to_uint8); a transparent grey value
    (PNG's tRNS) is matched before scaling and kept as alpha ("LA"). Float images are read as
    0..1; values beyond it raise ValueError: no range fits every image then, and stretching each
    to its own would give every image (a depth map in metres, say) a scale of its own.
    """
    values = np.asarray(image)
    if image.mode != "F":
        grey = Image.fromarray(integers_to_uint8(values, bit_depth), mode="L")
        tell_of_unused_top_bits(values, bit_depth, source)
        if isinstance(key := image.info.get("transparency"), int):
            grey.putalpha(Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8)))
        return grey
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (0.0 <= low and high <= 1.0):   # NaN fails too
        raise ValueError(f"float samples {low:g}..{high:g} lie outside 0..1, the range float images are read in (one "
                         f"for every image, so values compare across the dataset): scale the dataset's samples to 0..1 "
                         f"by one range, or store them as 16-bit integers (with data.bit_depth)")
    return Image.fromarray(np.rint(values * 255.0).astype(np.uint8), mode="L")


def _raw_mode(image: Image.Image) -> str:
    """The raw sample layout of an opened, not yet loaded image ("RGB;16B", ...), from its first
    tile: a PNG or TIFF stores every tile (strip) the same way."""
    if not image.tile:
        return ""
    args = image.tile[0].args
    first = args[0] if isinstance(args, tuple) and args else args   # PNG: the raw mode; TIFF: (raw mode, ...)
    return first if isinstance(first, str) else ""


def has_16_bit_colour(image: Image.Image) -> bool:
    """Whether an opened, not yet loaded PNG or TIFF holds 16-bit colour (or grey with alpha)
    samples, which PIL can only decode to 8 bits: it keeps each sample's high byte."""
    return image.format in ("PNG", "TIFF") and image.mode in ("RGB", "RGBA") and ";16" in _raw_mode(image)


def pil_misreads_16_bit_colour(image: Image.Image, bit_depth: int) -> bool:
    """Whether PIL's 8-bit decode of this opened, not yet loaded image would be wrong: 16-bit colour
    read at a depth under 16 (PIL keeps the high byte), or with a transparent colour (PNG's tRNS:
    PIL compares its 16-bit value with the 8-bit samples, so no pixel matches)."""
    return has_16_bit_colour(image) and (bit_depth < 16 or "transparency" in image.info)


def _png_orientation(path: str | Path) -> int | None:
    """The EXIF orientation of a PNG file. Its eXIf chunk may follow the pixel data, which PIL reads
    only by decoding them: the chunks are walked by their headers instead."""
    with open(path, "rb") as file:
        file.seek(8)   # the PNG signature
        while len(header := file.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind == b"eXIf":
                exif = Image.Exif()
                exif.load(file.read(length))
                return exif.get(ExifTags.Base.Orientation)
            if kind == b"IEND":
                break
            file.seek(length + 4, io.SEEK_CUR)   # the chunk's data and CRC
    return None


def _decode_with_opencv(path: str | Path) -> np.ndarray | None:
    """The file's samples as stored (any depth, alpha kept, BGR order), or None where OpenCV
    cannot decode it; read as bytes, so that any path works."""
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)


def read_16_bit_colour(path: str | Path, image: Image.Image, bit_depth: int) -> Image.Image:
    """The 16-bit colour samples of `image` (opened from `path`, has_16_bit_colour) read at
    `bit_depth`, as an upright RGB or RGBA image carrying the file's colour profile.

    PIL has no mode for them, so OpenCV decodes the file (a transparent colour becomes alpha).
    Alpha is read at the full 16 bits: it is coverage, which editors write over the whole range
    whatever the depth of the colours. Raises ValueError (with the fix) for values beyond
    `bit_depth` and files OpenCV cannot decode.
    """
    samples = _decode_with_opencv(path)
    if samples is None or samples.dtype != np.uint16 or samples.ndim != 3:
        # At 16 bits OpenCV reads it only for its transparent colour, which PIL would miss
        fix = (f"or read it as 16-bit data through PIL ({bit_depth_fix(16)})" if bit_depth < 16
               else "or remove its transparent colour (a PNG's tRNS chunk), which PIL cannot match at 16 bits")
        raise ValueError(f"OpenCV cannot decode its 16-bit colour samples (the file may be truncated): replace "
                         f"the file, {fix}")
    planes = [integers_to_uint8(samples[..., 2::-1], bit_depth)]   # OpenCV's BGR(A) -> RGB
    if samples.shape[2] == 4:
        planes.append(integers_to_uint8(samples[..., 3:], 16))
    result = Image.fromarray(np.ascontiguousarray(np.concatenate(planes, axis=2)))
    if icc_profile := image.info.get("icc_profile"):
        result.info["icc_profile"] = icc_profile
    # OpenCV's TIFF decoder applies the file's orientation itself; its PNG decoder ignores it here.
    if image.format == "PNG" and (orientation := _png_orientation(path)):
        result.getexif()[ExifTags.Base.Orientation] = orientation
        ImageOps.exif_transpose(result, in_place=True)
    return result


def samples_pil_cannot_read(path: str | Path) -> str | None:
    """What a file PIL cannot identify holds ("3-channel float32 samples"), where OpenCV decodes
    it: such as the colour samples of 32 bits of float HDR or scientific TIFFs, for which PIL has
    no mode. None where OpenCV cannot decode it either (not an image, or truncated)."""
    try:
        samples = _decode_with_opencv(path)
    except (cv2.error, OSError, ValueError):
        return None
    if samples is None:
        return None
    channels = samples.shape[2] if samples.ndim == 3 else 1
    return f"{channels}-channel {samples.dtype} samples"
