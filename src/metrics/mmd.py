"""Maximum mean discrepancy between two samples (NICE-GAN's latent-alignment analysis).

MMD^2 with a Gaussian kernel k(a, b) = exp(-||a - b||^2 / (2 sigma^2)), unbiased estimator
(Gretton et al., JMLR 2012, eq. 3): the within-sample means leave out the diagonal, so two
samples of one distribution give values scattered around 0, slightly negative ones included.

Bandwidth: by default the median heuristic on the pooled sample, sigma^2 = median(||a - b||^2) / 2
over all pairs a != b of x and y together, i.e. k = exp(-d^2 / median d^2). It makes the value
invariant to a rescaling of the latents (latents of different models, or of one model over
training, live on different scales), and bounds it: 0 <= MMD^2 <= 2 up to the estimator's noise.
The NICE-GAN paper does not give its kernel (its 2.27 exceeds this bound), so values here are
comparable between runs of this code, not with the paper's table.

Memory stays bounded whatever the sample sizes: the kernel is summed in blocks of rows (a
(N+M)^2 matrix of 40k real and generated series would be 12.8 GB in float64, three of them
alive at once), and the median is taken over at most MEDIAN_ROWS points spread evenly through
the sample (every point where there are fewer, as for the default evaluation sizes).
"""
from __future__ import annotations

import torch

#: points whose pairwise distances set the median heuristic's bandwidth (8.4M pairs at most)
MEDIAN_ROWS = 4096
#: rows of the kernel computed at once (x 40k columns: 164 MB of float64)
BLOCK_ROWS = 512


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise ||a_i - b_j||^2 for rows of a (N, D) and b (M, D), from the differences: the
    |a|^2 + |b|^2 - 2ab form leaves rounding noise (~1e-16 |a|^2) between identical non-zero
    rows, which the bandwidth's median would take for distinct points."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") ** 2


def median_heuristic_sigma(x: torch.Tensor, y: torch.Tensor) -> float:
    """sigma with sigma^2 = median of the pairwise squared distances of the pooled sample / 2
    (1 where all its points are one: any bandwidth gives MMD 0 there)."""
    sigma = sigma_of_sample(torch.cat([x.flatten(1), y.flatten(1)]).double())
    return 1.0 if sigma is None else sigma


def sigma_of_sample(points: torch.Tensor) -> float | None:
    """The median heuristic's sigma of the rows of `points` (N, D), from MEDIAN_ROWS of them
    spread evenly through the sample where it holds more; None where they are all one point."""
    if len(points) > MEDIAN_ROWS:
        points = points[torch.linspace(0, len(points) - 1, MEDIAN_ROWS, device=points.device).round().long()]
    d2 = squared_distances(points, points)
    off_diagonal = d2[torch.triu_indices(len(d2), len(d2), offset=1, device=d2.device).unbind()]
    # Over the distances between distinct points: where most points coincide (a half-collapsed
    # code) the median of all pairs is 0, and any fixed fallback would ignore the data's scale.
    distinct = off_diagonal[off_diagonal > 0]
    if len(distinct) == 0:
        return None
    return (float(distinct.median()) / 2.0) ** 0.5


def sample_mmd2(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Unbiased MMD^2 between real samples and generated ones (RGAN's measure), under a kernel
    fixed by the real sample alone: the median heuristic's sigma of the real sample (sigma^2 =
    median squared distance between real samples / 2). From the pooled sample the bandwidth
    would move with the generator (one far off widens it, a collapsing one narrows it), so the
    values along a run, and those of runs on the same test set, would each be measured with
    another kernel. (The RGAN authors' code starts from sigma = the median distance of the real
    validation series and then tunes two bandwidths on part of the evaluation set.)"""
    return mmd2_unbiased(real, fake, bandwidth_from_x=True)


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None,
                  bandwidth_from_x: bool = False) -> float:
    """Unbiased Gaussian-kernel MMD^2 between samples x (N, ...) and y (M, ...), N, M >= 2.

    Rows are flattened to vectors. `bandwidth` is the kernel's sigma; None: median heuristic
    (see the module docstring) on the pooled sample, or with `bandwidth_from_x` on x alone.
    Computed in float64.
    """
    x, y = x.flatten(1).double(), y.flatten(1).double()
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"mmd2_unbiased needs at least 2 samples on each side, got {n} and {m}")
    if bandwidth is not None:
        sigma = float(bandwidth)
    else:
        # (a real sample of one point, a constant series repeated, has no scale of its own: the
        # pooled sample's then, not a fixed 1 in the data's units)
        from_x = sigma_of_sample(x) if bandwidth_from_x else None
        sigma = from_x if from_x is not None else median_heuristic_sigma(x, y)
    if sigma <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    # The diagonals k(a, a) are exactly 1 (squared_distances gives exactly 0 for a row and itself).
    within_x = (kernel_sum(x, x, sigma) - n) / (n * (n - 1))
    within_y = (kernel_sum(y, y, sigma) - m) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * kernel_sum(x, y, sigma) / (n * m))


def kernel_sum(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """Sum of the Gaussian kernel over all pairs of rows of a and b, BLOCK_ROWS rows at a time."""
    scale = -1.0 / (2.0 * sigma * sigma)
    return sum(torch.exp(squared_distances(a[start:start + BLOCK_ROWS], b) * scale).sum()
               for start in range(0, len(a), BLOCK_ROWS))
