"""Paired data (pix2pix): every source image has its own target, preprocessed identically.

Two layouts on disk:

* aligned: ``data_dir/train/*.jpg`` and ``data_dir/test/*.jpg`` (``val/`` when there is no
  ``test/``), each image holding A|B side by side, A on the left half and B on the right
  (the pix2pix datasets);
* folders: ``data_dir/trainA trainB testA testB``, partners matched by file name without
  extension (``trainA/0001.jpg`` <-> ``trainB/0001.png``).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from src.data.base import TwoDomainDataModule
from src.data.decoded_cache import DecodedImages, read
from src.data.download import ALIGNED_LAYOUT, PAIRED_FOLDERS_LAYOUT, how_to_get
from src.data.errors import DatasetNotFoundError, MissingPartnerError
from src.data.folders import list_images, name_in_folder, require_folder
from src.data.path_table import path_rows
from src.data.image_io import load_image, open_image, to_uint8_array
from src.data.transforms import ImageTransform

LAYOUTS = ("auto", "aligned", "folders")


def split_side_by_side(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Left and right halves of an A|B image; an odd last column is dropped so both match."""
    half = image.width // 2
    return image.crop((0, 0, half, image.height)), image.crop((half, 0, 2 * half, image.height))


def match_by_name(folder_a: Path, folder_b: Path, domains: tuple[str, str] = ("A", "B")) -> list[tuple[Path, Path]]:
    """Pair the images of two folders by name: their path inside the folder without the
    extension (`trainA/x.jpg` with `trainB/x.png`, `trainA/day1/x.jpg` with `trainB/day1/x.png`),
    sorted; any unmatched file is an error.

    `domains` are the folders' domain letters. CycleGAN's copies of the paired datasets, and
    junyanz's prepare scripts, name pair i `i_A.jpg` in trainA and `i_B.jpg` in trainB: where
    every name in a folder ends in its own domain's `_A` / `_B`, that ending is left out."""

    def by_name(folder: Path, domain: str) -> dict[str, Path]:
        paths = list_images(folder)
        # In NFC: a name copied from a Mac (decomposed accents) matches its partner's composed one.
        found = [unicodedata.normalize("NFC", name_in_folder(path, folder)) for path in paths]
        ending = f"_{domain}"
        if found and all(name.endswith(ending) for name in found):
            found = [name[: -len(ending)] for name in found]
        names: dict[str, Path] = {}
        for path, name in zip(paths, found):
            if name in names:
                raise MissingPartnerError(
                    f"{names[name]} and {path} share the name {name!r}, so their "
                    f"partner in the other folder is ambiguous. Rename or remove one of them."
                )
            names[name] = path
        return names

    def require_partners(files: dict[str, Path], partners: dict[str, Path], partner_folder: Path) -> None:
        for name, path in sorted(files.items()):
            if name not in partners:
                raise MissingPartnerError(
                    f"{path} has no partner named '{name}.*' in {partner_folder}. Paired data "
                    f"needs both images of every pair under the same file name; add the partner "
                    f"or remove the file."
                )

    files_a, files_b = by_name(folder_a, domains[0]), by_name(folder_b, domains[1])
    require_partners(files_a, files_b, folder_b)
    require_partners(files_b, files_a, folder_a)
    return [(files_a[name], files_b[name]) for name in sorted(files_a, key=lambda name: name.split("/"))]


