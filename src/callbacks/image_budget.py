"""Training length in real images (`max_kimg`), the unit of the ProGAN and StyleGAN papers
(StyleGAN: 25000 kimg), whose batch size changes with the resolution so that no iteration count
says it.

The model counts the real images each iteration loaded on every device (`images_seen`, from
its `loaded_images`: a WGAN critic's several batches and a short last batch of an epoch
included); the callback stops the run after the iteration that reaches the budget. The count
is saved in checkpoints, so a resumed run stops where the whole would have.
"""
from __future__ import annotations

import logging

import pytorch_lightning as pl

from src.utils.config_checks import is_number

log = logging.getLogger(__name__)


class ImageBudget(pl.Callback):
    def __init__(self, max_kimg: float):
        if not is_number(max_kimg) or not max_kimg > 0:
            raise ValueError(f"max_kimg={max_kimg!r} must be a positive number of thousands of images, or null")
        self.max_images = max_kimg * 1000
        # A checkpoint written before the model kept the count held it here: given to the model
        # when training starts, where that checkpoint left the model without one.
        self.restored_images: int | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        # The count is restored by now (except under strategies that restore after setup:
        # on_train_start checks again). Stopped here, Lightning skips the loop and its hooks, as
        # for a run whose max_iters is reached: no evaluation or checkpoint of unchanged weights.
        self.stop_if_spent(trainer, pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        self.stop_if_spent(trainer, pl_module)

    def stop_if_spent(self, trainer, pl_module) -> None:
        """A finished run resumed (the same command again, ckpt_path=auto) stops before its first
        batch and trains nothing."""
        if pl_module.images_seen is None and self.restored_images is not None:
            pl_module.images_seen = self.restored_images
        images = pl_module.images_seen
        if images is not None and images >= self.max_images and not trainer.should_stop:
            log.info("max_kimg=%g was reached before this resume (%d images, iteration %d): nothing to train",
                     self.max_images / 1000, images, pl_module.iteration)
            trainer.should_stop = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The stop is known before the iteration runs: the model decides before its steps whether
        # to log its losses, and logs the last iteration's (decided after, the loggers got the
        # previous logged iteration's values under the last step). The batch still trains.
        if pl_module.images_after(batch) >= self.max_images and not trainer.should_stop:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.images_seen >= self.max_images:
            log.info("Trained on %d images, max_kimg=%g reached at iteration %d", pl_module.images_seen,
                     self.max_images / 1000, pl_module.iteration)

    def load_state_dict(self, state_dict: dict) -> None:
        if "images" in state_dict:
            self.restored_images = int(state_dict["images"])
