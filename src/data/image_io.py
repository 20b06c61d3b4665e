"""Decoding image files of any common mode into uint8 arrays with 1 or 3 channels."""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from src.data.bit_depth import (HIGH_BIT_DEPTH_GRAYSCALE_MODES, grayscale_to_uint8,
                                pil_misreads_16_bit_colour, read_16_bit_colour, samples_pil_cannot_read)
from src.data.colour_profiles import profile_for_nclx
from src.data.errors import ImageReadError
from src.utils.whole_files import write_whole

# HEIC/HEIF photos open through PIL like any other format. libheif applies the file's rotation
# and mirroring itself and resets the EXIF orientation, so they come out upright; HDR (10/12 bit)
# photos are delivered as 8 bit.
register_heif_opener()

_VALID_CHANNELS = (1, 3)

# Transparent pixels are composited on white: images with alpha (logos, drawings, sketches) are
# usually authored to be seen on a white page, and the colour stored under alpha=0 is arbitrary.
_BACKGROUND_FOR_ALPHA = (255, 255, 255)


def check_channels(channels: int, key: str = "data.input_nc/data.output_nc") -> None:
    """Raise a ValueError naming the config key when a channel count is not supported."""
    if channels not in _VALID_CHANNELS:
        raise ValueError(
            f"{key}={channels!r} is not supported: images are loaded with 1 (grayscale) or "
            f"3 (RGB) channels. Set {key} to 1 or 3."
        )


# EXIF orientations that turn the stored picture by 90 or 270 degrees (5-8; 1-4 keep its shape).
_QUARTER_TURNS = (5, 6, 7, 8)


def _turned_a_quarter(image: Image.Image) -> bool:
    """Whether the EXIF orientation turns the stored picture by 90 or 270 degrees."""
    return image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS


# JPEG files as PIL names them: MPO is the multi-picture JPEG some cameras write (its first
# picture is a plain JPEG, read by the same decoder).
_JPEG_FORMATS = ("JPEG", "MPO")


def open_image(path: str | Path, decode_at_least: tuple[int, int] | None = None, bit_depth: int = 16) -> Image.Image:
    """Open and fully decode an image, upright, raising ImageReadError that names the file on failure.

    Decoding happens here (``load()``), not lazily later, so that truncated files fail with
    their path instead of deep inside a transform. Cameras and phones store a portrait photo as
    landscape pixels plus an EXIF orientation tag; the picture is turned as that tag says, so
    the network sees what every image viewer shows (PIL alone would return it sideways).

    `decode_at_least` (height, width of the upright picture): a JPEG of more than twice that size
    in both sides is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (PIL's `draft`),
    to more than that size, never to it: the resize that follows, with the run's own kernel,
    always makes the last step. (A 512 px photo asked for at least 256 px decodes whole, so
    evaluation's resize to 256 filters it as training's to 286 does, not by the DCT's scaling
    alone.) A 12-megapixel photo that training resizes to 286 px decodes in a sixth of the time,
    and the resize that follows averages fewer pixels; other formats decode whole.

    `bit_depth` below 16: the samples of a 16-bit colour PNG or TIFF are read as `bit_depth`-bit
    data (see src.data.bit_depth); PIL alone keeps their high byte, which is right for 16-bit data
    only (and misses a transparent colour). Grayscale files keep their deep mode here and are
    rescaled by to_uint8_array.
    """
    try:
        with Image.open(path) as image:
            if pil_misreads_16_bit_colour(image, bit_depth):
                try:
                    return read_16_bit_colour(path, image, bit_depth)
                except ValueError as error:
                    raise ImageReadError(f"{path}: {error}") from error
            if decode_at_least is not None and image.format in _JPEG_FORMATS:
                height, width = decode_at_least
                if _turned_a_quarter(image):
                    height, width = width, height   # draft works on the stored, unturned picture
                image.draft(None, (width + 1, height + 1))   # at least that: more than asked
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return image
    except (FileNotFoundError, ImageReadError, MemoryError):
        raise
    except Exception as error:  # PIL raises several unrelated types for corrupt data
        if isinstance(error, OSError) and error.errno is not None:
            # The system refused the read (permissions, a network file system's I/O error): the
            # file itself may be whole, and deleting it is not the fix. (PIL's own OSErrors, for a
            # truncated or unidentified file, carry no system error number.)
            raise ImageReadError(f"Cannot read image file {path}: the system refused the read ({error}). Check "
                                 f"the file's permissions for this user and the storage it is on.") from error
        # A valid file whose samples PIL has no mode for is named as such, not as a broken file.
        if isinstance(error, UnidentifiedImageError) and (held := samples_pil_cannot_read(path)):
            raise ImageReadError(
                f"Cannot read image file {path}: it holds {held}, which PIL cannot read. Convert it to 8- or "
                f"16-bit integer sRGB images (float colour is usually linear HDR light: tone-map it first)."
            ) from error
        if isinstance(error, Image.DecompressionBombError):   # a scan or panorama over PIL's ~179 M pixel guard
            raise ImageReadError(
                f"Cannot read image file {path}: {error}. Shrink it with an image editor or tool first (PIL "
                f"refuses pixel counts this large as a guard against decompression bombs), or split it into tiles."
            ) from error
        raise ImageReadError(
            f"Cannot read image file {path}: {error}. Delete or replace the file "
            f"(it may be truncated or not an image)."
        ) from error


