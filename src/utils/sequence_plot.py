"""Series as small line plots, so sample grids (src/callbacks/image_grid.py) show sequences too."""
from __future__ import annotations

import torch

#: line colours of the first channels (RGB in [-1, 1]); later channels cycle through them
COLOURS = torch.tensor([[-1.0, -0.4, 0.6], [0.8, -0.2, -1.0], [-0.6, 0.6, -0.6], [0.8, -0.8, -0.6],
                        [0.2, -0.4, 0.8]])
#: points drawn between two time steps (a continuous line at the plot's width)
POINTS_PER_STEP = 16


def plot_series(series: torch.Tensor, height: int = 48, width: int = 96) -> torch.Tensor:
    """(N, T, C) values in [-1, 1] -> (N, 3, height, width) images in [-1, 1]: each channel a
    coloured line over a white background, y = 1 at the top and -1 at the bottom."""
    n, steps, channels = series.shape
    series = series.detach().float().cpu().clamp(-1, 1)
    # Linear interpolation between the steps, then one pixel per point.
    t = torch.linspace(0, steps - 1, (steps - 1) * POINTS_PER_STEP + 1)
    left = t.floor().long().clamp(max=steps - 2) if steps > 1 else torch.zeros_like(t, dtype=torch.long)
    frac = (t - left).unsqueeze(0).unsqueeze(2)
    right = (left + 1).clamp(max=steps - 1)
    values = series[:, left] * (1 - frac) + series[:, right] * frac          # (N, P, C)
    xs = (t / max(steps - 1, 1) * (width - 1)).round().long()                  # (P,)
    ys = ((1 - values) / 2 * (height - 1)).round().long()                     # (N, P, C)
    images = torch.ones(n, 3, height, width)
    for c in range(channels):
        colour = COLOURS[c % len(COLOURS)]
        for i in range(n):
            images[i, :, ys[i, :, c], xs] = colour.unsqueeze(1)
    return images
