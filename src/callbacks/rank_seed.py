"""A different random stream on each DDP rank.

Every rank runs the same config and seeds with the same `seed`, which is what the initial
weights need (DDP then broadcasts rank 0's anyway). Left like that, the ranks would also make
the same image-pool and dropout decisions for their different images: N ranks would train less
varied than one process running N times as long. (Flips, crops and B partners come from each
training item's own seed, src/data/epoch_order.py, so they differ between ranks anyway.)

At train start (after a resume has put rank 0's saved RNG states on every rank), each rank
r > 0 reseeds python, numpy and torch from a seed drawn from rank 0's stream (read without
advancing it, and broadcast) and mixed with r: deterministic, and distinct per rank. The draw is
rank 0's because under srun or torchrun each rank seeds itself, and with `seed=null` each draws
its own seed: only rank 0's is recorded, and `seed=N` must repeat every rank. Rank 0 (and so
every single-process run) keeps its stream untouched, so seeded runs and resumes stay bit-exact.
"""
import pytorch_lightning as pl

from src.utils.rng import rank_zero_seed

# A large odd multiplier spreads consecutive ranks far apart in seed space.
_RANK_STRIDE = 1_000_003


class RankSeed(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size <= 1:
            return
        drawn = rank_zero_seed(trainer.strategy)
        if trainer.global_rank > 0:
            seed = (drawn + _RANK_STRIDE * trainer.global_rank) % 2**32
            pl.seed_everything(seed, workers=True, verbose=False)