def upright_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of the image as open_image returns it, EXIF orientation applied.

    A JPEG's comes from its header (its EXIF block precedes the pixels, and PIL does not turn
    JPEGs itself), a HEIF's too (libheif reports the size after its rotation). Other files are
    decoded: only that agrees with open_image in every format (a PNG may keep its EXIF block
    after the pixels, and PIL's TIFF reader turns the picture itself and reports the turned size
    in the header, dropping the tag on load)."""
    try:
        with Image.open(path) as image:
            if image.format in _JPEG_FORMATS:
                width, height = image.size
                return (width, height) if _turned_a_quarter(image) else (height, width)
            if image.format == "HEIF":
                width, height = image.size
                return height, width
    except FileNotFoundError:
        raise
    except Exception:   # open_image below raises the error that names the file
        pass
    width, height = open_image(path).size
    return height, width


def _has_alpha(image: Image.Image) -> bool:
    """Alpha channels, and a transparent colour (PNG's tRNS) on palette, grey or RGB pixels."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode in ("P", "L", "RGB")
                                                                and "transparency" in image.info)


def _drop_transparency(image: Image.Image) -> Image.Image:
    """Composite images that carry alpha (RGBA, LA, PA, a transparent colour) on white."""
    if not _has_alpha(image):
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _BACKGROUND_FOR_ALPHA + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


# The colour space an embedded profile describes, per pixel mode; alpha is kept apart.
_PROFILE_SPACES = {"1": "L", "L": "L", "LA": "L", "RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK"}
_SRGB = ImageCms.createProfile("sRGB")
# (translate.py takes no reading settings: it reads as its checkpoint's training data were read)
_PROFILE_FIX = ("re-save the file in sRGB or without its colour profile, or read the stored values as they are, as "
                "the papers' loaders do (++data.to_srgb=false to train.py, eval.py or python -m src.data.check_images "
                "data=NAME; --keep-stored-colours to check_images or src.data.convert_images given folders; "
                "translate.py reads as its checkpoint's run did)")


# Colours that show whether a transform changes anything: every grey, and a 17-level RGB grid.
_PROBES = {"L": Image.fromarray(np.arange(256, dtype=np.uint8)[None]),
           "RGB": Image.fromarray(np.stack(np.meshgrid(*[np.linspace(0, 255, 17).round().astype(np.uint8)] * 3),
                                           -1).reshape(1, -1, 3))}


@lru_cache(maxsize=16)
def _transform_to_srgb(icc_profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """littlecms transform from an embedded profile to sRGB, or None where it leaves every probe
    colour as it is (an sRGB profile, as many editors and cameras embed: converting would be
    per-item work for nothing). Built and probed once per profile and mode (a few ms), since a
    dataset's photos mostly share one or two profiles."""
    transform = ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(icc_profile)), _SRGB, mode, "RGB")
    probe = _PROBES.get(mode)
    if probe is not None:
        converted = np.asarray(ImageCms.applyTransform(probe, transform))
        if np.array_equal(converted, np.asarray(probe.convert("RGB"))):
            return None
    return transform


def _to_srgb(image: Image.Image, icc_profile: bytes, source: str | Path) -> Image.Image:
    """Convert pixels stored in an embedded ICC profile's colour space to sRGB (RGB or RGBA).

    Phones, cameras and editors store photos in Display P3, Adobe RGB or a CMYK press profile;
    their numbers mean other colours than the same numbers in sRGB, which is what untagged
    images, image viewers and the network's outputs are taken to be in.
    """
    if image.mode in ("P", "PA"):   # palette entries are colours of the profile's space
        image = image.convert("RGBA" if _has_alpha(image) else "RGB")
    elif image.mode in ("L", "RGB") and _has_alpha(image):   # a transparent colour matches stored values
        image = image.convert("LA" if image.mode == "L" else "RGBA")
    space = _PROFILE_SPACES.get(image.mode)
    if space is None:
        raise ImageReadError(f"{source}: carries an ICC colour profile on {image.mode} pixels, which cannot be "
                             f"converted to sRGB: {_PROFILE_FIX}")
    try:
        transform = _transform_to_srgb(icc_profile, space)
        if transform is None:
            return image
        alpha = image.getchannel("A") if _has_alpha(image) else None
        converted = ImageCms.applyTransform(image.convert(space) if image.mode != space else image, transform)
    except (ImageCms.PyCMSError, OSError, ValueError) as error:
        raise ImageReadError(f"{source}: its embedded ICC colour profile does not fit its {image.mode} pixels "
                             f"or cannot be read ({error}): {_PROFILE_FIX}") from error
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _colour_profile(image: Image.Image, source: str | Path) -> bytes | None:
    """The ICC profile the pixels are stored in: the embedded one, or one written from a HEIF's
    nclx colour information (primaries and tone curve by number); None for sRGB or no profile."""
    if icc_profile := image.info.get("icc_profile"):
        return icc_profile
    if nclx := image.info.get("nclx_profile"):
        try:
            return profile_for_nclx(nclx)
        except ValueError as error:
            raise ImageReadError(f"{source}: {error}: {_PROFILE_FIX}") from error
    return None


