"""RGAN and RCGAN (Esteban, Hyland & Rätsch, 2017): a recurrent generator and discriminator
over time series, the discriminator deciding real or fake at every time step (the adversarial
loss is the per-step cross-entropy, averaged over steps), and, for RCGAN (`model.num_classes` >
0), a condition concatenated to every step of both networks' inputs.

The noise-to-sample GAN of src/models/noise_gan.py on sequences: the same iteration (n_critic
critic steps on their own real batches, then a generator step), objectives and checks; a
latent is a fresh `latent_dim` noise vector per time step, (T * latent_dim) numbers.
Evaluation: the sample MMD callback (src/callbacks/sample_mmd.py), as the paper evaluates with
MMD; sample grids plot the series (src/utils/sequence_plot.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from src.models.base import build_net
from src.models.noise_gan import NoiseGAN
from src.utils.config_checks import require_int
from src.utils.sequence_plot import plot_series


class RGAN(NoiseGAN):
    SIZE_HPARAM = "seq_len"

    def __init__(self, generator: dict, discriminator: dict, loss: dict, optimizer: dict, lr_schedule: dict,
                 init: dict, latent_dim: int = 5, num_classes: int = 0, n_critic: int = 1, seq_len: int = 30,
                 channels: int = 1, latent_distribution: str = "normal", test_time_batch_stats: bool = False,
                 reference_batch_size: int = 64):
        require_int("model.seq_len", seq_len)
        super().__init__(generator, discriminator, loss, optimizer, lr_schedule, init, latent_dim=latent_dim,
                         num_classes=num_classes, n_critic=n_critic, image_size=seq_len, channels=channels,
                         latent_distribution=latent_distribution, test_time_batch_stats=test_time_batch_stats,
                         reference_batch_size=reference_batch_size)

    @classmethod
    def data_kind(cls) -> tuple[type, str]:
        from src.data.sequences import SequenceDataModule   # keeps data code out of the model import

        return SequenceDataModule, "a sequence dataset: use data=sines (embedded) or data=csv_series"

    def sample_shape(self, size: int, channels: int) -> tuple[int, ...]:
        return size, channels

    def build_generator(self, input_dim: int) -> nn.Module:
        seq_len, channels = self.image_shape
        return build_net({**self.hparams.generator, "latent_dim": input_dim, "channels": channels,
                          "seq_len": seq_len, "num_classes": self.num_classes}, self.net_init("generator"),
                         "model.generator")

    def build_discriminator(self) -> nn.Module:
        return build_net({**self.hparams.discriminator, "channels": self.image_shape[1],
                          "num_classes": self.num_classes}, self.net_init("discriminator"), "model.discriminator")

    def shape_mismatch(self, batch: dict) -> str:
        seq_len, channels = self.image_shape
        got = "x".join(map(str, batch["A"].shape[1:]))
        return (f"The generator makes series of {seq_len} steps x {channels} channels (model.seq_len x "
                f"model.channels), but the data gives {got}: make data.seq_len and data.channels match")

    def sample_latent(self, n: int) -> tuple[torch.Tensor, dict | None]:
        return self.noise(n, self.image_shape[0] * self.latent_dim), None

    def latent_of_item(self, rng: torch.Generator) -> torch.Tensor:
        return self.noise(self.image_shape[0] * self.latent_dim, rng=rng)

    def evaluation_streams(self, configured: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
        return (), {"samples": "time series, not images (callbacks.sample_mmd scores them)"}

    def sample_images(self, batch: dict) -> dict[str, torch.Tensor]:
        """Plots of the test series and of samples (of the same conditions)."""
        return {name: plot_series(series) for name, series in super().sample_images(batch).items()}
