"""Matrix products of a wide weight matrix with a few columns, at memory speed, on the CPU.

The layers that run on a few pixels (`src/nets/gemm_conv.py`) multiply an 8192-wide weight
matrix by 1-64 columns. MKL runs these far below the speed of reading the weights once (32 MB:
~0.6 ms on this 2-core machine), and erratically by shape (2 threads, weights not in cache):

- `columns_t_times_wide`, a^T @ W for a: [K, P], W: [K, N]: 4.8 ms at P = 4, 4.7 at 16, 14.6 at
  64 as one product; 2.3-3.0, 3.6 and 8.7 ms as eight products over column blocks of W in one
  `bmm`, which MKL spreads over both threads;
- `wide_times_columns`, W @ b for W: [M, N], b: [N, P]: 5.4 ms at P = 4 but 3.2 at P = 16, so
  b is padded with zero columns to 16 (3.4 ms; at P = 1 MKL's matrix-vector path is faster).
"""
import torch
import torch.nn.functional as F

#: column blocks of W in `columns_t_times_wide`, when W is at least this wide per block
BLOCKS, MIN_BLOCK_WIDTH = 8, 256
#: `wide_times_columns` pads 2 .. PADDED_COLUMNS - 1 columns to PADDED_COLUMNS
PADDED_COLUMNS = 16


def columns_t_times_wide(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a.t() @ w, as a [P, N] tensor; a: [K, P] with few columns, w: [K, N] row-major."""
    k, n = w.shape
    p = a.shape[1]
    if n % BLOCKS or n // BLOCKS < MIN_BLOCK_WIDTH or not w.is_contiguous():
        return a.t() @ w
    blocks = torch.bmm(a.t().unsqueeze(0).expand(BLOCKS, p, k), w.view(k, BLOCKS, n // BLOCKS).transpose(0, 1))
    return blocks.transpose(0, 1).reshape(p, n)   # [BLOCKS, P, N/BLOCKS] -> [P, N]


def wide_times_columns(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w @ b, as a [M, P] tensor; w: [M, N], b: [N, P] with few columns."""
    p = b.shape[1]
    if 1 < p < PADDED_COLUMNS:
        return (w @ F.pad(b, (0, PADDED_COLUMNS - p)))[:, :p]
    return w @ b
