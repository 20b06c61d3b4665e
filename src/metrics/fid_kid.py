"""FID and KID of two image sets, from one feature pass per image, DDP-ready.

torchmetrics' FrechetInceptionDistance and KernelInceptionDistance each run their feature
network inside `update()`; used side by side they would push every image through it twice.
`FidKidScorer` runs its extractor once per batch and feeds the feature vectors to both metrics,
whose "feature network" is `PrecomputedFeatures`, an identity with `num_features` (which also
spares torchmetrics its 299x299 dummy forward). The metrics keep their states and their DDP
sync: each rank updates with its shard, `compute()` gathers, and every rank gets the value a
single process gets on the union of the shards.

KID follows the papers (U-GAT-IT, NICE-GAN): unbiased polynomial-kernel MMD (degree 3, coef 1),
mean and std over 50 random subsets of 1000 images, the subset size capped at the number of
images (a test set of 120 uses subsets of 120), reported x100.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.aggregation import SumMetric
from torchmetrics.image.kid import KernelInceptionDistance

from src.metrics.features import PrecomputedFeatures
from src.metrics.inception_score import InceptionScorer
from src.utils.image_grid import require_float_images


class CappedKernelInceptionDistance(KernelInceptionDistance):
    """KID whose subset size is capped at the number of samples (torchmetrics raises instead),
    with subsets drawn from a fixed seed (reproducible, and the training RNG is left untouched).

    The feature lists are concatenated before the DDP gather (`dist_reduce_fx="cat"`), so ranks
    may hold different numbers of batches, and the gathered set is in rank order: with contiguous
    shards that is the single-process order, hence the same subsets and the same value.
    """

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_subset_size = self.subset_size
        self.seed = seed
        # torchmetrics registers these with dist_reduce_fx=None, which gathers list element by
        # element: it needs as many update() calls on every rank and interleaves the ranks.
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Runs after the DDP sync: these are the features of every rank (a list of blocks, or
        # the one tensor the sync concatenated them into). Counted without concatenating: 50k
        # features would be copied, 0.8 GB a side, just to be counted.
        n_real, n_fake = feature_count(self.real_features), feature_count(self.fake_features)
        if min(n_real, n_fake) < 2:
            raise RuntimeError(f"KID needs at least 2 real and 2 fake images, got {n_real} and {n_fake}")
        self.subset_size = self.subset_size_for(n_real, n_fake)
        self.counts = (n_real, n_fake)
        # The subsets come from torch.randperm on the CPU generator: seed only that one
        # (torch.manual_seed would also reseed every GPU's generator, which fork_rng([]) leaves).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.seed)
            mean, std = super().compute()
        if n_real == n_fake == self.subset_size:
            # every subset is both whole sets in another order: the same value, whose sums in
            # another order differed by rounding only (a std of 4e-14 printed beside "it is 0")
            std = torch.zeros_like(std)
        return mean, std

    def subset_size_for(self, n_real: int, n_fake: int) -> int:
        """The subset size KID uses for sets of these sizes: the one asked for, capped at both."""
        return min(self.max_subset_size, n_real, n_fake)


def feature_count(state: list[torch.Tensor] | torch.Tensor) -> int:
    return len(state) if isinstance(state, torch.Tensor) else sum(len(block) for block in state)


class FidKidScorer(nn.Module):
    """FID and KID (x100) between real and generated images in [-1, 1], and with
    `inception_score_splits` the generated images' Inception Score from the same features
    (src/metrics/inception_score.py).

    `update(real=..., fake=...)` once per batch (either may be omitted; `update_features` takes
    features extracted before), then `compute()`:
    ``{"fid", "kid_x100", "kid_std_x100"[, "is", "is_std"]}``. Under DDP every rank calls both;
    `compute()` syncs.
    """

    def __init__(self, feature_extractor: nn.Module, kid_subsets: int = 50, kid_subset_size: int = 1000,
                 kid_seed: int = 0, inception_score_splits: int | None = None):
        super().__init__()
        for key, value, least in (("kid_subset_size", kid_subset_size, 2), ("kid_subsets", kid_subsets, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                # KID's unbiased MMD compares each image with the others of its subset.
                raise ValueError(f"{key}={value!r} must be an integer >= {least} (callbacks.fid_kid.{key} in "
                                 f"training, {key} in eval.py)")
        self.feature_extractor = feature_extractor
        self.num_features = int(feature_extractor.num_features)
        passthrough = PrecomputedFeatures(self.num_features)
        self.fid = FrechetInceptionDistance(feature=passthrough)
        with warnings.catch_warnings():
            # KID keeps every feature vector by design, in float64 (16 MB a side for 1,000 images of
            # Inception's 2048 features, 0.8 GB for FID 50k's samples); torchmetrics warns about it
            # at each construction.
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self.kid = CappedKernelInceptionDistance(feature=passthrough, subsets=kid_subsets,
                                                     subset_size=kid_subset_size, seed=kid_seed)
        self.inception_score = None if inception_score_splits is None else InceptionScorer(
            feature_extractor.num_classes, splits=inception_score_splits, seed=kid_seed)
        # Images holding NaN or inf (a diverged generator), over every rank: their features would
        # make FID's eigendecomposition crash the process (a NaN matrix in MKL), or, through
        # Inception's uint8 input, pass as black images with a plausible score.
        self.non_finite = SumMetric()
        self.small_sets_told: set[tuple[int, int]] = set()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        # float64: FID accumulates sums of outer products, KID raises to the third power. On the
        # scorer's device: images of a model on Apple's MPS are scored on the CPU (no float64).
        return self.feature_extractor(images.to(self.fid.real_features_sum.device)).double()

    def update(self, real: torch.Tensor | None = None, fake: torch.Tensor | None = None) -> None:
        for images, what in ((real, "FID/KID (real images)"), (fake, "FID/KID (fake images)")):
            if images is not None:
                require_float_images(images, what)
        for images, is_real in ((real, True), (fake, False)):
            if images is not None:
                self.non_finite.update((~torch.isfinite(images).flatten(1).all(1)).sum())
                self.update_features(self.features(images), real=is_real)

    def update_features(self, features: torch.Tensor, real: bool) -> None:
        """`update` with feature vectors `features()` gave before (a fixed real set's, kept)."""
        self.fid.update(features, real=real)
        self.kid.update(features, real=real)
        if not real and self.inception_score is not None:
            self.inception_score.update(self.feature_extractor.logits(features))

    def _prepare_empty_rank(self) -> None:
        """A rank whose shard was empty must still take part in the gather with states of the
        right shape: an empty (0, F) float64 block, and FID's output dtype (set by update())."""
        empty = torch.empty(0, self.num_features, dtype=torch.float64, device=self.fid.real_features_sum.device)
        for state in (self.kid.real_features, self.kid.fake_features):
            if not state:
                state.append(empty)
        if not hasattr(self.fid, "orig_dtype"):
            self.fid.orig_dtype = torch.float64

    def compute(self) -> dict[str, float]:
        """The scores; every one NaN, with a warning, where an image held NaN or inf."""
        self.non_finite.update(0)   # a rank without images still joins the sum
        count = int(self.non_finite.compute())
        if count:
            rank_zero_warn(f"{count} image(s) hold NaN or inf values (a diverged generator?): FID, KID"
                           f"{' and the Inception Score' if self.inception_score is not None else ''} are NaN")
            names = ["fid", "kid_x100", "kid_std_x100"] + (["is", "is_std"] if self.inception_score is not None else [])
            return dict.fromkeys(names, math.nan)
        self._prepare_empty_rank()
        kid_mean, kid_std = self.kid.compute()
        self.tell_of_small_sets(self.kid.counts)
        scores = {"fid": float(self.fid.compute()),
                  "kid_x100": 100.0 * float(kid_mean),
                  "kid_std_x100": 100.0 * float(kid_std)}
        if self.inception_score is not None:
            scores.update(self.inception_score.compute(device=self.fid.real_features_sum.device))
        return scores

    def tell_of_small_sets(self, counts: tuple[int, int]) -> None:
        """Said once per pair of counts, as information (it is the papers' own protocol):
        - FID over fewer images than features (the unpaired test sets: 100-500 images against
          Inception's 2048) fits singular covariances, and its bias grows as the count falls:
          such FIDs compare only at equal counts;
        - KID's subsets, capped at the images there are, are then each whole set in another
          order where both counts are equal: every subset gives one value, and the std is 0."""
        if counts in self.small_sets_told:
            return
        self.small_sets_told.add(counts)
        if min(counts) < self.num_features:
            rank_zero_info(f"FID over {counts[0]} real and {counts[1]} generated images, fewer than the "
                           f"{self.num_features} features: it is biased upward, more so the fewer the images, so "
                           f"compare it only between runs scored on the same number of images (KID is unbiased)")
        if counts[0] == counts[1] and self.kid.subset_size == counts[0]:   # (as compute() capped it)
            rank_zero_info(f"KID's subsets of {counts[0]} are both whole sets of {counts[0]} images: each gives the same "
                           f"value, so kid_std_x100 is 0 (kid_subset_size below {counts[0]} gives a spread)")

    def reset(self) -> None:
        self.fid.reset()
        self.kid.reset()
        self.non_finite.reset()
        if self.inception_score is not None:
            self.inception_score.reset()
