"""Sample grids: rows named in a margin, NaN pixels black."""
import warnings

import numpy as np
import torch

from src.utils.image_grid import make_grid


def rows(n: int = 3, size: int = 16) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"real_A": torch.rand(n, 3, size, size) * 2 - 1, "fake_B": torch.rand(n, 1, size, size) * 2 - 1,
            "D_CAM_fake_B": torch.rand(n, 3, size, size) * 2 - 1}


def test_each_row_has_its_name_beside_it():
    named, plain = make_grid(rows()), make_grid(rows(), labels=False)
    assert plain.shape == (3 * 20, 3 * 20, 3) and named.shape[0] == plain.shape[0]
    margin = named.shape[1] - plain.shape[1]
    assert margin > 20 and np.array_equal(named[:, margin:], plain)
    for band in np.split(named[:, :margin], 3):   # every row's band holds dark text on white
        assert band.min() < 100 and np.median(band) == 255
    longer = make_grid({**rows(), "a_much_longer_row_name": rows()["real_A"]})
    assert longer.shape[1] - plain.shape[1] > margin   # the margin fits the longest name


def test_nan_pixels_are_black_and_grey_rows_grey():
    images = rows()
    images["fake_B"][0, 0, :4, :4] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # numpy's "invalid value encountered in cast" of NaN to uint8
        grid = make_grid(images, labels=False)
    assert (grid[20 + 2:20 + 6, 2:6] == 0).all()   # the fake_B row's first tile, its NaN corner
    assert (grid[20:40, :, 0] == grid[20:40, :, 1]).all()   # 1-channel: the same in R, G and B


def test_rows_of_other_sizes_keep_them():
    """Two domains of other shapes (portraits to squares under preprocess=scale_width): each row
    keeps its height, a narrower row is padded white, and every name sits beside its own row."""
    torch.manual_seed(0)
    grid = make_grid({"real_A": torch.rand(2, 3, 24, 16) * 2 - 1, "fake_B": torch.rand(2, 3, 24, 16) * 2 - 1,
                      "real_B": torch.rand(2, 3, 16, 24) * 2 - 1})
    plain = make_grid({"real_A": -torch.ones(2, 3, 24, 16), "real_B": -torch.ones(2, 3, 16, 24)}, labels=False)
    assert plain.shape == (28 + 20, 2 * 28, 3) and grid.shape[0] == 28 + 28 + 20
    assert (plain[:28, 2 * 20:] == 255).all() and (plain[28:, 2 * 20:] == 0).any()   # the narrower row padded white
    margin = grid.shape[1] - 2 * 28
    for start, height in ((0, 28), (28, 28), (56, 20)):
        assert grid[start:start + height, :margin].min() < 100   # its name, in its own band
