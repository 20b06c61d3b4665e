"""Image feature extractors for FID/KID (and class logits for the Inception Score): images in
[-1, 1] -> one vector per image.

`build_feature_extractor(name)` returns a frozen module with a `num_features` attribute that maps
float images (B, C, H, W) in [-1, 1] (C = 1 is repeated to RGB) to (B, num_features) features,
and `logits(features)`: the (B, num_classes) class logits of those features, for the Inception
Score, without a second pass through the network:

* ``inception``: the standard InceptionV3 pool3 (2048-d) of torch-fidelity, as torchmetrics
  wraps it; values are comparable with published FID/KID numbers. Needs torch-fidelity and its
  weights file (downloaded on first use, or given with `weights_path` on offline machines).
  Logits: its 1008 unbiased logits, as torch-fidelity's Inception Score takes them.
* ``random_cnn``: a small randomly initialised conv net with fixed weights (seed 0). No download,
  fast on CPU: for tests and the embedded dataset. Its values are only comparable between runs
  that use this same extractor, never with papers. Logits: a fixed random linear map of its
  features to 10 "classes".
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn as nn

from src.utils.image_grid import from_uint8_levels, to_uint8_levels
from src.utils.rng import isolated_rng
from src.utils.environment import weights_only_loads

FEATURE_EXTRACTORS = ("inception", "random_cnn")
#: the weights torchmetrics' Inception loads (torch-fidelity's release; the same TF graph's port
#: as pytorch-fid's pt_inception-2015-12-05-6726825d.pth, by its name's hash)
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grey -> (B, 3, H, W); 3-channel images pass unchanged."""
    if images.dim() != 4 or images.size(1) not in (1, 3):
        raise ValueError(f"Expected images of shape (B, 1 or 3, H, W), got {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.size(1) == 1 else images


class PrecomputedFeatures(nn.Module):
    """Identity 'feature network': the metrics receive feature vectors computed beforehand."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class FrozenExtractor(nn.Module):
    """A feature extractor that never trains: no gradients, always in eval mode."""

    num_features: int

    def freeze(self) -> "FrozenExtractor":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FrozenExtractor":
        # A LightningModule's .train() must not switch a metric's network to training mode.
        return super().train(False)


class RandomCNNFeatures(FrozenExtractor):
    """Four stride-2 convs with LeakyReLU; the features are the global average pools of every
    stage, concatenated (32 + 64 + 128 + 256 = 480): early stages carry colour statistics, late
    ones shape, and pooling one stage only would blur one of the two.

    Weights are drawn from a local generator (He-normal, seed 0), so the network is the same in
    every process whatever the global RNG state, and building it draws nothing from that state.
    """

    widths = (32, 64, 128, 256)

    #: classes of the fixed random head that stands in for a classifier (`logits`)
    num_classes = 10

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        stages, in_channels = [], 3
        for width in self.widths:
            # skip_init: nn.Conv2d's own initialisation would draw from the global RNG.
            conv = torch.nn.utils.skip_init(nn.Conv2d, in_channels, width, 4, stride=2, padding=1)
            fan_in = in_channels * 4 * 4
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
            stages.append(nn.Sequential(conv, nn.LeakyReLU(0.2)))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.num_features = sum(self.widths)
        head = torch.Generator().manual_seed(seed + 1)
        self.register_buffer("class_head", torch.randn(self.num_features, self.num_classes, generator=head))
        self.freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # On the 256 levels of an image file, as Inception's input: real images come from files,
        # and a generator's float outputs would otherwise be scored as no saved image is.
        x = from_uint8_levels(to_uint8_levels(to_rgb(images)))
        pooled = []
        for stage in self.stages:
            x = stage(x)
            pooled.append(x.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """A fixed random linear map of the features to 10 "classes" (seed + 1): a download-free
        stand-in classifier for the Inception Score's plumbing."""
        return features @ self.class_head.to(features.dtype)


class InceptionUnavailable(RuntimeError):
    """Inception cannot be built; the message says why and how to fix it with `settings`, the
    config prefix of the caller's extractor settings ("callbacks.fid_kid." in training, "" in
    eval.py). `installed`: whether torch-fidelity is (without it a weights file is of no use)."""

    def __init__(self, reason: str, settings: str = "callbacks.fid_kid.", installed: bool = True):
        self.reason, self.installed = reason, installed
        install = ("install torch-fidelity: `make install-fid` (pip install -r requirements-fid.txt; GPU machines "
                   "only: PyPI's torchvision is a CUDA build and breaks a CPU-only torch)")
        weights_file = (f"on a machine without internet, give the weights file torch-fidelity downloads "
                        f"({INCEPTION_WEIGHTS_URL}, copied from a machine with internet): "
                        f"{settings}feature_extractor_weights_path=/path/to/{INCEPTION_WEIGHTS_FILE}")
        # (the weights file is read by torch-fidelity's code: of no use without it)
        ways = [install, weights_file] if installed else [f"{install}, then, {weights_file}"]
        super().__init__(
            f"The Inception feature extractor for FID/KID is unavailable: {reason}\n"
            "Fix it in one of these ways:\n"
            + "".join(f"  * {way};\n" for way in ways)
            + f"  * or use the download-free extractor: {settings}feature_extractor=random_cnn "
            "(values then not comparable with papers)."
        )


def torch_fidelity_available() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


def check_plain_weights_file(weights_path: str) -> None:
    """torch-fidelity unpickles the weights file with `weights_only=False`, which runs any code a
    tampered file carries; so the file must first load as plain tensors (`weights_only=True`)."""
    if not Path(weights_path).is_file():
        raise InceptionUnavailable(f"weights file not found: {weights_path}")
    try:
        torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InceptionUnavailable(
            f"{weights_path} is not a plain tensor state dict loadable with weights_only=True "
            f"({type(error).__name__}: {error}); use the file torch-fidelity downloads.") from error


def cached_inception_weights() -> Path:
    """Where torch-fidelity downloads the Inception weights: torch.hub's cache (`$TORCH_HOME`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


class InceptionFeatures(FrozenExtractor):
    """InceptionV3 pool3 features (2048-d) as torch-fidelity computes them, through torchmetrics'
    `NoTrainInceptionV3`: it takes uint8 images in [0, 255] and resizes them to 299x299 itself,
    with TF1's bilinear resize as torch-fidelity and the TTUR code do (torchmetrics' default is
    an antialiased resize, which moves FID away from published numbers)."""

    num_features = 2048
    num_classes = 1008

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        if not torch_fidelity_available():
            raise InceptionUnavailable("the package torch-fidelity is not installed.", installed=False)
        if weights_path is not None:
            # (`~` expanded here, where the file is opened, for every caller: a quoted or
            # config-file value reaches the settings as typed)
            weights_path = os.path.expanduser(weights_path)
        cached = cached_inception_weights()
        if weights_path is None and cached.is_file():
            # torch-fidelity unpickles its cached download with weights_only=False too: a file
            # planted in a shared cache ($TORCH_HOME on a cluster) is checked, then read by path.
            # (A first download, fresh from torch-fidelity's release, it loads itself.)
            weights_path = str(cached)
        if weights_path is not None:
            check_plain_weights_file(weights_path)
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            # Its own load of the file is weights-only too: one swapped after the check (a shared
            # cache another user can write) is read no less safely than the check read it.
            with weights_only_loads():
                self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                              feature_extractor_weights_path=weights_path, antialias=False)
        except Exception as error:  # a failed download or an unreadable weights file
            raise InceptionUnavailable(f"loading the weights failed ({type(error).__name__}: {error}).") from error
        self.freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(to_uint8_levels(to_rgb(images)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """torch-fidelity's "logits_unbiased", the Inception Score's: the pool3 features times
        the last layer's weights, without its bias."""
        return features @ self.net.fc.weight.T.to(features.dtype)


