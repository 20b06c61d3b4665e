"""What the DataModules share: `SplitDataModule` (splits, resumable loaders, sample batches),
and on it `ImageTranslationDataModule` (image arguments, transforms, domains) and
`TwoDomainDataModule` (the source and target domains a translator trains on).

Image-translation batches are dicts ``{"A": [B, input_nc, H, W], "B": [B, output_nc, H, W], "A_path": [str],
"B_path": [str]}`` with images in [-1, 1]; "A" is always the source domain once `direction` is
applied. Subclasses only say how to build a dataset for a split (`_build_dataset`).
"""

from __future__ import annotations

import inspect
import logging
import math
import types
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, Dataset, default_collate

from src.data.batching import SIZE_KEEPING_MODES, collate_same_size, first_items_of_one_size
from src.data.decoded_cache import DecodedImages
from src.data.epoch_order import EpochOrderLoader, EpochOrderSampler, SeededItems, items_done_when_resharded
from src.data.folders import require_folder
from src.data.image_io import check_channels
from src.data.transforms import ImageTransform
from src.metrics.features import FEATURE_EXTRACTORS
from src.metrics.label_maps import palette_named
from src.utils.config_checks import is_int, recorded_path, require_bool, require_int, to_plain
from src.utils.directions import DIRECTIONS
from src.utils.environment import physical_memory_bytes
from src.utils.hydra_runtime import warn_for_every_rank
from src.utils.rng import derived_seed, rank_zero_seed

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
#: how an unpaired training item draws its two images (src/data/unpaired.py): "cyclegan", the
#: source domain cycles in file order and the target is drawn at random (CycleGAN's loader: where
#: the source is the smaller domain, its first files come twice an epoch); "balanced", the larger
#: domain is taken in the epoch's order and the smaller drawn at random (U-GAT-IT's and NICE-GAN's
#: code shuffle each domain on its own: every image of both is as likely)
UNPAIRED_SAMPLINGS = ("cyclegan", "balanced")


#: the data settings that name files or folders
PATH_SETTINGS = ("data_dir", "csv_path")


