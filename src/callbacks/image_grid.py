"""Saves sample grids (real / fake / reconstruction per direction) and logs them to the loggers."""
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from src.callbacks.periodic_evaluation import PeriodicEvaluation
from src.data.image_io import save_image
from src.utils.config_checks import require_int
from src.utils.image_grid import make_grid, shrunk_to_side
from src.utils.rng import isolated_rng


class ImageGridCallback(pl.Callback):
    """Every `every_n_iters` training iterations (and at the end), translate a fixed batch of
    `num_images` test images and write `<dirpath>/iter_XXXXXXX.png`.

    `max_side`: each image of the grid scaled down to at most this many px on its longer side
    (null: full size). At 1024 px a CycleGAN grid is 25 megapixels and U-GAT-IT's 43, written
    every few hundred iterations: tens of GB over a run, and as much in the loggers.

    Rows are named in the model's letters, as the references' visualizers name them: with
    data.direction=BtoA, `real_A` is the model's input, the dataset's B images (eval.py's folders
    take the dataset's letters).

    The batch comes from the DataModule's `sample_batch` (the first test images, deterministic
    transform), so successive grids show the same inputs. Sampling draws from its own RNG seeded
    with `seed` (pix2pix's test-time dropout), as the evaluation callbacks do: the grids neither
    move the training's random streams (a run would depend on how often it saved grids) nor
    differ in their noise from one grid to the next.
    """

    def __init__(self, dirpath: str, every_n_iters: int = 500, num_images: int = 4, split: str = "test",
                 seed: int = 0, max_side: int | None = None):
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"callbacks.image_grid.num_images={num_images!r} must be a positive integer "
                             "(the test images in each sample grid); callbacks.image_grid=null turns grids off")
        if isinstance(every_n_iters, bool) or not isinstance(every_n_iters, int) or every_n_iters < 0:
            raise ValueError(f"callbacks.image_grid.every_n_iters={every_n_iters!r} must be an integer >= 0 "
                             "(0: a grid at the end of training only)")
        require_int("callbacks.image_grid.max_side", max_side, allow_none=True,
                    why=" (px of each grid image's longer side; null: full size)")
        self.max_side = max_side
        self.dirpath = Path(dirpath)
        self.every_n_iters, self.num_images, self.split, self.seed = every_n_iters, num_images, split, seed
        self._batch = None
        self._last_saved = -1

    def _sample_batch(self, trainer, pl_module):
        if self._batch is None:
            batch = trainer.datamodule.sample_batch(self.num_images, split=self.split)
            self._batch = {k: v.to(pl_module.device) for k, v in batch.items() if hasattr(v, "to")}
        return self._batch

    @rank_zero_only
    def save(self, trainer, pl_module) -> Path:
        iteration = pl_module.iteration
        with isolated_rng(pl_module.device, self.seed):
            rows = pl_module.sample_images(self._sample_batch(trainer, pl_module))
        grid = make_grid({name: shrunk_to_side(images, self.max_side) for name, images in rows.items()})
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"iter_{iteration:07d}.png"
        save_image(grid, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # Step = iteration, the x-axis of every other metric (global_step counts optimizer steps).
                logger.log_image(key="samples", images=[str(path)], step=iteration)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, iteration, dataformats="HWC")
        self._last_saved = iteration
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        due = self.every_n_iters > 0 and pl_module.iteration % self.every_n_iters == 0
        # The run's last grid too, before the checkpoint written there holds `_last_saved`: made
        # in on_train_end, after it, a resume of the finished run made it again.
        if due or PeriodicEvaluation.training_ends_here(trainer):
            self.save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if pl_module.iteration != self._last_saved:
            self.save(trainer, pl_module)

    def state_dict(self) -> dict:   # a finished run resumed trains nothing and has its last grid
        return {"last_saved": self._last_saved}

    def load_state_dict(self, state_dict: dict) -> None:
        self._last_saved = int(state_dict.get("last_saved", -1))