def data_feature_extractor(datamodule) -> str:
    """The extractor `auto` means for this data: the DataModule's `feature_extractor` (the shapes'
    random_cnn), else Inception."""
    return getattr(datamodule, "feature_extractor", None) or "inception"


def build_feature_extractor(name: str, weights_path: str | None = None, device: torch.device | str | None = None,
                            settings: str = "callbacks.fid_kid.") -> nn.Module:
    """The named extractor ("inception" or "random_cnn"), frozen, on `device`; errors name the
    caller's settings under the config prefix `settings`.

    Built on a forked CPU RNG: Inception's layers draw their default initialisation before its
    weights load, and built inside a training run (the FID callback's setup, after seeding) those
    draws would move training's random stream, so a run would train differently with FID on."""
    if name not in FEATURE_EXTRACTORS:
        raise ValueError(f"{settings}feature_extractor={name!r} must be one of {', '.join(FEATURE_EXTRACTORS)} "
                         "(or auto).")
    with isolated_rng(torch.device("cpu"), seed=None):
        if name == "random_cnn":
            extractor = RandomCNNFeatures()
        else:
            try:
                extractor = InceptionFeatures(weights_path)
            except InceptionUnavailable as error:
                raise InceptionUnavailable(error.reason, settings, error.installed) from error.__cause__
    return extractor.to(device) if device is not None else extractor
