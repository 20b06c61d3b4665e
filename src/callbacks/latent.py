"""Latent-space analysis of NICE-GAN (and any model with `encode(x, domain)`): the MMD between
the latent codes of the two domains over training, and a t-SNE map of them.

Every `every_n_iters` training iterations and at the end: encode the A and B images of the first
`max_images` test items, log `latent/mmd2` (unbiased Gaussian-kernel MMD^2, median-heuristic
bandwidth: see src/metrics/mmd.py), and write `latent_tsne_iter_XXXXXXX.png` (t-SNE of both
domains' codes, coloured by domain) to `dirpath` and to the TensorBoard / wandb loggers.

Codes are pooled over space by default, each channel's mean and standard deviation (`pool:
mean_std`, (B, C, h, w) -> (B, 2C)): a flattened NICE-GAN code at 256 px has 128 x 64 x 64 = 0.5M
values per image (0.8 GB for 2 x 200 images, all gathered to every rank), and in that many
dimensions pairwise distances concentrate, leaving the kernel little to see. The means alone
(`pool: mean`) see nothing of CycleGAN's and U-GAT-IT's residual blocks: each block adds an
instance-normalised (zero-mean) map to its input, so the code's channel means are those of the
blocks' input. `pool: flatten` keeps the whole code (small images).

Under DDP each rank encodes a contiguous block of the set; the codes are gathered (uneven blocks
padded for the transfer and trimmed after) in rank order, i.e. the single-process order, so every
rank computes the single-process MMD; rank zero draws the map.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torchmetrics.utilities.distributed import gather_all_tensors

from src.data.image_io import save_image
from src.callbacks.periodic_evaluation import PeriodicEvaluation
from src.utils.metric_publishing import publish_metrics
from src.metrics.mmd import mmd2_unbiased
from src.utils.accelerator import float64_device
from src.utils.config_checks import is_number

POOLS = ("mean_std", "mean", "flatten")
DOMAIN_COLORS = {"A": (31, 119, 180), "B": (255, 127, 14)}  # blue, orange


def pool_latent(z: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, C, h, w) code -> (B, 2C) by each channel's spatial mean and standard deviation
    (`mean_std`), (B, C) by its mean, or (B, C*h*w) flattened."""
    if pool == "mean" and z.dim() > 2:
        return z.flatten(2).mean(2)
    if pool == "mean_std" and z.dim() > 2:
        std, mean = torch.std_mean(z.flatten(2), 2, correction=0)
        return torch.cat([mean, std], 1)
    return z.flatten(1)


