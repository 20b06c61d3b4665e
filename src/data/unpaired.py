"""Unpaired image folders (CycleGAN, U-GAT-IT, NICE-GAN): data_dir/trainA trainB testA testB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from src.data.base import TwoDomainDataModule
from src.data.decoded_cache import DecodedImages, read
from src.data.errors import MissingPartnerError
from src.data.folders import list_images, require_folder
from src.data.path_table import PathColumn
from src.data.image_io import load_image
from src.data.paired import match_by_name
from src.data.transforms import ImageTransform


def preprocess_file(path: Path, channels: int, transform: ImageTransform,
                    decoded: DecodedImages | None = None) -> torch.Tensor:
    """Load (from `decoded` when given: data.cache_decoded) and preprocess one image file; size
    errors get the file's path added."""
    image = read(decoded, (str(path), channels),
                 lambda: load_image(path, channels, transform.decode_at_least, **transform.reading))
    try:
        return transform(image)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


class UnpairedImageDataset(Dataset):
    """Item i: source image i (cycling) with a target image: in training one drawn at random,
    in evaluation target i (cycling), which is its partner only where the test folders match by
    name (`UnpairedDataModule.test_items_are_pairs`); no correspondence is assumed.

    The length is that of the larger domain (the smaller source domain cycles), as CycleGAN's
    loader has it. With random_partner the target is drawn afresh from torch's global RNG on
    every access (training), so an epoch need not show every target image; otherwise it is
    target[i % len(target)], which pairs equal-length test folders in sorted order (evaluation).

    `balanced` (training, `data.unpaired_sampling=balanced`): where the source is the smaller
    domain, item i takes target i and draws the source at random instead. Cycling, the smaller
    domain's first files came twice an epoch, every epoch (horse2zebra: 267 of the 1067 horses
    were 40% of the horses trained on); U-GAT-IT's and NICE-GAN's code shuffle each domain on
    its own, so every image of both is as likely.
    """

    def __init__(
        self,
        source_paths: list[Path],
        target_paths: list[Path],
        transform: ImageTransform,
        source_channels: int,
        target_channels: int,
        random_partner: bool,
        decoded: DecodedImages | None = None,
        balanced: bool = False,
    ) -> None:
        # Compact: a list of Path objects would be copied into every DataLoader worker.
        self.source_paths, self.target_paths = PathColumn(source_paths), PathColumn(target_paths)
        self.decoded = decoded
        self.transform = transform
        self.source_channels, self.target_channels = source_channels, target_channels
        self.random_partner = random_partner
        self.balanced = balanced

    def __len__(self) -> int:
        return max(len(self.source_paths), len(self.target_paths))

    def __getitem__(self, index: int) -> dict[str, Any]:
        sources, targets = len(self.source_paths), len(self.target_paths)
        source_index, target_index = index % sources, index % targets
        if self.random_partner and self.balanced and sources < targets:
            source_index = int(torch.randint(sources, ()).item())
        elif self.random_partner:
            target_index = int(torch.randint(targets, ()).item())
        source_path, target_path = self.source_paths[source_index], self.target_paths[target_index]
        return {
            "A": preprocess_file(source_path, self.source_channels, self.transform, self.decoded),
            "B": preprocess_file(target_path, self.target_channels, self.transform, self.decoded),
            "A_path": str(source_path),
            "B_path": str(target_path),
        }


def distinct_images(dataset) -> dict[str, int]:
    """How many distinct images each image key of a split's items holds, where the split repeats
    some: an unpaired split is as long as its larger domain, item i showing A[i % nA] and
    B[i % nB] (horse2zebra's test split: 120 A, 140 B), so items from a domain's count on repeat
    its images. Empty for a dataset whose items are all distinct."""
    if isinstance(dataset, UnpairedImageDataset):
        return {"A": len(dataset.source_paths), "B": len(dataset.target_paths)}
    return {}


class UnpairedDataModule(TwoDomainDataModule):
    """Two folders per split, one per domain, with no correspondence between their images.

    Takes the arguments of ImageTranslationDataModule. `max_dataset_size` keeps the first N
    sorted files of each domain folder (in every split).
    """

    paired = False
    _test_items_are_pairs: bool | None = None

    def _domain_folder(self, split: str, domain: str) -> Path:
        require_folder(self.data_dir, self.name, self.data_dir)
        return require_folder(self.split_folder(split, domain), self.name, self.data_dir)

    def split_folder(self, split: str, domain: str) -> Path:
        return self.data_dir / f"{split}{domain}"

    def test_items_are_pairs(self) -> bool:
        """True when the test folders match one to one by name (CycleGAN's copies of the paired
        datasets: `testA/0_A.jpg` with `testB/0_B.jpg`), so that test item i, which takes the i-th
        file of each sorted folder, is a real pair. Training still draws its partners at random."""
        if self._test_items_are_pairs is None:
            # Fixed at the first look, as the test dataset's file lists are.
            dataset = self.dataset("test", train=False)
            domains = (self.source_domain, self.target_domain)
            try:
                matched = set(match_by_name(*(self.split_folder("test", domain) for domain in domains), domains))
            except MissingPartnerError:
                matched = set()
            self._test_items_are_pairs = len(dataset.source_paths) == len(dataset.target_paths) and all(
                pair in matched for pair in zip(dataset.source_paths, dataset.target_paths))
        return self._test_items_are_pairs

    def _build_dataset(self, split: str, train: bool) -> Dataset:
        source = self._domain_folder(split, self.source_domain)
        target = self._domain_folder(split, self.target_domain)
        return UnpairedImageDataset(
            source_paths=list_images(source, self.max_dataset_size),
            target_paths=list_images(target, self.max_dataset_size),
            transform=self.train_transform if train else self.eval_transform,
            source_channels=self.input_nc,
            target_channels=self.output_nc,
            random_partner=train,
            decoded=self.decoded_images(),
            balanced=self.unpaired_sampling == "balanced",
        )