class PairedImageDataset(Dataset):
    """Item i: pair i, source and target preprocessed with the same random parameters.

    `pairs` holds (source file, target file); for the aligned layout both are the same file
    and `source_half` says which half is the source ("left" for AtoB).
    """

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        transform: ImageTransform,
        source_channels: int,
        target_channels: int,
        source_half: str | None = None,
        decoded: DecodedImages | None = None,
    ) -> None:
        self.pairs = path_rows(pairs)   # compact: a list of Paths would be copied into every worker
        self.decoded = decoded
        self.transform = transform
        self.source_channels, self.target_channels = source_channels, target_channels
        self.source_half = source_half

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, source_path: Path, target_path: Path) -> tuple[np.ndarray, np.ndarray]:
        at_least, reading = self.transform.decode_at_least, self.transform.reading
        if self.source_half is None:
            return (
                load_image(source_path, self.source_channels, at_least, **reading),
                load_image(target_path, self.target_channels, at_least, **reading),
            )
        # Each half is resized to that size: the whole A|B image to twice its width, and one
        # more, so that an odd width's halves (split_side_by_side drops its last column) are still
        # decoded to more than it.
        left, right = split_side_by_side(open_image(source_path, at_least and (at_least[0], 2 * at_least[1] + 1),
                                                    reading["bit_depth"]))
        source, target = (left, right) if self.source_half == "left" else (right, left)
        return (
            to_uint8_array(source, self.source_channels, source=source_path, **reading),
            to_uint8_array(target, self.target_channels, source=source_path, **reading),
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        source_path, target_path = self.pairs[index]
        source, target = read(self.decoded, (str(source_path), str(target_path)),
                              lambda: self._load(source_path, target_path))
        try:
            source_tensor, target_tensor = self.transform.pair(source, target)
        except ValueError as error:
            pair = source_path if source_path == target_path else f"{source_path} (partner {target_path})"
            raise ValueError(f"{pair}: {error}") from error
        return {
            "A": source_tensor,
            "B": target_tensor,
            "A_path": str(source_path),
            "B_path": str(target_path),
        }


class PairedDataModule(TwoDomainDataModule):
    """Paired images for pix2pix-style training; the layout is detected or set with `layout`.

    Takes the arguments of ImageTranslationDataModule plus `layout` ("auto", "aligned",
    "folders"). `max_dataset_size` keeps the first N sorted pairs.
    """

    paired = True

    def __init__(self, *args: Any, layout: str = "auto", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if layout not in LAYOUTS:
            raise ValueError(f"data.layout={layout!r} must be one of {', '.join(LAYOUTS)}.")
        self.layout = layout

    def resolved_layout(self) -> str:
        """The layout on disk: the configured one, or the one found in data_dir."""
        if self.layout != "auto":
            return self.layout
        require_folder(self.data_dir, self.name, self.data_dir)
        if any((self.data_dir / folder).is_dir() for folder in ("trainA", "testA", "trainB", "testB")):
            return "folders"
        if any((self.data_dir / folder).is_dir() for folder in ("train", "test", "val")):
            return "aligned"
        raise DatasetNotFoundError(
            f"{self.data_dir} holds neither an aligned layout (train/ test/ or val/) nor a "
            f"folders layout (trainA/ trainB/ testA/ testB/). {how_to_get(self.name, self.data_dir)}"
        )

    def _aligned_folder(self, split: str) -> Path:
        require_folder(self.data_dir, self.name, self.data_dir)
        if split == "test" and not (self.data_dir / "test").is_dir() and (self.data_dir / "val").is_dir():
            folder = self.data_dir / "val"  # pix2pix facades/maps ship val/ as their test split
        else:
            folder = require_folder(self.data_dir / split, self.name, self.data_dir)
        if (folder / "A").is_dir() and (folder / "B").is_dir():
            # The aligned layout walks subfolders and cuts every image in half: two photos'
            # folders would train on the left half of each against its right half.
            raise DatasetNotFoundError(
                f"{folder} holds A/ and B/ folders, and the aligned layout reads each image as A|B side by side "
                f"({ALIGNED_LAYOUT}). For pairs in two folders matched by file name, lay them out as "
                f"{PAIRED_FOLDERS_LAYOUT} with ++data.layout=folders.")
        return folder

    def split_folder(self, split: str, domain: str) -> Path:
        if self.resolved_layout() == "aligned":
            return self._aligned_folder(split)
        return self.data_dir / f"{split}{domain}"

    def _pairs(self, split: str) -> tuple[list[tuple[Path, Path]], str | None]:
        if self.resolved_layout() == "aligned":
            files = list_images(self._aligned_folder(split))
            return [(path, path) for path in files], ("left" if self.direction == "AtoB" else "right")
        folders = {
            domain: require_folder(self.split_folder(split, domain), self.name, self.data_dir)
            for domain in (self.source_domain, self.target_domain)
        }
        return match_by_name(folders[self.source_domain], folders[self.target_domain],
                             (self.source_domain, self.target_domain)), None

    def _build_dataset(self, split: str, train: bool) -> Dataset:
        pairs, source_half = self._pairs(split)
        if self.max_dataset_size is not None:
            pairs = pairs[: self.max_dataset_size]
        return PairedImageDataset(
            pairs=pairs,
            transform=self.train_transform if train else self.eval_transform,
            source_channels=self.input_nc,
            target_channels=self.output_nc,
            source_half=source_half,
            decoded=self.decoded_images(),
        )
