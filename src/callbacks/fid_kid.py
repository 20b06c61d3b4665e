"""FID/KID of the translations on the fixed evaluation set during training, with a best-FID
checkpoint (its schedule and evaluation set: src/callbacks/periodic_evaluation.py).

Every `every_n_iters` training iterations and at the end of training, for each direction the
model supports: real target-domain images vs translations of the source-domain images of the
DataModule's test split (AtoB: real B vs translate(A); BtoA: real A vs translate(B)). Logged as
`eval/fid_AtoB`, `eval/kid_x100_AtoB`, `eval/kid_std_x100_AtoB`, ... and the means over the
directions `eval/fid`, `eval/kid_x100` (the value to give `optimized_metric` or a monitor).
A noise-to-image model (GAN, DCGAN, WGAN...) has one stream instead, `samples`: the real test
images vs as many samples, with the test images' labels when conditional (`eval/fid_samples`),
and the samples' Inception Score (`eval/is_samples`, `eval/is_std_samples`; its classifier is the
feature extractor's: Inception's logits, or random_cnn's stand-in). On labelled data of two or
more classes the samples are also scored by a classifier of the data's classes, trained on its
training images when the fit starts (`eval/cls_is_samples`, `eval/cls_acc_fake_samples` ...;
src/metrics/image_classifier.py).

The real images' features are extracted at the fit's first evaluation and kept (on the CPU,
8 bytes per feature per image), so later evaluations pass only the generated images through the
feature network.

Under DDP each rank translates a contiguous block of the evaluation set (no padding, so no image
counts twice) and the torchmetrics states are gathered, so every rank gets the single-process
value, and every rank takes part in saving the best-FID checkpoint (saving has a barrier). The
exception is a model that samples with random draws per translation, pix2pix's test-time
dropout: every rank starts its block from the same seed, so its images get other dropout masks
than in one process and its score is another draw of the same distribution (the noise models'
latents are seeded per item, so they are exact).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from src.metrics.features import build_feature_extractor, data_feature_extractor
from src.metrics.fid_kid import FidKidScorer
from src.metrics.image_classifier import ClassifierScorer, check_classifier_settings, classifier_of_the_data
from src.models.divergence import refuse_saving_non_finite
from src.callbacks.periodic_evaluation import PeriodicEvaluation
from src.models.noise_base import SAMPLES
from src.utils.accelerator import float64_device
from src.utils.directions import DIRECTIONS
from src.utils.metric_publishing import publish_metrics, publish_summary


def built_rank_zero_first(trainer: pl.Trainer, build, what: str):
    """`build()` on rank zero, then on each other node's first rank, then on the other ranks:
    what it downloads (Inception's weights, into torch.hub's cache) is fetched once per cache,
    not by every rank at once (a node-local cache is filled once on its node); and where a rank
    fails, every rank stops with it, where the others would wait in their next collective until
    the process group timed out. (On one device the decisions are this process's own.)"""
    built, failure = None, None
    own_turn = 0 if trainer.is_global_zero else 1 if trainer.local_rank == 0 else 2
    for turn in range(3):
        if turn == own_turn:
            try:
                built = build()
            except Exception as error:
                failure = error
        if not trainer.strategy.reduce_boolean_decision(failure is None, all=True):
            raise failure or RuntimeError(f"Another rank could not build {what} (its error is in its output)")
    return built


class FidKidCallback(PeriodicEvaluation):
    """FID and KID x100 of the translations, per direction, every `every_n_iters` iterations.

    Args:
        every_n_iters: evaluation period in training iterations (0: only at the end).
        feature_extractor: "inception" (comparable with papers; needs torch-fidelity),
            "random_cnn" (no download; comparable only between runs using it) or "auto": the
            DataModule's `feature_extractor` attribute, else inception.
        feature_extractor_weights_path: local InceptionV3 weights for machines without internet.
        max_images: evaluate on the first N test items (null: the whole test split).
        batch_size: evaluation batch size (null: the DataModule's eval batch size).
        directions: directions to evaluate; those the model cannot translate (pix2pix: BtoA)
            are skipped with a note.
        save_best: write `best_fid.ckpt` whenever `eval/fid` improves.
        dirpath: folder of best_fid.ckpt (null: the checkpoint callback's folder).
        kid_subsets, kid_subset_size: KID protocol (50 subsets of 1000, capped at the set size).
        inception_score: also score a noise-to-image model's samples with the Inception Score
            (from the FID features: no extra network pass); inception_score_splits: its parts (10).
        classifier_score: on labelled data of 2+ classes, also score the samples with a classifier
            of the classes trained on up to `classifier_max_images` training images for
            `classifier_epochs` epochs at the start of the fit (its Inception Score, and its
            accuracy on real images and, for a conditional model, on the samples); kept in the
            checkpoints, and taken back by a resume under the same settings.
    """

    config_key = "callbacks.fid_kid"
    metric_prefix = "eval/"

    def __init__(self, every_n_iters: int = 5000, feature_extractor: str = "auto",
                 feature_extractor_weights_path: str | None = None, max_images: int | None = None,
                 batch_size: int | None = None, directions=DIRECTIONS, save_best: bool = True,
                 dirpath: str | None = None, kid_subsets: int = 50, kid_subset_size: int = 1000, seed: int = 0,
                 inception_score: bool = True, inception_score_splits: int = 10, classifier_score: bool = True,
                 classifier_max_images: int = 10000, classifier_epochs: int = 10):
        super().__init__(every_n_iters, max_images, batch_size, seed)
        self.directions = tuple(str(d) for d in directions)
        unknown = [d for d in self.directions if d not in DIRECTIONS]
        if unknown or not self.directions:
            raise ValueError(f"{self.config_key}.directions={list(self.directions)} must be a non-empty subset of "
                             f"{list(DIRECTIONS)}")
        self.feature_extractor = feature_extractor
        self.feature_extractor_weights_path = feature_extractor_weights_path
        self.save_best, self.dirpath = save_best, dirpath
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.best_fid = math.inf
        self.best_iteration = -1
        # What an FID value depends on (the features, the test images, the directions averaged),
        # as `setup` resolves them: a resumed best of another measure is no bar to beat.
        self.measured: dict = {}
        self.scorer: FidKidScorer | None = None
        self.inception_score, self.inception_score_splits = bool(inception_score), inception_score_splits
        self.classifier_score = bool(classifier_score)
        self.classifier_max_images, self.classifier_epochs = classifier_max_images, classifier_epochs
        self.classifier: ClassifierScorer | None = None
        self._classifier_due = False   # to be built when the fit starts, after a checkpoint's state is read
        self._recorded_classifier: dict | None = None   # the one of the checkpoint resumed from
        self._supported: tuple[str, ...] | None = None
        # Per stream, this rank's real-image features batch by batch (on the CPU), from the first
        # evaluation of the fit: the real images of the evaluation set do not change, so later
        # evaluations run the extractor on the generated images only.
        self._real_features: dict[str, list[torch.Tensor]] = {}

    def resolve_feature_extractor(self, trainer: pl.Trainer) -> str:
        if self.feature_extractor != "auto":
            return self.feature_extractor
        return data_feature_extractor(trainer.datamodule)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._real_features = {}   # as the evaluation loader: a new fit may bring other data or ranks
        if stage != "fit" or not self.enabled or self.scorer is not None:
            return
        if not self.supported_directions(pl_module):   # before building a feature extractor for nothing
            if not pl_module.evaluation_streams(DIRECTIONS)[0]:   # series (RGAN): nothing to warn about
                rank_zero_info(f"FidKidCallback off: {type(pl_module).__name__} makes no images to score.")
            else:
                rank_zero_warn(f"FidKidCallback disabled: {type(pl_module).__name__} makes no images to score for "
                               f"the configured directions {list(self.directions)}.")
            self.enabled = False
            return
        # Built here, not at the first evaluation: a missing Inception fails the run at once.
        name = self.resolve_feature_extractor(trainer)
        # What the FIDs of this fit measure, resolved ("auto", max_images past the test split's
        # size): checked against a resumed best's (callbacks' state is loaded after setup).
        # (the weights file `~` expanded, as records before it was expanded where opened hold it)
        weights_path = self.feature_extractor_weights_path
        self.measured = {"feature_extractor": name,
                         "feature_extractor_weights_path": os.path.expanduser(weights_path) if weights_path else None,
                         "images": len(self.evaluation_dataset(trainer)[1]),
                         "directions": list(self.supported_directions(pl_module))}
        extractor = built_rank_zero_first(trainer, lambda: build_feature_extractor(
            name, self.feature_extractor_weights_path), "the feature extractor")
        # The Inception Score only for a noise-to-image model's one stream, the samples.
        samples = self.inception_score and SAMPLES in self.supported_directions(pl_module)
        self.scorer = FidKidScorer(extractor, kid_subsets=self.kid_subsets, kid_subset_size=self.kid_subset_size,
                                   kid_seed=self.seed, inception_score_splits=self.inception_score_splits if samples
                                   else None)
        rank_zero_info(f"FID/KID: {name} features ({extractor.num_features}-d) every {self.every_n_iters} iterations")
        # The classifier is built when training starts: a resumed checkpoint's, read after setup,
        # is taken back rather than trained again. Its settings are checked here, at once.
        self._classifier_due = (self.classifier_score and SAMPLES in self.supported_directions(pl_module)
                                and check_classifier_settings(trainer.datamodule, self.classifier_max_images,
                                                              self.classifier_epochs, self.classifier_key))

    def build_classifier(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ClassifierScorer | None:
        """The classifier of the data's classes (None for unlabelled or one-class data): rank zero
        trains it, and the other ranks take its weights. Where any rank fails (rank zero on an
        unreadable image, every rank on a bad setting), every rank stops: the others would wait
        for its weights, or it for theirs, for good."""
        scorer = built_rank_zero_first(trainer, lambda: classifier_of_the_data(
            trainer.datamodule, self.classifier_max_images, self.classifier_epochs, self.inception_score_splits,
            conditional=bool(pl_module.num_classes), key=self.classifier_key, trained=trainer.is_global_zero,
            recorded=self._recorded_classifier), "the classifier of the data's classes")
        if scorer is not None and trainer.world_size > 1:
            scorer.net.load_state_dict(trainer.strategy.broadcast(scorer.net.state_dict(), src=0))
        return scorer

    @property
    def classifier_key(self) -> str:
        return f"{self.config_key}.classifier_max_images"

    def supported_directions(self, pl_module: pl.LightningModule) -> tuple[str, ...]:
        """What is scored: the configured directions the model translates, or a noise-to-image
        model's samples (`evaluation_streams`)."""
        if self._supported is None:
            self._supported, skipped = pl_module.evaluation_streams(self.directions)
            for direction, reason in skipped.items():
                rank_zero_info(f"FID/KID: skipping {direction} ({type(pl_module).__name__}: {reason})")
        return self._supported

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        directions = self.supported_directions(pl_module)
        if not directions:
            rank_zero_warn("FidKidCallback disabled: the model translates none of the configured directions.")
            self.enabled = False
            return None
        device = float64_device(pl_module.device)   # the images' features are scored there
        scorer = self.scorer.to(device)
        metrics = {}
        for direction in directions:
            scorer.reset()
            classifier = self.classifier.to(device) if self.classifier and direction == SAMPLES else None
            kept = self._real_features.get(direction)
            extracted = []
            for index, batch in enumerate(self.distinct_batches(trainer)):
                real, fake = (images.to(device) for images in pl_module.evaluation_pair(batch, direction))
                if kept is None:
                    real_features = scorer.features(real) if len(real) else None
                    extracted.append(None if real_features is None else real_features.cpu())
                else:
                    real_features = None if kept[index] is None else kept[index].to(device)
                # A batch past one domain's distinct images has none of them left.
                if real_features is not None:
                    scorer.update_features(real_features, real=True)
                if len(fake):
                    scorer.update(fake=fake)
                if classifier is not None:
                    classifier.update_real(real, batch["label"].to(device))
                    classifier.update_fake(fake, batch["label"].to(device))
            if kept is None:
                self._real_features[direction] = extracted
            scores = {**scorer.compute(), **(classifier.compute() if classifier is not None else {})}
            for name, value in scores.items():
                metrics[f"eval/{name}_{direction}"] = value
            if classifier is not None:
                classifier.reset()
        metrics["eval/fid"] = sum(metrics[f"eval/fid_{d}"] for d in directions) / len(directions)
        metrics["eval/kid_x100"] = sum(metrics[f"eval/kid_x100_{d}"] for d in directions) / len(directions)
        scorer.reset()  # frees the stored KID features until the next evaluation
        # Inception's weights and its float64 sums (about 160 MB) leave the device until the next
        # evaluation: training's peak would carry them (the classifier's likewise).
        self.scorer.to("cpu")
        if self.classifier is not None:
            self.classifier.to("cpu")
        publish_metrics(trainer, metrics, step=pl_module.iteration)
        return metrics

    def after_evaluation(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                         metrics: dict[str, float] | None) -> None:
        if not metrics:
            return
        if not pl_module.samples_at_full_size():
            # A growing network's 8-256 px stage, upsampled: its FID measures the resolution gap as
            # much as the samples, and the papers rank the full-size network only.
            rank_zero_info(f"FID {metrics['eval/fid']:.4f} at iteration {pl_module.iteration} is of a network not "
                           "at full size yet: not a candidate for best_fid.ckpt")
            return
        self.save_if_best(trainer, pl_module, metrics["eval/fid"])

    def best_checkpoint_path(self, trainer: pl.Trainer) -> Path:
        dirpath = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None) \
            or Path(trainer.default_root_dir) / "checkpoints"
        return Path(dirpath) / "best_fid.ckpt"

    def save_if_best(self, trainer: pl.Trainer, pl_module: pl.LightningModule, fid: float) -> None:
        """Record a new best FID (the summary's, final_metrics.json's) and, with `save_best`, write
        best_fid.ckpt; without it the best is still recorded."""
        # Every rank computed the same FID from the gathered states; rank zero's decision is
        # broadcast anyway, as every rank must enter save_checkpoint (it holds a barrier).
        improved = trainer.strategy.broadcast(bool(fid < self.best_fid), src=0)
        if not improved:
            return
        self.best_fid, self.best_iteration, saved = float(fid), pl_module.iteration, ""
        if self.save_best:
            path = self.best_checkpoint_path(trainer)
            # The generators can be finite (a good FID) while a discriminator that stepped after
            # them is not: such a file would resume a diverged run.
            refuse_saving_non_finite(pl_module, str(path) if path.is_file() else None)
            trainer.save_checkpoint(path, weights_only=False)  # full state: a best checkpoint can be resumed
            saved = f", saved {path}"
        rank_zero_info(f"FID {fid:.4f} at iteration {pl_module.iteration}: new best{saved}")
        publish_summary(trainer, {"best_fid": self.best_fid, "best_fid_iteration": self.best_iteration})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._classifier_due and self.classifier is None:
            self.classifier = self.build_classifier(trainer, pl_module)
            self._recorded_classifier = None
        if self.best_iteration > 0 and not pl_module.samples_at_full_size(self.best_iteration):
            # A checkpoint from before growing models' small stages were left out of the ranking.
            rank_zero_warn(f"The best FID so far ({self.best_fid:.4f}, iteration {self.best_iteration}) is of a network "
                           "not at full size yet: the best starts over among full-size evaluations, and "
                           "best_fid.ckpt is replaced at the next one")
            self.best_fid, self.best_iteration = math.inf, -1

    # ----- the best value survives a resume ----------------------------------------------
    def state_dict(self) -> dict:
        state = {**super().state_dict(), "best_fid": self.best_fid, "best_iteration": self.best_iteration,
                 "measure": self.measured}
        if self.classifier is not None:
            state["classifier"] = self.classifier.record()
        elif self._recorded_classifier is not None:   # saved before the fit took it back (resumed at its end)
            state["classifier"] = self._recorded_classifier
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.best_fid = float(state_dict.get("best_fid", math.inf))
        self.best_iteration = int(state_dict.get("best_iteration", -1))
        self._recorded_classifier = state_dict.get("classifier")   # (checkpoints before it was kept: none)
        saved = state_dict.get("measure")   # older checkpoints have none: taken as the same
        if saved and self.measured and saved != self.measured and self.best_iteration >= 0:
            changed = ", ".join(f"{key} {saved.get(key)!r} -> {value!r}"
                                for key, value in self.measured.items() if saved.get(key) != value)
            rank_zero_warn(f"The best FID so far ({self.best_fid:.4f}, iteration {self.best_iteration}) was measured "
                           f"with other settings ({changed}), so this run's FIDs do not compare with it: the best "
                           "starts over, and best_fid.ckpt is replaced at the next evaluation")
            self.best_fid, self.best_iteration = math.inf, -1