def several_ranks() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (sizes may differ, zero included) in rank order."""
    if not several_ranks():
        return rows
    return torch.cat(gather_all_tensors(rows.contiguous()))


def widths_on_every_rank(widths: set[int], device: torch.device) -> set[int]:
    """The narrowest and widest of every rank's code widths (`widths`: this rank's): ranks decide
    together whether the codes mix widths, since one raising alone would leave the others waiting
    in the gather."""
    if not several_ranks():
        return widths
    span = torch.tensor([min(widths), max(widths)], device=device)
    return {int(width) for width in torch.cat(gather_all_tensors(span)).tolist()}


def tsne_2d(points: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """2-D t-SNE embedding (scikit-learn, PCA init, fixed random_state)."""
    from sklearn.manifold import TSNE

    # scikit-learn requires perplexity < n_samples; a third of the sample keeps the
    # neighbourhoods meaningful on small evaluation sets.
    perplexity = max(1.0, min(float(perplexity), (len(points) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(points)


def render_scatter(points: np.ndarray, domains: list[str], title: str, size: int = 512) -> np.ndarray:
    """Scatter plot of 2-D points coloured by domain, with a legend: an HxWx3 uint8 image.
    (Drawn with PIL: matplotlib is not a dependency.)"""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    top, margin, radius = 40, 16, 3
    low, high = points.min(0), points.max(0)
    span = np.where(high - low > 0, high - low, 1.0)
    xy = (points - low) / span
    xy[:, 0] = margin + xy[:, 0] * (size - 2 * margin)
    xy[:, 1] = top + (1 - xy[:, 1]) * (size - top - margin)
    for (x, y), domain in zip(xy, domains):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=DOMAIN_COLORS[domain])
    draw.text((margin, 6), title, fill="black", font=font)
    for i, domain in enumerate(DOMAIN_COLORS):
        x = margin + 110 * i
        draw.ellipse((x, 26 - radius, x + 2 * radius, 26 + radius), fill=DOMAIN_COLORS[domain])
        draw.text((x + 10, 20), f"domain {domain} ({domains.count(domain)})", fill="black", font=font)
    return np.asarray(image)


class LatentCallback(PeriodicEvaluation):
    """MMD^2 between the two domains' latent codes and their t-SNE map, over training.

    Args:
        dirpath: folder of the t-SNE PNGs (null: <default_root_dir>/latent).
        every_n_iters: period in training iterations (0: only at the end).
        max_images: test items encoded (each gives one A and one B image; null: all).
        batch_size: encoding batch size (null: the DataModule's eval batch size).
        tsne: draw the t-SNE map (the MMD is always logged).
        perplexity: t-SNE perplexity (capped for small sets).
        pool: "mean_std" (each channel's spatial mean and standard deviation, (B, 2C)), "mean"
            (B, C) or "flatten" (B, C*h*w).
    """

    config_key = "callbacks.latent"
    metric_prefix = "latent/"

    def __init__(self, dirpath: str | None = None, every_n_iters: int = 5000, max_images: int | None = 200,
                 batch_size: int | None = None, tsne: bool = True, perplexity: float = 30.0, pool: str = "mean_std",
                 seed: int = 0):
        super().__init__(every_n_iters, max_images, batch_size, seed)
        if pool not in POOLS:
            raise ValueError(f"{self.config_key}.pool={pool!r} must be one of {', '.join(POOLS)}")
        if not is_number(perplexity) or perplexity <= 0:   # tsne_2d caps it for small sets, never raises it
            raise ValueError(f"{self.config_key}.perplexity={perplexity!r} must be a number > 0 (t-SNE's "
                             "effective number of neighbours; 5-50 are usual)")
        self.dirpath = Path(dirpath) if dirpath else None
        self.tsne, self.perplexity, self.pool = tsne, perplexity, pool
        self._latent_dim: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._latent_dim = None   # a new fit may bring another model
        # (a model with encode() may still lack the latent for some networks: `has_latent`)
        encodes = callable(getattr(pl_module, "encode", None)) and getattr(pl_module, "has_latent", lambda: True)()
        if stage == "fit" and not encodes:
            # Said, not warned: the default callbacks hold this one for every model, and a
            # warning on every pix2pix or noise-model run would teach users to skip warnings.
            rank_zero_info(f"LatentCallback off: {type(pl_module).__name__}'s networks have no shared latent space "
                           "(encode(x, domain)); the latent t-SNE/MMD applies to unpaired models such as CycleGAN "
                           "(ResNet generators), U-GAT-IT and NICE-GAN.")
            self.enabled = False
            return   # before the evaluation set's checks: a test split it would refuse is not its business
        super().setup(trainer, pl_module, stage)
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / "latent"

    def encode(self, pl_module: pl.LightningModule, images: torch.Tensor, domain: str) -> torch.Tensor:
        with torch.no_grad():
            networks_device = next(pl_module.parameters()).device
            code = pool_latent(pl_module.encode(images.to(networks_device), domain), self.pool)
            return code.to(float64_device(pl_module.device)).double()

    def local_latents(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        """This rank's codes per domain, (n_rank, D) each; (0, D) for an empty block, whose D
        comes from encoding the first item (every rank must gather tensors of one width)."""
        codes = {"A": [], "B": []}
        for batch in self.distinct_batches(trainer):   # each test image once
            for domain in codes:
                if len(batch[domain]):
                    codes[domain].append(self.encode(pl_module, batch[domain], domain))
        if self._latent_dim is None:   # the width of a code; encoded for it only where this rank has none
            encoded = [rows[0] for rows in codes.values() if rows]
            self._latent_dim = (encoded[0] if encoded else
                                self.encode(pl_module, self.first_item(trainer, pl_module)["A"], "A")).shape[1]
        local = {row.shape[1] for rows in codes.values() for row in rows} | {self._latent_dim}
        if widths := sorted(widths_on_every_rank(local, pl_module.device) - {self._latent_dim}):
            # Codes flattened from maps of other sizes: one space holds no distance between them.
            raise ValueError(f"callbacks.latent.pool={self.pool}: the test images encode to codes of "
                             f"{[self._latent_dim, *widths]} values (images of other sizes, as preprocess=none or "
                             f"scale_width keep them); pool=mean_std or mean gives every image one width")
        empty = torch.empty(0, self._latent_dim, dtype=torch.float64, device=float64_device(pl_module.device))
        return {domain: torch.cat(rows) if rows else empty for domain, rows in codes.items()}

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        local = self.local_latents(trainer, pl_module)
        latents = {domain: gather_rows(rows).cpu() for domain, rows in local.items()}
        mmd2 = mmd2_unbiased(latents["A"], latents["B"])
        publish_metrics(trainer, {"latent/mmd2": mmd2}, step=pl_module.iteration)
        if self.tsne and trainer.is_global_zero:
            self.save_tsne(trainer, pl_module.iteration, latents, mmd2)

    def save_tsne(self, trainer: pl.Trainer, iteration: int, latents: dict[str, torch.Tensor],
                  mmd2: float) -> Path | None:
        """The map's PNG (also sent to wandb / TensorBoard); None, said in the log, where the codes
        admit no map: scikit-learn raises on NaN, and crashes the process (PCA init divides by a
        zero spread) where every code is the same, as a collapsed encoder's are."""
        points = torch.cat([latents["A"], latents["B"]]).numpy()
        if not np.isfinite(points).all():
            rank_zero_warn(f"LatentCallback: the latent codes at iteration {iteration} hold NaN or inf (the encoder "
                           f"diverged): no t-SNE map")
            return None
        if np.ptp(points, axis=0).max() == 0:
            rank_zero_warn(f"LatentCallback: every latent code at iteration {iteration} is the same (a collapsed "
                           f"encoder): no t-SNE map")
            return None
        domains = ["A"] * len(latents["A"]) + ["B"] * len(latents["B"])
        embedding = tsne_2d(points, self.perplexity, self.seed)
        image = render_scatter(embedding, domains, f"latent t-SNE, iteration {iteration}, MMD^2 = {mmd2:.4f}")
        path = self.dirpath / f"latent_tsne_iter_{iteration:07d}.png"
        save_image(image, path)   # (whole or not at all, as every image the runs write)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="latent_tsne", images=[str(path)], step=iteration)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("latent_tsne", image, iteration, dataformats="HWC")
        return path