def to_uint8_array(image: Image.Image, channels: int, bit_depth: int = 16, source: str | Path = "image",
                   to_srgb: bool = True) -> np.ndarray:
    """Convert a decoded PIL image of any mode to an HxWxC uint8 array, C = channels (1 or 3);
    integer grayscale images of more than 8 bits are read as `bit_depth`-bit data (colour ones
    already are by open_image), and values beyond it raise ImageReadError naming `source` (the
    file the image came from). With
    `to_srgb`, pixels in another colour space than sRGB (an embedded ICC profile, a HEIF's nclx
    colour information) are converted to sRGB."""
    check_channels(channels)
    icc_profile = _colour_profile(image, source) if to_srgb else None
    if image.mode in HIGH_BIT_DEPTH_GRAYSCALE_MODES:
        try:
            image = grayscale_to_uint8(image, bit_depth, source)
        except ValueError as error:
            raise ImageReadError(f"{source}: {error}") from error
    if icc_profile:
        image = _to_srgb(image, icc_profile, source)
    image = _drop_transparency(image)
    # convert() handles the rest: L, 1, P, CMYK, YCbCr, LAB, HSV, RGB. Some modes convert to RGB
    # only (LAB): to grayscale through it.
    target = "L" if channels == 1 else "RGB"
    try:
        image = image.convert(target)
    except ValueError:
        try:
            image = image.convert("RGB").convert(target)
        except ValueError as error:
            raise ImageReadError(f"{source}: PIL cannot convert its {image.mode} pixels to {target} ({error}): "
                                 f"save it as RGB or grayscale") from error
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch warns on read-only arrays
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)


def save_image(image: np.ndarray, path: str | Path, **save_options) -> None:
    """Write an HxWxC uint8 array (C = 1 or 3) in the format of the path's suffix (or
    `save_options`' format), making its folder if needed. Written beside and renamed over the
    path: a file there is replaced, not written through (a link among the outputs keeps the file
    it points to), and a process killed mid-write leaves the old file or none, not a cut one.
    (Not synced: an image is remade by running again, unlike a checkpoint.)"""
    path = Path(path)
    image_format = save_options.pop("format", None) or Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"{path}: no image format is known for the suffix {path.suffix!r}")
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    write_whole(path, lambda stream: picture.save(stream, format=image_format, **save_options), sync=False)


#: The formats the tools write images in -> (suffix, PIL's save options): JPEG at quality 95 with
#: full-resolution colour, as the paired datasets' JPEGs are written; PNG lossless.
WRITE_FORMATS = {"jpg": (".jpg", {"quality": 95, "subsampling": 0}), "png": (".png", {})}
#: what a whole file of each suffix ends with: PNG's IEND chunk (no data, its CRC), JPEG's EOI marker
WHOLE_FILE_ENDS = {".png": b"\x00\x00\x00\x00IEND\xaeB`\x82", ".jpg": b"\xff\xd9"}


def save_in_format(image: np.ndarray, path: str | Path, image_format: str) -> None:
    """save_image in one of WRITE_FORMATS, to a path of its suffix (output_paths names them so)."""
    suffix, options = WRITE_FORMATS[image_format]
    if Path(path).suffix.lower() != suffix:   # (save_image writes the suffix's format)
        raise ValueError(f"{path}: a {image_format} file is named *{suffix}")
    save_image(image, path, **options)


def whole_image_file(path: Path) -> bool:
    """Whether `path`, a file of a WRITE_FORMATS suffix, ends as one does. Written to a temporary
    file and renamed, an output is whole or absent after the process is killed, but not after a
    power loss before the disk had its data: then the file may be empty, or cut short."""
    end = WHOLE_FILE_ENDS[path.suffix.lower()]
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            if file.tell() < len(end):
                return False
            file.seek(-len(end), os.SEEK_END)
            return file.read() == end
    except FileNotFoundError:
        return False


#: load_image's keywords for how pixel values are read, which a run's data settings record.
PIXEL_READING_KEYS = ("bit_depth", "to_srgb")


def load_image(path: str | Path, channels: int, decode_at_least: tuple[int, int] | None = None,
               bit_depth: int = 16, to_srgb: bool = True) -> np.ndarray:
    """Read an image file as an HxWxC uint8 array with C = channels (1 -> grayscale, 3 -> RGB);
    `decode_at_least`: see open_image; `bit_depth`, `to_srgb`: see to_uint8_array."""
    check_channels(channels)
    return to_uint8_array(open_image(path, decode_at_least, bit_depth), channels, bit_depth, source=path,
                          to_srgb=to_srgb)
