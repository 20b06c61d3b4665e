"""The base of the GANs that generate from noise (the classic family: GAN, cGAN, DCGAN, WGAN,
WGAN-GP, LSGAN, InfoGAN, ProGAN, StyleGAN; and RGAN/RCGAN for series): a generator from latent
noise (and a class label when conditional), trained on a labelled image DataModule
(src/data/labelled.py) or a sequence one, whose batches are
`{"A": samples, "label": classes, "index": item indices}` (plus "A_path" for images).

Sampling and evaluation draw each test item's noise from a generator seeded by the item's index
(`noise_for`), so a sample grid shows the same latents all run long, and FID/KID's samples do
not depend on the batch size nor on how DDP ranks split the test set. With
`test_time_batch_stats` (DCGAN and the models built on its networks) the generator's batch norm
normalises by a fixed reference batch's statistics (src/models/reference_batch_norm.py), which
keeps that independence. A generator that also
draws noise inside its forward (StyleGAN's per-layer noise maps) says so with a
`noise_shapes()` method and takes the maps as `noise=`; they are seeded by the index too
(`noise_maps_for`).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from src.models.base import AdversarialModel, sampling_mode
from src.models.reference_batch_norm import reference_batch_statistics, tracked_batch_norms

#: the name of the one thing FID/KID score for these models (translators score directions)
SAMPLES = "samples"
#: added to a test item's index to seed its latent (fixed, so every run samples the same latents)
NOISE_SEED = 1_000_003
#: the same for the noise maps a generator draws inside (kept apart from the latents' streams)
NOISE_MAP_SEED = 2_000_003
#: the item index of the first latent of the reference batch (far from any test item's)
REFERENCE_ITEMS_START = 1 << 40
#: what a latent's noise is drawn from: N(0, 1), or U(-1, 1) (the GAN, DCGAN, LSGAN and InfoGAN code's)
LATENT_DISTRIBUTIONS = ("normal", "uniform")


class NoiseToImageModel(AdversarialModel):
    """Subclasses set `self.generator` (called as `generator(z, labels)`), `self.latent_dim`,
    `self.num_classes` (0: unconditional), `self.image_shape` (C, H, W), the two sampling
    settings below (NoiseGAN from its hyperparameters) and write `train_iteration`."""

    generator: nn.Module
    latent_dim: int
    latent_distribution: str = "normal"
    #: sample with batch statistics (of the reference batch), as the DCGAN code; else running averages
    test_time_batch_stats: bool
    reference_batch_size: int
    num_classes: int
    image_shape: tuple[int, int, int]

    # ----- checks ------------------------------------------------------------------------
    @classmethod
    def data_kind(cls) -> tuple[type, str]:
        """The DataModule class this model trains on, and what to pass instead of another."""
        from src.data.labelled import LabelledImageDataModule   # keeps data code out of the model import

        return LabelledImageDataModule, ("a labelled image dataset: use data=shapes_labelled (embedded), data=mnist "
                                         "or data=class_folders (<data_dir>/<split>/<class>/ folders, or a "
                                         "CycleGAN-style dataset's trainA/trainB as two classes with data.layout=domains)")

    def network_settings(self) -> str:
        # the class embeddings' size too: a checkpoint of other classes does not fit
        return f"{super().network_settings()}, model.num_classes"

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.check_class_count(self.trainer.datamodule if self._trainer is not None else None)

    def check_class_count(self, datamodule) -> None:
        """`model.num_classes` against the data's classes. src/utils/run.py asks before anything
        is built: Lightning runs the callbacks' setup first, and the FID callback's trains a
        classifier of the data (up to 10,000 images decoded) before a mismatch was named."""
        if self.num_classes == 1:
            # one label for every sample: the condition says nothing (and RCGAN's TSTR, a
            # classifier of one class, would score a meaningless 1.0)
            raise ValueError("model.num_classes=1: a conditional model needs two classes or more (data.num_classes "
                             "and its labels); without classes train the unconditional one (model.num_classes=0)")
        if self.num_classes and datamodule is not None:
            found = datamodule.num_classes
            if found != self.num_classes:
                raise ValueError(f"model.num_classes={self.num_classes}, but the data ({datamodule.name}) has {found} "
                                 f"classes: set model.num_classes={found}")

    def check_batch(self, batch: dict) -> None:
        """Once per batch shape, like the translators' size check: reading a label's value back
        every iteration would wait for a GPU (and setup has matched the class counts)."""
        shape = tuple(batch["A"].shape)
        if shape in self._image_sizes_checked:
            return
        if shape[1:] != tuple(self.image_shape):
            raise ValueError(self.shape_mismatch(batch))
        self._image_sizes_checked.add(shape)
        if self.num_classes and int(batch["label"].max()) >= self.num_classes:
            raise ValueError(f"A label {int(batch['label'].max())} is out of range for model.num_classes="
                             f"{self.num_classes}: set it to the dataset's number of classes")

    def shape_mismatch(self, batch: dict) -> str:
        """Why the data does not fit the generator, and what to set."""
        c, h, w = self.image_shape
        return (f"The generator makes {c}x{h}x{w} images (model.channels x model.image_size), but the data gives "
                f"{'x'.join(map(str, batch['A'].shape[1:]))} ({batch['A_path'][0]}): make data.crop_size (data.size "
                "for the embedded shapes datasets; and data.input_nc) match, with a preprocess mode of one output size")

    # ----- sampling ----------------------------------------------------------------------
    def noise_for(self, indices: torch.Tensor) -> torch.Tensor:
        """One latent per item index, the same for an index every time (see the module doc)."""
        rows = [self.latent_of_item(torch.Generator().manual_seed(NOISE_SEED + int(i))) for i in indices.tolist()]
        return torch.stack(rows).to(self.device)

    def latent_of_item(self, rng: torch.Generator) -> torch.Tensor:
        """One generator input drawn from `rng` (a model with structured codes draws those too)."""
        return self.noise(self.latent_dim, rng=rng)

    def noise(self, *shape: int, rng: torch.Generator | None = None) -> torch.Tensor:
        """Latent noise of `shape` from `latent_distribution`: from the item stream `rng` on the
        CPU when given, else from the global stream on the model's device."""
        device = "cpu" if rng is not None else self.device
        if self.latent_distribution == "uniform":
            return torch.rand(shape, generator=rng, device=device) * 2 - 1
        return torch.randn(shape, generator=rng, device=device)

    def noise_maps_for(self, indices: torch.Tensor) -> list[torch.Tensor] | None:
        """The noise maps of the generator's layers for each item (batched per layer), drawn from
        the item's index like its latent; None for a generator with no noise of its own."""
        shapes = getattr(self.generator, "noise_shapes", None)
        if shapes is None:
            return None
        shapes = shapes()
        per_item = []
        for i in indices.tolist():
            rng = torch.Generator().manual_seed(NOISE_MAP_SEED + int(i))
            per_item.append([torch.randn(shape, generator=rng) for shape in shapes])
        return [torch.stack(layer).to(self.device) for layer in zip(*per_item)]

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                 noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Samples of latents `z` (and classes `labels`; the generator's own `noise` maps when it
        draws any) in eval mode under no_grad."""
        # In the weights' type, as translate's images: a notebook's float64 latents
        # (torch.from_numpy(np.random.randn(...))) stopped in the first layer ("expected scalar
        # type Double").
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"generate takes latents as a torch tensor, got a {type(z).__module__}.{type(z).__name__} "
                            f"(a NumPy array `a`: torch.from_numpy(a))")
        z, labels = z.to(self.device, self.dtype), self.conditioning(labels)
        if noise is not None:
            noise = [maps.to(self.device, self.dtype) for maps in noise]
        rows = self.reference_batch_size if self.test_time_batch_stats and tracked_batch_norms(self.generator) else 0
        if rows:
            # The reference batch goes first in the same forward pass: its rows set every layer's
            # statistics, which normalise the samples' rows too.
            indices = REFERENCE_ITEMS_START + torch.arange(rows)
            z = torch.cat([self.noise_for(indices).to(z), z])
            if labels is not None:
                labels = torch.cat([(indices % self.num_classes).to(labels), labels])
            if noise is not None:
                noise = [torch.cat([reference.to(maps), maps])
                         for reference, maps in zip(self.noise_maps_for(indices), noise)]
        statistics = reference_batch_statistics(self.generator, rows) if rows else contextlib.nullcontext()
        with sampling_mode([self.generator]), statistics:
            samples = self.generator(z, labels, **({} if noise is None else {"noise": noise}))
        return samples[rows:]

    def conditioning(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels a conditional model's networks take; None for an unconditional one."""
        return labels.to(self.device) if self.num_classes and labels is not None else None

    def sampling_nets(self) -> list[nn.Module]:
        return [self.generator]

    def samples_of(self, batch: dict, latent: torch.Tensor | None = None) -> torch.Tensor:
        """One sample per item of a test batch: its index's latent (or `latent`, when the caller
        varies it) and noise maps, its class when conditional."""
        latent = self.noise_for(batch["index"]) if latent is None else latent
        return self.generate(latent, batch.get("label"), self.noise_maps_for(batch["index"]))

    def sample_images(self, batch: dict) -> dict[str, torch.Tensor]:
        """Rows of the sample grid: the test images, and samples of the same classes."""
        return {"real": batch["A"], "fake": self.samples_of(batch)}

    # ----- evaluation --------------------------------------------------------------------
    def evaluation_streams(self, configured: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
        return (SAMPLES,), {}

    def evaluation_pair(self, batch: dict, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The test images, and one sample per image (of its class when conditional)."""
        return batch["A"].to(self.device), self.samples_of(batch)
