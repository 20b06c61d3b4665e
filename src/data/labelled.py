"""Labelled images of one domain, for noise-to-image GANs (GAN, cGAN, DCGAN, WGAN ...).

Two layouts on disk, with the classes in a fixed order (label = index in that order):

* classes: ``data_dir/train/<class>/*.png`` and ``data_dir/test/<class>/*.png`` (torchvision's
  ImageFolder convention); the classes are the sorted folder names of ``train/``, or
  ``classes`` in the order given;
* domains: the unpaired layout ``data_dir/trainA trainB testA testB``, classes "A" and "B"
  (``classes`` may pick or reorder the letters), so any unpaired dataset, the embedded shapes
  included, is also a labelled one.

Batches are dicts ``{"A": [B, input_nc, H, W] in [-1, 1], "label": [B] int64, "A_path": [str],
"index": [B] int64}`` (the items' indices in their split):
the one image domain keeps the key "A" so the shared collate and size checks apply unchanged.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from src.data.base import ImageTranslationDataModule
from src.data.decoded_cache import DecodedImages
from src.data.download import DATASETS, pasteable
from src.data.errors import DatasetNotFoundError
from src.data.folders import list_images, not_data_folder, refuse_a_missing_test_split, require_folder
from src.data.path_table import path_rows
from src.data.transforms import ImageTransform
from src.data.unpaired import preprocess_file
from src.utils.ddp_multirun import quote_override_value

log = logging.getLogger(__name__)

LAYOUTS = ("classes", "domains")
CLASSES_LAYOUT = "train/<class>/*.png and test/<class>/*.png, the same class folders in both splits"


class LabelledImageDataset(Dataset):
    """Item i: image i of `items` (path, label), preprocessed, with its label."""

    def __init__(self, items: list[tuple[Path, int]], transform: ImageTransform, channels: int,
                 decoded: DecodedImages | None = None) -> None:
        # Compact: a list of Path objects would be copied into every DataLoader worker.
        self.items, self.transform, self.channels, self.decoded = path_rows(items), transform, channels, decoded

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.items[index]
        # The index lets a model tie a fixed latent to each test item (src/models/noise_base.py).
        return {"A": preprocess_file(path, self.channels, self.transform, self.decoded), "label": label,
                "A_path": str(path), "index": index}


def proportional_picks(labels: Sequence[int], count: int) -> list[int]:
    """`count` indices into `labels` whose labels keep the classes' proportions (to within one
    per class), for any count (an index repeats when count exceeds the labels): the indices
    sorted by label (stably) taken evenly spaced, i * N // count."""
    by_class = sorted(range(len(labels)), key=labels.__getitem__)
    return [by_class[i * len(labels) // count] for i in range(count)]


def class_subfolders(folder: Path) -> list[str]:
    """The names of a split folder's class folders (hidden ones, .ipynb_checkpoints or a Mac's
    .Trashes, and system ones, a Mac zip's __MACOSX, are not classes: `not_data_folder`), sorted
    as their composed Unicode forms: a copy from a Mac's older disks names "Égyptienne"
    decomposed, whose raw code points sort it elsewhere, and the labels would change with the
    machine."""
    return sorted((p.name for p in folder.iterdir() if p.is_dir() and not not_data_folder(p.name)),
                  key=lambda name: unicodedata.normalize("NFC", name))


def check_same_classes(trained_on: list[str] | None, datamodule, what: str) -> None:
    """ValueError when `datamodule` reads other classes, or the same in another order, than the
    checkpoint `what` was trained on (`trained_on`, in label order; None: a checkpoint of data
    without classes, or from before they were recorded). Label i means class i: a class folder
    renamed, or one added and another removed, would silently give labels other meanings."""
    if trained_on is None or not hasattr(datamodule, "class_folders"):
        return
    here = datamodule.class_folders()
    composed = [unicodedata.normalize("NFC", c) for c in here]
    if composed != [unicodedata.normalize("NFC", c) for c in trained_on]:
        # `++`: eval.py's config holds no data node of its own to override (data: null, the run's)
        if all(unicodedata.normalize("NFC", c) in composed for c in trained_on):   # reordered, or more folders
            listed = ",".join(c if re.fullmatch(r"[\w.\-]+", c) else quote_override_value(c) for c in trained_on)
            fix = f"set {pasteable(f'++data.classes=[{listed}]')} in that order"
        else:   # which folder holds which trained class is for the user to say
            placeholders = ",".join(f"<folder of {c}>" for c in trained_on)
            fix = (f"where its folders hold those classes under other names, name them in the trained classes' "
                   f"order: \"++data.classes=[{placeholders}]\"")
        raise ValueError(f"{what} was trained on the classes {trained_on} (label i is class i), and the data here "
                         f"reads {here}: point data.data_dir at the data it was trained on, or {fix}")


def interleave(per_class: list[list[Path]]) -> list[tuple[Path, int]]:
    """(path, label) taking one image of each class in turn, until every class is used up.

    The training loader shuffles anyway; evaluation and `sample_batch` read items in this order,
    so the first few (a sample grid's real row) show every class, not only the first one.
    """
    # Round by round over the classes not yet used up: each image once (a class of 200k beside 999
    # small ones cost classes x largest class before, seconds at a million images).
    remaining = [(label, iter(paths)) for label, paths in enumerate(per_class) if paths]
    items = []
    while remaining:
        still = []
        for label, paths in remaining:
            path = next(paths, None)
            if path is not None:
                items.append((path, label))
                still.append((label, paths))
        remaining = still
    return items


class LabelledImageDataModule(ImageTranslationDataModule):
    """Labelled images of one domain; see the module docstring for the layouts.

    Takes the arguments of ImageTranslationDataModule (`direction` and `output_nc` are accepted
    and unused: there is no target domain) plus:

    * layout: "classes" or "domains";
    * classes: the class folders (classes layout) or domain letters (domains layout) to use, in
      label order; null: every class folder of ``train/`` sorted by name, or ["A", "B"];
    * batches_per_iteration: model batches of batch_size in one training-loader batch (a WGAN
      critic's n_critic fresh real batches per generator step; the model splits the loader
      batch). Above 1 the training loader drops an epoch's incomplete last batch, so every
      loader batch splits evenly. Evaluation loaders keep eval_batch_size.

    `max_dataset_size` keeps the first N sorted files of each class. `class_names` and
    `num_classes` are read lazily (the classes layout lists ``train/``, generating the data first
    where this module can); construction touches no folder.
    """

    paired = False
    # Display names of class folders (a subclass with meaningful domain letters sets them).
    display_names: dict[str, str] = {}

    def __init__(self, *args: Any, layout: str = "classes", classes: list[str] | None = None,
                 batches_per_iteration: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if layout not in LAYOUTS:
            raise ValueError(f"data.layout={layout!r} must be one of {', '.join(LAYOUTS)}.")
        if classes is not None:
            # A Hydra ListConfig too; YAML reads folder names like `[0, 1]` as ints.
            classes = [str(c) for c in classes] if isinstance(classes, Sequence) and not isinstance(classes, str) \
                else classes
            if not isinstance(classes, list) or not classes or not all(classes) or len(set(classes)) < len(classes):
                raise ValueError(f"data.classes={classes!r} must be null or a list of distinct folder names.")
        self.set_batches_per_iteration(batches_per_iteration)
        self.layout = layout
        self.classes = classes
        self.classes_given = classes is not None

    # -- classes -------------------------------------------------------------------------------

    def _require(self, folder: Path) -> Path:
        refuse_a_missing_test_split(folder)
        if self.layout == "classes" and self.name not in DATASETS and not folder.is_dir():
            # require_folder's hint for an unknown dataset lists every layout; say which one this is.
            # (A known one, MNIST, gets its download command from require_folder.)
            raise DatasetNotFoundError(f"Dataset folder not found: {folder}. Expected layout of "
                                       f"{self.data_dir}: {CLASSES_LAYOUT}.")
        return require_folder(folder, self.name, self.data_dir)

    def _class_folder(self, split: str, name: str) -> Path:
        if self.layout == "domains":
            return self.data_dir / f"{split}{name}"
        return self.data_dir / split / name

    def _require_class_folder(self, split: str, name: str) -> Path:
        """A class's folder in a split. A class named in `data.classes` that the split lacks,
        beside folders it has, is a wrong name, not a dataset to download again (CIFAR-10's
        folders are `3_cat`, not `cat`)."""
        folder = self._class_folder(split, name)
        if self.classes_given and not folder.is_dir():
            if self.layout == "domains":
                present = sorted(p.name[len(split):] for p in self.data_dir.glob(f"{split}?*") if p.is_dir())
                where = f"{self.data_dir}'s {split}<X> folders"
            else:
                present = class_subfolders(folder.parent) if folder.parent.is_dir() else []
                where = str(folder.parent)
            if present:
                raise DatasetNotFoundError(f"data.classes: {name!r} is not a class of {where} (those are "
                                           f"{', '.join(present)}): fix the name, or ++data.classes=null for all")
        return self._require(folder)

    def class_folders(self) -> list[str]:
        """Folder names (classes layout) or domain letters (domains layout), in label order."""
        if self.classes is not None:
            return self.classes
        if self.layout == "domains":
            return ["A", "B"]
        self._ensure_available()
        train = self._require(self._require(self.data_dir) / "train")
        found = class_subfolders(train)
        if not found:
            raise DatasetNotFoundError(f"{train} holds no class folder. Expected layout of {self.data_dir}: "
                                       f"{CLASSES_LAYOUT}.")
        self.classes = found  # fixed from here on: the labels must not change mid-run
        return found

    def image_folders(self) -> dict[Path, int]:
        """Each class's folder in the train and test splits, read with `input_nc` channels."""
        return {self._require_class_folder(split, name): self.input_nc
                for split in ("train", "test") for name in self.class_folders()}

    @property
    def class_names(self) -> list[str]:
        """Readable class names, in label order."""
        return [self.display_names.get(c, c) for c in self.class_folders()]

    @property
    def num_classes(self) -> int:
        return len(self.class_folders())

    # -- datasets and loaders --------------------------------------------------------------------

    def _build_dataset(self, split: str, train: bool) -> Dataset:
        self._require(self.data_dir)
        classes = self.class_folders()
        if self.layout == "classes":
            split_folder = self._require(self.data_dir / split)
            extra = [name for name in class_subfolders(split_folder) if name not in classes]
            if extra:
                log.warning("%s: folders %s are not among the classes (%s) and are left out.",
                            split_folder, ", ".join(extra), ", ".join(classes))
        # A class folder missing in one split raises, naming it: a test split without a class
        # would silently evaluate on fewer classes than the model generates.
        per_class = [list_images(self._require_class_folder(split, c), self.max_dataset_size)
                     for c in classes]
        return LabelledImageDataset(interleave(per_class), self.train_transform if train else self.eval_transform,
                                    self.input_nc, self.decoded_images())

    def evaluation_indices(self, split: str, n: int) -> list[int]:
        """n items in the split's class proportions (to within one per class), in list order:
        the first n of the interleaved list would over-represent the small classes, which run
        out first. Spread evenly through the items sorted by label."""
        labels = self.dataset(split, train=False).items.columns[1].tolist()   # the labels, without making paths
        return sorted(proportional_picks(labels, min(n, len(labels))))

    def describe_training_split(self) -> str:
        return "the train split (" + ", ".join(str(self._class_folder("train", c)) for c in self.class_folders()) + ")"