class SplitDataModule(pl.LightningDataModule):
    """Train and test splits of items, with training loaders whose order and randomness are set
    by (seed, epoch) alone (src/data/epoch_order.py), so a resumed run continues exactly.

    The base of the image DataModules and of the sequence one (src/data/sequences.py). A
    subclass builds a split's dataset (`_build_dataset`) and sets `self.collate`.
    """

    def __init__(self, batch_size: int = 1, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, eval_batch_size: int | None = None) -> None:
        super().__init__()
        require_int("data.batch_size", batch_size)
        require_int("data.eval_batch_size", eval_batch_size, allow_none=True)
        require_int("data.num_workers", num_workers, least=0,
                    why=" (worker processes besides the main one; 0 loads in the main process)")
        for key, value in (("data.pin_memory", pin_memory), ("data.persistent_workers", persistent_workers)):
            require_bool(key, value)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        # Pinned pages only speed up copies to a GPU; without CUDA torch ignores the setting
        # and warns at every loader, so the data configs' `true` means "when there is a GPU".
        self.pin_memory = pin_memory and torch.cuda.is_available()
        # DataLoader refuses persistent workers without worker processes.
        self.persistent_workers = persistent_workers and num_workers > 0
        self.collate = default_collate
        self._datasets: dict[tuple[str, bool], Dataset] = {}
        self._train_order_seed: int | None = None      # the training loader's, for checkpoints
        #: the training run's `seed` (src/utils/run.py sets it): the order's seed then derives from
        #: it alone; None (a notebook's DataModule) draws one from torch's seeded stream
        self.run_seed: int | None = None
        self._restored_order_seed: int | None = None   # a resumed run's, for its next loader

    def save_hyperparameters(self, *args: Any, frame: types.FrameType | None = None, **kwargs: Any) -> None:
        """Lightning's, with the values kept plain: the config's lists (`data.classes`,
        `data.columns`) arrive as OmegaConf containers, and Lightning writes `hparams` into every
        checkpoint, where a weights-only load (resume, eval) refuses them. The data's files
        (`PATH_SETTINGS`) are recorded absolute, `~` expanded: eval.py reads the run's data by
        the record from wherever it runs, and a relative `data.data_dir=data/mine` was looked
        for (or another `data/mine` found) under that command's working directory."""
        # Lightning reads the caller's __init__ arguments from the frame that calls it: the caller's.
        super().save_hyperparameters(*args, frame=frame or inspect.currentframe().f_back, **kwargs)
        for key, value in self.hparams.items():
            self.hparams[key] = to_plain(value)
            if key in PATH_SETTINGS and isinstance(self.hparams[key], str):
                self.hparams[key] = recorded_path(self.hparams[key])

    # -- what subclasses provide -------------------------------------------------------------

    def _build_dataset(self, split: str, train: bool) -> Dataset:
        """Dataset of `split` ("train" or "test"); train=True: random pipeline and pairing."""
        raise NotImplementedError

    def _ensure_available(self) -> None:
        """Make the data exist on disk when this module can (the synthetic dataset does)."""

    def check_present(self) -> None:
        """Raise the dataset's not-found error now for data that is not on disk and that this
        module cannot make itself (src/utils/run.py calls it before the model is built)."""

    # -- shared machinery ----------------------------------------------------------------------

    def dataset(self, split: str = "train", train: bool | None = None) -> Dataset:
        """The (cached) dataset of a split.

        train defaults to True for the train split; train=False gives the deterministic
        evaluation transform and sorted-order pairing for any split.
        """
        if split not in SPLITS:
            raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}.")
        train = (split == "train") if train is None else train
        key = (split, train)
        if key not in self._datasets:
            self._ensure_available()
            self._datasets[key] = self._build_dataset(split, train)
        return self._datasets[key]

    def prepare_data(self) -> None:
        self._ensure_available()

    def setup(self, stage: str | None = None) -> None:
        """Index the folders a stage needs, raising clear errors for missing or empty ones.

        Fitting also needs the test split: the evaluation callbacks and the sample grids read it,
        and a missing folder should stop the run before the first epoch, not after it.
        """
        if stage in (None, "fit"):
            self.dataset("train", train=True)
            self.check_training_split_fills_a_batch()
        self.dataset("test", train=False)

    # -- several model batches per loader batch (a WGAN critic's n_critic real batches) -------

    #: model batches of batch_size in one training-loader batch; the model splits the loader
    #: batch (set by `set_batches_per_iteration` in DataModules that offer it)
    batches_per_iteration: int = 1

    def set_batches_per_iteration(self, value: int) -> None:
        require_int("data.batches_per_iteration", value,
                    why=" (the real batches a training iteration takes, e.g. model.n_critic)")
        self.batches_per_iteration = value

    @property
    def train_batch_size(self) -> int:
        """Items per training-loader batch (at the base batch size, when a schedule sets it)."""
        return self.batch_size * self.batches_per_iteration

    # -- a batch size that changes during training (ProGAN's and StyleGAN's per resolution) ---

    #: model batch size of each training iteration, set by `set_batch_size_schedule`; None: data.batch_size throughout
    batch_size_schedule = None
    #: (epoch, items) this rank counts as done in that epoch beyond its own batches: set when a run
    #: with scheduled batch sizes resumes on another number of devices
    _position_offset: tuple[int, int] = (-1, 0)

    def set_batch_size_schedule(self, sizes) -> None:
        """Train with `sizes(iteration)` model batches in iteration `iteration` (times
        `batches_per_iteration` items per loader batch) instead of data.batch_size; None: back to
        data.batch_size. The model sets it (src/models/progan.py) before the loader is built."""
        self.batch_size_schedule = sizes

    def loader_batch_size_at(self, iteration: int) -> int:
        model_batch = self.batch_size_schedule(iteration) if self.batch_size_schedule else self.batch_size
        return model_batch * self.batches_per_iteration

    def _iterations_done(self) -> int:
        """Training iterations done by the running fit (the model counts them from its steps)."""
        return self.trainer.lightning_module.iteration if self.trainer is not None else 0

    #: the largest model batch of a growing model's schedule that must come whole (ProGAN and
    #: StyleGAN: their authors' minibatches never fall short); None: short last batches are kept
    #: unless several model batches make one loader batch. Set by `keep_whole_batches`.
    whole_model_batch: int | None = None

    def keep_whole_batches(self, largest_model_batch: int) -> None:
        """Drop every epoch's short last batch, and check that each rank's share of the split
        fills the largest model batch the run will ask for."""
        self.whole_model_batch = largest_model_batch
        self.check_training_split_fills_a_batch()

    @property
    def train_drop_last(self) -> bool:
        """Whether the training loader drops an epoch's incomplete last batch: with several model
        batches per loader batch, so that every loader batch splits into equal parts, or where
        the model asks for whole batches."""
        return self.batches_per_iteration > 1 or self.whole_model_batch is not None

    def describe_training_split(self) -> str:
        """Where the training items come from, for error messages."""
        return "the train split"

    def check_training_split_fills_a_batch(self) -> None:
        """With drop_last, a split smaller than one loader batch yields no batch at all, and
        Lightning would "train" epochs of nothing without a word. Each rank gets its share."""
        if not self.train_drop_last:
            return
        world_size = self.trainer.world_size if self.trainer is not None else 1
        n = len(self.dataset("train"))
        model_batch = self.whole_model_batch or self.batch_size   # the model's largest, when it names one
        items = model_batch * self.batches_per_iteration
        if -(-n // world_size) < items:
            batch = (f"data.batch_size={self.batch_size}" if model_batch == self.batch_size
                     else f"the largest batch of model.batch_sizes, {model_batch},")
            raise ValueError(
                f"{batch} x data.batches_per_iteration={self.batches_per_iteration} "
                f"(model.n_critic) = {items} training items per iteration"
                + (f" on each of {world_size} devices" if world_size > 1 else "")
                + f", but {self.describe_training_split()} holds only {n}. Add data, or lower "
                f"data.batch_size, model.batch_sizes or model.n_critic.")

    def loader_settings(self, batch_size: int, drop_last: bool = False) -> dict[str, Any]:
        """DataLoader settings of the data config (workers, pinning), for any loader of its items."""
        return dict(
            batch_size=batch_size,
            collate_fn=self.collate,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            # The workers' base seed is drawn from this generator, not from torch's global RNG,
            # so starting an epoch's iterator leaves the training's random stream untouched.
            generator=torch.Generator(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training items in an order, and with augmentations, set by (seed, epoch)
        alone, so a run resumed mid-epoch continues exactly (src/data/epoch_order.py)."""
        dataset = SeededItems(self.dataset("train", train=True))
        self._position_offset = (-1, 0)   # a loader state loaded after this sets it again
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochOrderSampler(dataset, seed=self._order_seed(), num_replicas=world_size, rank=rank)
        scheduled = ({"batch_sizes": self.loader_batch_size_at, "first_iteration": self._iterations_done}
                     if self.batch_size_schedule else {})
        return EpochOrderLoader(dataset, sampler=sampler, position=self._training_position,
                                reshard=self._reshard_resumed_epoch, **scheduled,
                                **self.loader_settings(self.train_batch_size, self.train_drop_last))

    def _order_seed(self) -> int:
        """A seed derived from the run's `seed` alone, so two runs of one seed train on the same
        epoch lists and augmentations whatever their models (an ablation's) or device counts;
        without a run seed, one read from torch's global RNG without advancing it (so building
        the loader changes no other random draw), rank 0's on every rank. A resumed run's loader
        takes the saved one (`load_state_dict`)."""
        if self._restored_order_seed is not None:
            seed, self._restored_order_seed = self._restored_order_seed, None
        elif self.run_seed is not None:
            seed = derived_seed(self.run_seed, "training order")
            if self.trainer is not None:
                # rank zero's: under srun or torchrun with seed=null each rank draws its own
                # run seed, and ranks of different epoch lists would overlap and miss items
                seed = self.trainer.strategy.broadcast(seed)
        else:
            seed = rank_zero_seed(self.trainer.strategy if self.trainer is not None else None)
        self._train_order_seed = seed
        return seed

    def state_dict(self) -> dict[str, int]:
        """The training order's seed. Lightning restores a DataModule's state from every
        checkpoint, and the training loader's (which holds the seed too, with the place in the
        epoch) only from one taken inside an epoch: from the one an epoch's end writes (a run
        measured in epochs), a seed drawn again from the restored RNG would give every later
        epoch another order and other augmentations than the uninterrupted run's."""
        return {} if self._train_order_seed is None else {"order_seed": self._train_order_seed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        # An older checkpoint has none: its loader's state, where Lightning loads it, sets it.
        if "order_seed" in state_dict:
            self._restored_order_seed = int(state_dict["order_seed"])

    def _training_position(self) -> tuple[int, int]:
        """(epoch, items this rank has trained on in it) of the running fit."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        batches_done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if not self.batch_size_schedule:
            return trainer.current_epoch, batches_done * self.train_batch_size
        epoch_start = self._iterations_done() - batches_done
        items = sum(self.loader_batch_size_at(i) for i in range(epoch_start, epoch_start + batches_done))
        offset_epoch, offset = self._position_offset
        return trainer.current_epoch, items + (offset if offset_epoch == trainer.current_epoch else 0)

    def _reshard_resumed_epoch(self, epoch: int, items_done: int, saved_world: int, saved_batch: int | None) -> int:
        """A run saved on `saved_world` devices resumed inside epoch `epoch` on another number of
        devices or at another batch size: the epoch goes on after the items all devices had
        trained (`items_done_when_resharded`). Lightning's count of the epoch's batches,
        restored in the saved run's batches, is set to this rank's batches done, so the epoch
        ends when its list does; with batch sizes that follow a schedule (no epoch length to end
        on) the items done are offset instead."""
        trainer = self.trainer
        whole_batches = 1 if self.batch_size_schedule else self.train_batch_size
        items = items_done_when_resharded(items_done, saved_world, trainer.world_size, whole_batches)
        ended = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if ended and not self.batch_size_schedule:
            # The saved run had ended the epoch (its checkpoint at the epoch's last batch): so has
            # this one. Rounded down to whole batches, the count fell short of this rank's epoch,
            # and Lightning, which had ended the epoch, began the next at that count: most of the
            # next epoch's items were never trained.
            per_rank = math.ceil(len(self.dataset("train", train=True)) / trainer.world_size)
            items = per_rank - (per_rank % self.train_batch_size if self.train_drop_last else 0)
        if self.batch_size_schedule:
            self._position_offset = (epoch, items - items_done)
        else:
            # Every counter moves by the same amount: Lightning's restart logic reads their
            # differences (a save at a batch's end holds completed = ready - 1).
            progress = trainer.fit_loop.epoch_loop.batch_progress.current
            shift = math.ceil(items / self.train_batch_size) - progress.ready
            for counter in ("ready", "started", "processed", "completed"):
                setattr(progress, counter, getattr(progress, counter) + shift)
        # A scheduled loader records no batch size (its batches follow the schedule).
        here = f"{trainer.world_size} device(s)" + (f" at batch size {self.train_batch_size}" if saved_batch else "")
        saved = f"{saved_world}" + (f" at batch size {saved_batch}" if saved_batch else "")
        if ended and not self.batch_size_schedule:
            rank_zero_info(f"Resumed on {here} a run saved on {saved} at the end of epoch {epoch}: the next "
                           f"epoch starts whole")
        else:
            rank_zero_info(f"Resumed on {here} a run saved on {saved}: epoch {epoch} goes on after its first "
                           f"{items * trainer.world_size} of the {items_done * saved_world} items the saved run "
                           f"had trained")
        return items

    # No val_dataloader: the models have no validation_step (Lightning would only warn that it
    # skips the loop on every run); FID/KID, latents and sample grids are callbacks that read
    # the test split at their own iteration intervals.
    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("test", train=False), **self.loader_settings(self.eval_batch_size))

    def evaluation_indices(self, split: str, n: int) -> list[int] | range:
        """The items of `split` that stand for it when an evaluation takes only `n` of them (a
        callback's `max_images`): the first n."""
        return range(min(n, len(self.dataset(split, train=False))))

    def sample_batch(self, n: int, split: str = "test") -> dict[str, Any]:
        """The first n items (sorted file order) of a split, deterministic transform, as a batch.

        Meant for fixed sample grids: the same images, identically preprocessed, every time.
        Fewer than n items come back when the split is smaller, or when it mixes image sizes
        (preprocess=none, scale_width): a batch holds those of the first image's size.
        """
        if not is_int(n) or n < 1:
            raise ValueError(f"sample_batch needs a positive number of items, got n={n!r}.")
        return self.collate(first_items_of_one_size(self.dataset(split, train=False), n))


class ImageTranslationDataModule(SplitDataModule):
    """Base of the unpaired, paired and labelled DataModules (not used on its own).

    Construction only checks the settings; folders are looked at in `setup`, so configs can be
    instantiated on machines without the data.
    """

    paired: bool = False

    def __init__(
        self,
        data_dir: str | Path,
        name: str,
        batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        preprocess: str = "resize_and_crop",
        load_size: int = 286,
        crop_size: int = 256,
        flip: bool = True,
        max_dataset_size: int | None = None,
        direction: str = "AtoB",
        input_nc: int = 3,
        output_nc: int = 3,
        eval_batch_size: int | None = None,
        feature_extractor: str = "inception",
        reduced_jpeg_decode: bool = True,
        label_palette: str | None = None,
        label_domain: str = "B",
        bit_depth: int = 16,
        to_srgb: bool = True,
        resize_interpolation: str = "bicubic",
        cache_decoded: bool = False,
        unpaired_sampling: str = "cyclegan",
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=persistent_workers, eval_batch_size=eval_batch_size)
        self.save_hyperparameters(logger=False)
        if direction not in DIRECTIONS:
            raise ValueError(f"data.direction={direction!r} must be one of {', '.join(DIRECTIONS)}.")
        check_channels(input_nc, "data.input_nc")
        check_channels(output_nc, "data.output_nc")
        for key, value in (("flip", flip), ("reduced_jpeg_decode", reduced_jpeg_decode), ("to_srgb", to_srgb),
                           ("cache_decoded", cache_decoded)):
            require_bool(f"data.{key}", value)
        require_int("data.max_dataset_size", max_dataset_size, allow_none=True)
        require_int("data.bit_depth", bit_depth, least=8, why=" (the bits of the samples of 16-bit PNG/TIFF files)")
        if bit_depth > 16:
            raise ValueError(f"data.bit_depth={bit_depth} must be at most 16 (16-bit PNG/TIFF; 32-bit integer "
                             "images are read as 16-bit data)")
        if feature_extractor not in FEATURE_EXTRACTORS:   # else the FID callback would name its own key
            raise ValueError(f"data.feature_extractor={feature_extractor!r} must be one of "
                             f"{', '.join(FEATURE_EXTRACTORS)}.")
        if label_domain not in ("A", "B"):
            raise ValueError(f"data.label_domain={label_domain!r} must be A or B: the domain of the label maps")
        if unpaired_sampling not in UNPAIRED_SAMPLINGS:
            raise ValueError(f"data.unpaired_sampling={unpaired_sampling!r} must be one of "
                             f"{', '.join(UNPAIRED_SAMPLINGS)} (how unpaired training items draw their images)")
        if label_palette is not None:
            # data.input_nc is the delivered source's: domain A with direction AtoB, B with BtoA.
            is_source = (label_domain == "A") == (direction == "AtoB")
            key, channels = ("data.input_nc", input_nc) if is_source else ("data.output_nc", output_nc)
            if channels != 3:
                raise ValueError(f"data.label_palette={label_palette} reads colour label maps, so domain {label_domain} "
                                 f"needs 3 channels, and {key}={channels}: set {key}=3 (or data.label_palette=null)")

        self.data_dir = Path(self.hparams["data_dir"])   # (made absolute there)
        self.name = name
        # Modes that keep each image's size may give every test image its own: evaluation then
        # translates one at a time unless data.eval_batch_size says otherwise.
        self.keeps_image_size = preprocess in SIZE_KEEPING_MODES
        if eval_batch_size is None and self.keeps_image_size:
            self.eval_batch_size = 1
        self.collate = partial(collate_same_size, preprocess=preprocess)
        # Which feature extractor FID/KID use when theirs is "auto": Inception for real data
        # (comparable with papers), a download-free one for the embedded dataset.
        self.feature_extractor = feature_extractor
        # Which domain holds colour-coded semantic label maps, and their palette: evaluation
        # then scores label maps as classes (src/utils/label_evaluation.py).
        self.label_palette = palette_named(label_palette, "data.label_palette") if label_palette is not None else None
        self.label_domain = label_domain
        self.max_dataset_size = max_dataset_size
        self.direction = direction
        self.input_nc, self.output_nc = input_nc, output_nc
        self.cache_decoded = cache_decoded
        self.unpaired_sampling = unpaired_sampling
        sizes = dict(preprocess=preprocess, load_size=load_size, crop_size=crop_size, flip=flip,
                     reduced_jpeg_decode=reduced_jpeg_decode, bit_depth=bit_depth, to_srgb=to_srgb,
                     resize_interpolation=resize_interpolation)
        self.train_transform = ImageTransform(**sizes, train=True)
        self.eval_transform = ImageTransform(**sizes, train=False)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if stage in (None, "fit"):
            self.warn_of_a_decoded_cache_too_large()

    def warn_of_a_decoded_cache_too_large(self) -> None:
        """`data.cache_decoded` keeps every decoded training image in each loader process of each
        device, with no cap: FFHQ's 70k images at 1024 px are 220 GB a process. Estimated from
        what the first item put in the cache (the decoded arrays, before any crop) and said where
        it passes half the machine's memory."""
        memory = physical_memory_bytes()
        train = self.dataset("train", train=True) if self.cache_decoded else None
        decoded = getattr(train, "decoded", None)
        if memory is None or decoded is None or len(train) == 0:
            return
        # From the training split's own dataset, so its decode is the cache's first entry, not
        # a read of its own; seeded as training's items are, drawing nothing from the run's streams.
        SeededItems(train)[0, 0]
        per_item = decoded.nbytes()
        devices = self.trainer.num_devices if self.trainer is not None else 1
        processes = max(self.num_workers, 1) * devices
        cached = per_item * len(train) * processes
        if cached > memory / 2:
            warn_for_every_rank(
                log, f"data.cache_decoded=true keeps every decoded training image in each of {processes} loader "
                f"process(es) on this machine: about {cached / 1e9:.1f} GB for {len(train)} items of "
                f"{per_item / 1e6:.2f} MB decoded, with {memory / 1e9:.1f} GB of memory for this process (the "
                f"machine's, or its container's or job's limit). Set "
                f"++data.cache_decoded=false (it is for small images read many times), or fewer data.num_workers.")

    def decoded_images(self) -> DecodedImages | None:
        """A new split dataset's cache of decoded images (src/data/decoded_cache.py), or None."""
        return DecodedImages() if self.cache_decoded else None

    # -- image domains -------------------------------------------------------------------------

    @property
    def source_domain(self) -> str:
        """Folder letter of the domain delivered as batch["A"]."""
        return "A" if self.direction == "AtoB" else "B"

    @property
    def target_domain(self) -> str:
        return "B" if self.direction == "AtoB" else "A"

    def test_items_are_pairs(self) -> bool:
        """Whether test item i holds a real pair (source and its own target), which scores that
        compare a translation with its target need (the label maps' photo->labels)."""
        return self.paired

    def split_folder(self, split: str, domain: str) -> Path | None:
        """The folder whose tree holds the images of dataset domain `domain` ("A" or "B") in
        `split`, which evaluation names its outputs within; None where images are not files of
        one folder tree."""
        return None

    def check_present(self) -> None:
        self.image_folders()

    def image_folders(self) -> dict[Path, int]:
        """Every folder whose image files the module reads, in the train and test splits, each
        with the channels its images are read with (`python -m src.data.check_images` reads
        them); empty where images are not files of folder trees. A missing folder raises
        DatasetNotFoundError with the way to get the dataset."""
        folders: dict[Path, int] = {}
        require_folder(self.data_dir, self.name, self.data_dir)   # the dataset itself first, then its splits
        for split in ("train", "test"):
            for domain in ("A", "B"):
                folder = self.split_folder(split, domain)
                if folder is None:
                    return {}
                require_folder(folder, self.name, self.data_dir)
                channels = self.input_nc if domain == self.source_domain else self.output_nc
                folders[folder] = max(folders.get(folder, 0), channels)   # A|B files hold both domains
        return folders


class TwoDomainDataModule(ImageTranslationDataModule):
    """Base of the DataModules the translators train on: batches hold a source domain "A" and a
    target domain "B"; `paired` (False unless a subclass says otherwise) says whether each B is
    its A's counterpart (pix2pix needs it; the unpaired methods warn that they ignore it). A new two-domain DataModule subclasses this (or
    `PairedDataModule`/`UnpairedDataModule`)."""
