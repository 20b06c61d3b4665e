"""Evaluation metrics and callbacks: FID/KID and latent MMD on known inputs, one feature pass per
image, the callbacks in smoke runs (metrics returned, best-FID checkpoint, t-SNE map), pix2pix
without an encoder, and DDP (2 CPU processes) giving the single-process values."""
import copy
import csv
import json
import logging
import math
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.errors import InstantiationException

from conftest import NO_EVALUATION, compose_train_cfg, file_rendezvous, one_torch_thread, run_training_on_two_ranks
from src.callbacks.fid_kid import FidKidCallback, built_rank_zero_first
from src.callbacks.periodic_evaluation import shard_range
from src.callbacks.latent import gather_rows
from src.data.shapes import ShapesDataModule
from src.metrics import features as features_module
from src.metrics.features import build_feature_extractor
from src.metrics.fid_kid import FidKidScorer
from src.metrics.mmd import median_heuristic_sigma, mmd2_unbiased
from src.utils.rng import isolated_rng
from src.utils.run import build_callbacks, build_trainer_kwargs, run_training

# Both callbacks every 2 iterations on 7 test items (uneven DDP blocks: 4 + 3), KID subsets of 5
# (smaller than the set, so the subsets drawn depend on the order of the gathered features).
EVAL_CALLBACKS = [
    "+callbacks.fid_kid={_target_:src.callbacks.fid_kid.FidKidCallback,every_n_iters:2,max_images:7,"
    "kid_subset_size:5}",
    "+callbacks.latent={_target_:src.callbacks.latent.LatentCallback,every_n_iters:2,max_images:7,"
    "dirpath:'${paths.output_dir}/latent'}",
]
EVAL_KEYS = {f"eval/{name}_{d}" for name in ("fid", "kid_x100", "kid_std_x100") for d in ("AtoB", "BtoA")} \
    | {"eval/fid", "eval/kid_x100", "latent/mmd2"}


@pytest.fixture(scope="module")
def shapes_images(shared_data_dir, tmp_path_factory):
    """16 test items of the embedded dataset: discs (A) and triangles (B) in [-1, 1]."""
    cfg = compose_train_cfg(["debug=smoke"], tmp_path_factory.mktemp("images"), shared_data_dir)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    batch = datamodule.sample_batch(16, split="test")
    return batch["A"], batch["B"]


@pytest.fixture(scope="module")
def extractor():
    return build_feature_extractor("random_cnn")


def scores(extractor, real, fake, **kwargs) -> dict:
    scorer = FidKidScorer(extractor, **kwargs)
    scorer.update(real=real, fake=fake)
    return scorer.compute()


# ----- metrics on known inputs -----------------------------------------------------------


def test_fid_kid_are_near_zero_for_identical_sets_and_grow_with_a_shift(extractor, shapes_images):
    _, triangles = shapes_images
    same = scores(extractor, triangles, triangles.clone())
    brighter = scores(extractor, triangles, (triangles + 0.5).clamp(-1, 1))
    assert same["fid"] == pytest.approx(0.0, abs=1e-3)
    assert brighter["fid"] > 10.0 and brighter["kid_x100"] > 5.0
    # unbiased KID of a set against itself is slightly negative, of order 1/n
    assert abs(same["kid_x100"]) < 0.05 * brighter["kid_x100"]


def test_images_holding_nan_give_nan_scores_not_a_crash_or_a_plausible_number(extractor, shapes_images):
    """A diverged generator's NaN images: their features made FID's eigendecomposition crash the
    process inside MKL (random_cnn), or passed Inception's uint8 input as black images with a
    finite FID. Every score is NaN then, with a warning; the next evaluation starts clean."""
    discs, triangles = shapes_images
    diverged = triangles.clone()
    diverged[1, 0, 5, 5] = float("nan")
    scorer = FidKidScorer(extractor, kid_subset_size=8, inception_score_splits=2)
    scorer.update(real=discs, fake=diverged)
    with pytest.warns(UserWarning, match=r"1 image\(s\) hold NaN or inf values .*FID, KID and the Inception Score"):
        result = scorer.compute()
    assert set(result) == {"fid", "kid_x100", "kid_std_x100", "is", "is_std"}
    assert all(math.isnan(value) for value in result.values())
    scorer.reset()
    scorer.update(real=discs, fake=triangles)
    assert all(math.isfinite(value) for value in scorer.compute().values())


def test_random_cnn_features_are_those_of_the_images_as_saved():
    """Real images come from uint8 files; a generator's float outputs were featured off that grid,
    so the FID reported was not the FID of the PNGs eval.py writes (Inception rounds both)."""
    from src.data.transforms import to_tensor
    from src.utils.image_grid import to_uint8_images
    fake = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    saved = torch.stack([to_tensor(image) for image in to_uint8_images(fake)])
    extractor = build_feature_extractor("random_cnn")
    assert torch.equal(extractor(fake), extractor(saved))


def test_uint8_images_are_refused_not_scored_as_white(extractor, shapes_images):
    discs, triangles = shapes_images
    pixels = ((triangles + 1) * 127.5).round().to(torch.uint8)
    with pytest.raises(TypeError, match=r"FID/KID \(fake images\) takes a batch of float images \(N, C, H, W\) in "
                                        r"\[-1, 1\], got a torch.uint8 tensor .*uint8 pixels: x / 127.5 - 1"):
        FidKidScorer(extractor).update(real=discs, fake=pixels)


def test_kid_subset_size_is_capped_at_the_number_of_images(extractor):
    images = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scorer = FidKidScorer(extractor)  # 50 subsets of 1000 requested
    scorer.update(real=images[:10], fake=images[10:])
    scorer.update(real=images[10:], fake=images[:10])
    result = scorer.compute()
    assert scorer.kid.subset_size == 20 and all(math.isfinite(v) for v in result.values())
    # the size eval.py's metrics.json records for these counts is the one KID used
    assert scorer.kid.subset_size_for(20, 20) == 20 and scorer.kid.subset_size_for(20, 1500) == 20
    assert scorer.kid.subset_size_for(5000, 3000) == 1000


def test_fid_over_fewer_images_than_features_says_it_compares_only_at_equal_counts(extractor, caplog):
    images = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scorer = FidKidScorer(extractor)
    assert extractor.num_features > 12
    with caplog.at_level(logging.INFO):
        for _ in range(2):   # a second evaluation over the same counts says nothing new
            scorer.update(real=images[:12], fake=images[12:])
            scorer.compute()
            scorer.reset()
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("FID over", "KID's"))]
    assert told == [f"FID over 12 real and 12 generated images, fewer than the {extractor.num_features} features: "
                    "it is biased upward, more so the fewer the images, so compare it only between runs scored "
                    "on the same number of images (KID is unbiased)",
                    "KID's subsets of 12 are both whole sets of 12 images: each gives the same value, so "
                    "kid_std_x100 is 0 (kid_subset_size below 12 gives a spread)"]
    spread = FidKidScorer(extractor, kid_subset_size=6)   # subsets smaller than the sets: a spread
    spread.update(real=images[:12], fake=images[12:])
    assert spread.compute()["kid_std_x100"] > 0
    scorer.update(real=images[:12], fake=images[12:])
    assert scorer.compute()["kid_std_x100"] == 0.0   # as said, not rounding's 1e-14
    scorer.reset()
    caplog.clear()
    many = torch.rand(2 * extractor.num_features, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with caplog.at_level(logging.INFO):
        scorer.update(real=many, fake=many.flip(0))
        scorer.compute()
    assert "FID over" not in caplog.text


def test_kid_settings_it_cannot_compute_are_refused_by_name(extractor):
    with pytest.raises(ValueError, match=r"kid_subset_size=1 must be an integer >= 2 \(callbacks.fid_kid"):
        FidKidScorer(extractor, kid_subset_size=1)
    with pytest.raises(ValueError, match=r"kid_subsets=0 must be an integer >= 1"):
        FidKidScorer(extractor, kid_subsets=0)


def test_an_unpaired_test_domain_of_one_image_stops_the_run_before_training(train_cfg, tmp_path):
    """An unpaired split is as long as its larger domain: 1 image in testA and 3 in testB make 3
    items, and the evaluation, which takes each image once, failed at its first run (hours in)
    with KID's bare "needs at least 2" error. Checked at the start, naming the domain."""
    from PIL import Image
    root = tmp_path / "own_data"
    for folder, count in (("trainA", 2), ("trainB", 2), ("testA", 1), ("testB", 3)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(root / folder / f"{i}.png")
    cfg = train_cfg("model=cyclegan", "data=horse2zebra", f"data.data_dir={root}", "data.load_size=32",
                    "data.crop_size=32", "data.persistent_workers=false", "data.feature_extractor=random_cnn",
                    "++callbacks.latent=null", "++callbacks.shapes_truth=null")
    with pytest.raises(ValueError, match=r"FidKidCallback needs at least 2 distinct test images of each domain, and "
                                         r"the test split of .*own_data has 1 in domain A: add test images, or turn "
                                         r"it off with callbacks.fid_kid=null"):
        run_training(cfg)
    assert not Path(cfg.paths.output_dir, "checkpoints").exists()


def test_a_test_split_too_small_for_fid_stops_the_run_before_training(train_cfg):
    """One test image: FID/KID are undefined, which must show at the start, not at the first
    evaluation; the image grid's settings are checked when the callbacks are built."""
    cfg = train_cfg("model=cyclegan", "data.max_dataset_size=1", "++callbacks.latent=null",
                    "++callbacks.shapes_truth=null")
    with pytest.raises(ValueError, match=r"FidKidCallback needs at least 2 test images, and the test split of "
                                         r".* has 1: add test images, or turn it off with callbacks.fid_kid=null"):
        run_training(cfg)
    assert not Path(cfg.paths.output_dir, "checkpoints").exists()
    with pytest.raises(InstantiationException, match=r"callbacks.image_grid.num_images=0 must be a positive integer"):
        run_training(train_cfg("model=cyclegan", "callbacks.image_grid.num_images=0"))


def test_a_callback_off_for_the_model_does_not_refuse_its_test_split(train_cfg):
    """pix2pix has no latent space: the latent callback is off for it, and its refusal of a
    one-image test split stopped a run that had turned FID off for that split."""
    run_training(train_cfg("model=pix2pix", "data=shapes_paired", "data.max_dataset_size=1", "max_iters=1",
                           "++callbacks.fid_kid=null", "++callbacks.shapes_truth=null"))


@pytest.mark.parametrize("override, error, message", [
    ("callbacks.latent.max_images=1", InstantiationException,
     r"callbacks.latent.max_images=1 must be an integer >= 2 or null"),
    ("callbacks.fid_kid.every_n_iters=-5", InstantiationException,
     r"callbacks.fid_kid.every_n_iters=-5 must be an integer >= 0"),
    # a negative count turned the periodic saves off in silence
    ("callbacks.model_checkpoint.every_n_iters=-100", InstantiationException,
     r"callbacks.model_checkpoint.every_n_iters=-100 must be an integer >= 0 or null \(0 or null: only the last"),
    ("callbacks.latent.pool=max", InstantiationException, r"callbacks.latent.pool='max' must be one of mean_std, mean, flatten"),
    ("callbacks.latent.perplexity=-3", InstantiationException, r"callbacks.latent.perplexity=-3 must be a number > 0"),
    ("callbacks.fid_kid.directions=[XtoY]", InstantiationException,
     r"callbacks.fid_kid.directions=\['XtoY'\] must be a non-empty subset of \['AtoB', 'BtoA'\]"),
    # Lightning's own setting, annotated on ModelCheckpoint, which IterationCheckpoint passes it to
    ("callbacks.model_checkpoint.save_top_k=abc", ValueError,
     r"callbacks.model_checkpoint.save_top_k='abc' must be an integer \(IterationCheckpoint's save_top_k\)"),
])
def test_callback_settings_of_the_wrong_kind_are_named_by_key(train_cfg, override, error, message):
    with pytest.raises(error, match=message):
        run_training(train_cfg("model=cyclegan", override))


def test_features_are_computed_once_per_image(extractor):
    calls = []

    class CountingExtractor(torch.nn.Module):
        num_features = extractor.num_features

        def forward(self, images):
            calls.append(len(images))
            return extractor(images)

    scorer = FidKidScorer(CountingExtractor())
    batches = [torch.rand(4, 3, 32, 32) * 2 - 1 for _ in range(3)]
    for batch in batches:
        scorer.update(real=batch, fake=batch.flip(-1))
    scorer.compute()
    assert calls == [4] * (2 * len(batches))  # one pass per real batch and per fake batch, not per metric


def test_mmd_is_near_zero_within_a_distribution_and_positive_across():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 16, generator=g), torch.randn(100, 16, generator=g)
    same = mmd2_unbiased(x, y)
    shifted = mmd2_unbiased(x, y + 1.0)
    assert abs(same) < 0.02 and shifted > 0.2
    # the median-heuristic bandwidth makes the value scale-free
    assert mmd2_unbiased(10 * x, 10 * (y + 1.0)) == pytest.approx(shifted, rel=1e-6)
    # also where most codes coincide (a half-collapsed encoder): the bandwidth comes from the
    # distances between distinct points, so the value still does not depend on the scale
    # (onto a non-zero code, whose copies the |a|^2 + |b|^2 - 2ab form leaves apart by rounding)
    code = torch.randn(1, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    copies = code.expand(10, 64)
    by_products = (copies * copies).sum(1, keepdim=True) + (copies * copies).sum(1) - 2.0 * copies @ copies.T
    assert bool((by_products > 0).any())
    wide_x, wide_y = torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g) + 1.0
    collapsed_x, collapsed_y = torch.cat([code.expand(8, 64), wide_x]), torch.cat([code.expand(8, 64), wide_y])
    small, large = (mmd2_unbiased(s * collapsed_x, s * collapsed_y) for s in (1e-3, 1e3))
    assert small == pytest.approx(large, rel=1e-6) and small != 0
    assert median_heuristic_sigma(collapsed_x, collapsed_y) > 1.0   # the distinct points' scale, not rounding's
    # a real sample of one point repeated (a constant test series) has no bandwidth of its own:
    # the pooled sample's, so the value is still scale-free (a fixed 1 was in the data's units)
    constant = code.expand(4, 64)
    small, large = (mmd2_unbiased(s * constant, s * wide_y, bandwidth_from_x=True) for s in (1e-3, 1e3))
    assert small == pytest.approx(large, rel=1e-6) and small > 0


def test_mmd_sums_its_kernel_in_blocks_and_takes_the_median_of_an_even_spread(monkeypatch):
    """Large samples (20k test windows of a long CSV series and as many samples) would need
    (N+M)^2 float64 matrices: the kernel is summed BLOCK_ROWS rows at a time, to the value of
    the whole matrices, and the bandwidth is the median over MEDIAN_ROWS evenly spread points."""
    import src.metrics.mmd as mmd
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(23, 5, generator=g, dtype=torch.float64), torch.randn(17, 5, generator=g, dtype=torch.float64) + 0.5
    sigma = 1.3

    def whole_matrices(a, b):
        k = lambda u, v: torch.exp(-torch.cdist(u, v) ** 2 / (2 * sigma ** 2))  # noqa: E731
        n, m = len(a), len(b)
        return float((k(a, a).sum() - n) / (n * (n - 1)) + (k(b, b).sum() - m) / (m * (m - 1)) - 2 * k(a, b).mean())

    monkeypatch.setattr(mmd, "BLOCK_ROWS", 4)   # 23 rows: five blocks and a part one
    shapes, distances = [], mmd.squared_distances
    monkeypatch.setattr(mmd, "squared_distances", lambda a, b: shapes.append((len(a), len(b))) or distances(a, b))
    assert mmd2_unbiased(x, y, bandwidth=sigma) == pytest.approx(whole_matrices(x, y), rel=1e-12)
    assert max(rows for rows, _ in shapes) == 4 and max(columns for _, columns in shapes) == 23
    monkeypatch.setattr(mmd, "MEDIAN_ROWS", 6)
    spread = x[[0, 4, 9, 13, 18, 22]]            # linspace(0, 22, 6) rounded
    assert mmd.sigma_of_sample(x) == mmd.sigma_of_sample(spread)
    monkeypatch.setattr(mmd, "MEDIAN_ROWS", 4096)
    assert mmd.sigma_of_sample(x) != mmd.sigma_of_sample(spread)   # all points where there are fewer


def test_the_default_latent_pooling_sees_cyclegans_residual_blocks():
    """Each residual block adds an instance-normalised, zero-mean map to its input: the code's
    channel means are those of the blocks' input whatever the blocks do. Their spatial spread is
    not, so the default pooling (means and standard deviations) tells two generators apart that
    differ only in their residual blocks."""
    from src.callbacks.latent import pool_latent
    from src.nets.generators import ResnetGenerator
    torch.manual_seed(0)
    first = ResnetGenerator(ngf=4, n_blocks=2)
    second = copy.deepcopy(first)
    with torch.no_grad():
        for p in second.encoder[-2:].parameters():   # the two residual blocks
            p.normal_()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    codes = first.encoder(x), second.encoder(x)
    assert torch.allclose(*(pool_latent(z, "mean") for z in codes), atol=1e-5)
    with_spread = [pool_latent(z, "mean_std") for z in codes]
    assert with_spread[0].shape == (3, 32) and not torch.allclose(*with_spread, atol=1e-2)


def test_a_latent_map_is_left_out_where_the_codes_admit_none(tmp_path):
    """NaN codes (a diverged encoder) make scikit-learn raise, and codes that are all the same
    (a collapsed one) crash the process inside its PCA init: no map then, with a warning; the
    run goes on."""
    from src.callbacks.latent import LatentCallback
    callback = LatentCallback(dirpath=tmp_path)
    trainer = SimpleNamespace(loggers=[])
    codes = torch.randn(6, 5, dtype=torch.float64)
    for latents, said in (({"A": torch.zeros(6, 5), "B": torch.zeros(6, 5)}, "every latent code at iteration 7 is"),
                          ({"A": codes, "B": codes.clone().fill_(float("nan"))}, "hold NaN or inf")):
        with pytest.warns(UserWarning, match=said):
            assert callback.save_tsne(trainer, 7, latents, mmd2=0.0) is None
    assert callback.save_tsne(trainer, 7, {"A": codes, "B": codes + 1}, mmd2=0.5).is_file()


class IdentityEncoder(torch.nn.Module):
    """A model whose codes are its images (flattened by the callback's pooling)."""
    device = torch.device("cpu")

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def encode(self, x, domain):
        return x * self.weight


def test_flattened_codes_of_images_of_other_sizes_are_an_error_naming_the_pooling():
    """Under preprocess=none the test images keep their sizes: flattened, their codes have other
    widths, which torch.cat refused with a bare size mismatch."""
    from src.callbacks.latent import LatentCallback

    batches = [{"A": torch.zeros(1, 3, 8, 8), "B": torch.zeros(1, 3, 8, 12)}]
    for pool, fails in (("flatten", True), ("mean_std", False)):
        callback = LatentCallback(pool=pool)
        callback.distinct_batches = lambda trainer: iter(batches)
        if fails:
            with pytest.raises(ValueError, match=r"callbacks.latent.pool=flatten: the test images encode to codes of "
                                                 r"\[192, 288\] values .*pool=mean_std or mean"):
                callback.local_latents(None, IdentityEncoder())
        else:
            codes = callback.local_latents(None, IdentityEncoder())
            assert {d: tuple(c.shape) for d, c in codes.items()} == {"A": (1, 6), "B": (1, 6)}


def test_codes_of_other_widths_on_another_rank_stop_every_rank(monkeypatch):
    """Under DDP a rank whose own codes share one width went on into the gather while the rank
    that saw another width raised, and waited there for good: the ranks decide together."""
    import src.callbacks.latent as latent

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    other_rank = torch.tensor([288, 288])   # the other rank's images: 8x12 px
    monkeypatch.setattr(latent, "gather_all_tensors", lambda span: [span, other_rank])
    callback = latent.LatentCallback(pool="flatten")
    callback.distinct_batches = lambda trainer: iter([{"A": torch.zeros(1, 3, 8, 8), "B": torch.zeros(1, 3, 8, 8)}])
    with pytest.raises(ValueError, match=r"callbacks.latent.pool=flatten: the test images encode to codes of "
                                         r"\[192, 288\] values"):
        callback.local_latents(None, IdentityEncoder())


def test_random_cnn_is_fixed_and_draws_nothing_from_the_global_rng():
    state = torch.get_rng_state()
    first, second = build_feature_extractor("random_cnn"), build_feature_extractor("random_cnn")
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    out = first(torch.zeros(2, 1, 32, 32))  # grey input is repeated to RGB
    assert out.shape == (2, first.num_features) and not first.training and not any(
        p.requires_grad for p in first.parameters())


def test_inception_without_torch_fidelity_names_both_fixes(monkeypatch):
    monkeypatch.setattr(features_module, "torch_fidelity_available", lambda: False)
    with pytest.raises(RuntimeError) as error:
        build_feature_extractor("inception")
    message = str(error.value)
    assert "make install-fid" in message and "feature_extractor_weights_path=" in message
    assert "weights-inception-2015-12-05-6726825d.pth" in message and "random_cnn" in message
    assert "callbacks.fid_kid.feature_extractor=random_cnn" in message
    with pytest.raises(RuntimeError) as error:   # eval.py's settings are top-level keys
        build_feature_extractor("inception", settings="")
    assert "\n  * or use the download-free extractor: feature_extractor=random_cnn" in str(error.value)
    monkeypatch.setattr(features_module, "torch_fidelity_available", lambda: True)
    with pytest.raises(RuntimeError, match="weights file not found"):
        build_feature_extractor("inception", weights_path="/nonexistent/inception.pth")


def test_building_an_extractor_leaves_trainings_rng_alone(monkeypatch):
    """Inception's layers draw their default initialisation before its weights load; built in
    the FID callback's setup, inside a seeded run, those draws moved training's stream (a run
    trained differently with FID on than off). A stand-in that draws as its layers do:"""
    class DrawingExtractor(torch.nn.Module):
        def __init__(self, weights_path=None):
            super().__init__()
            self.layer = torch.nn.Linear(8, 8)   # default init: draws from the CPU RNG

    monkeypatch.setattr(features_module, "InceptionFeatures", DrawingExtractor)
    before = torch.get_rng_state()
    build_feature_extractor("inception")
    build_feature_extractor("random_cnn")
    assert torch.equal(torch.get_rng_state(), before)


def test_evaluation_rng_is_seeded_and_leaves_training_rng_alone():
    before = torch.get_rng_state()
    with isolated_rng(torch.device("cpu"), seed=3):
        first = torch.rand(3)
    with isolated_rng(torch.device("cpu"), seed=3):
        assert torch.equal(torch.rand(3), first)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_resume_on_fewer_gpus_restores_the_states_of_those_it_has(monkeypatch):
    """A checkpoint holds one CUDA RNG state per GPU its process saw (8 on a node, say); a resume
    that sees fewer restores those it has, where restoring all raised an IndexError."""
    from src.utils.rng import collect_rng_states, restore_rng_states
    states = {**collect_rng_states(), "cuda": tuple(torch.full((16,), i, dtype=torch.uint8) for i in range(3))}
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.append((index, int(state[0]))))
    restore_rng_states(states)
    assert restored == [(0, 0), (1, 1)]


def test_on_apple_gpus_evaluation_seeds_and_restores_the_mps_generator_and_checkpoints_keep_it(monkeypatch):
    """The noise models' latents and dropout on an Apple GPU draw from the MPS generator, which
    fork_rng (CUDA's) leaves alone: an evaluation moved training's draws, and a resume lost them.
    A CPU generator stands in for the MPS one."""
    from src.utils.rng import collect_rng_states, restore_rng_states
    mps = torch.Generator().manual_seed(11)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda device="mps": mps.get_state())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda state, device="mps": mps.set_state(state))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: mps.manual_seed(seed))
    before = mps.get_state()
    with isolated_rng(torch.device("mps"), seed=3):
        assert torch.equal(torch.rand(3, generator=mps), torch.rand(3, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(mps.get_state(), before)

    saved = collect_rng_states()
    expected = torch.rand(3, generator=mps)
    restore_rng_states(saved)
    assert torch.equal(torch.rand(3, generator=mps), expected)


def test_unseeded_evaluation_rng_draws_on_from_the_callers_state_and_restores_it():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with isolated_rng(torch.device("cpu"), seed=None):
        assert torch.equal(torch.rand(3), expected)
    assert torch.equal(torch.rand(3), expected)


def test_shards_are_contiguous_disjoint_and_complete():
    for n, world in ((7, 2), (1, 3), (10, 4)):
        blocks = [shard_range(n, r, world) for r in range(world)]
        assert [i for b in blocks for i in b] == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_best_fid_survives_a_resume_and_only_improvements_save(tmp_path):
    saved = []
    trainer = SimpleNamespace(strategy=SimpleNamespace(broadcast=lambda value, src=0: value),
                              save_checkpoint=lambda path, weights_only=None: saved.append((path, weights_only)),
                              checkpoint_callback=None, is_global_zero=True, loggers=[],
                              default_root_dir=str(tmp_path))
    callback = FidKidCallback()
    callback.load_state_dict(FidKidCallback().state_dict() | {"best_fid": 5.0, "best_iteration": 10})
    def module(iteration):   # a model whose weights are finite
        return SimpleNamespace(iteration=iteration, named_parameters=lambda: iter([("w", torch.ones(2))]))
    callback.save_if_best(trainer, module(20), 6.0)
    assert saved == [] and best_of(callback.state_dict()) == {"best_fid": 5.0, "best_iteration": 10}
    callback.save_if_best(trainer, module(30), 4.0)
    assert saved == [(tmp_path / "checkpoints" / "best_fid.ckpt", False)]  # full state: resumable
    assert best_of(callback.state_dict()) == {"best_fid": 4.0, "best_iteration": 30}


def test_best_fid_ckpt_records_its_own_evaluation_as_done(train_cfg):
    """It was written before the callback marked the evaluation done: it recorded the previous
    one, and a resume from it would score its iteration again."""
    cfg = train_cfg("model=cyclegan", "max_iters=2", "callbacks.fid_kid.every_n_iters=2", "++callbacks.latent=null",
                    "++callbacks.shapes_truth=null")
    run_training(cfg)
    best = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "best_fid.ckpt", weights_only=True)
    (state,) = [value for key, value in best["callbacks"].items() if key.startswith("FidKidCallback")]
    assert state["best_iteration"] == state["last_evaluated"] == 2


def best_of(state: dict) -> dict:
    return {key: state[key] for key in ("best_fid", "best_iteration")}


def test_a_best_fid_of_another_measure_starts_over_on_resume():
    """Resumed with other features or test images, the FIDs are on another scale: the saved best
    would keep best_fid.ckpt from ever being written, or be beaten by chance. The measure is the
    one `setup` resolved (the run below checks it is), so settings that resolve the same (auto
    for the extractor it picks, max_images past the split's size) and those that do not change
    the FID (KID's subsets) keep it."""
    measure = {"feature_extractor": "random_cnn", "feature_extractor_weights_path": None, "images": 100,
               "directions": ["AtoB", "BtoA"]}
    saved = {"best_fid": 5.0, "best_iteration": 10, "measure": measure}
    kept = FidKidCallback(feature_extractor="auto", max_images=5000, kid_subsets=3)
    kept.measured = dict(measure)
    kept.load_state_dict(saved)
    assert best_of(kept.state_dict()) == {"best_fid": 5.0, "best_iteration": 10}
    other = FidKidCallback(feature_extractor="inception")
    other.measured = {**measure, "feature_extractor": "inception"}
    with pytest.warns(UserWarning, match=r"best FID so far \(5.0000, iteration 10\) was measured with other settings "
                                         r"\(feature_extractor 'random_cnn' -> 'inception'\)"):
        other.load_state_dict(saved)
    assert best_of(other.state_dict()) == {"best_fid": math.inf, "best_iteration": -1}


# ----- the callbacks in training runs ------------------------------------------------------


def eval_run_cfg(output_dir: Path, data_dir: Path, *overrides: str):
    # lr 0: the weights stay at their (seeded) initial values, so a DDP run, whose ranks train
    # on different batches, evaluates the same model as the single-process run.
    return compose_train_cfg(["debug=smoke", "model=cyclegan", "model.optimizer.lr=0", *EVAL_CALLBACKS,
                              *overrides], output_dir, data_dir)


@pytest.fixture(scope="module")
def single_process_run(shared_data_dir, tmp_path_factory):
    cfg = eval_run_cfg(tmp_path_factory.mktemp("single"), shared_data_dir)
    with one_torch_thread():   # as the two ranks it is compared with
        return cfg, run_training(cfg)


class ReportsMPS:
    """A trained module seen through a view that says it lives on Apple's MPS (whose tensors
    cannot be made here: a callback that put its float64 values there fails)."""

    def __init__(self, module: pl.LightningModule):
        self.__dict__["module"] = module

    def __getattr__(self, name: str):
        return getattr(self.module, name)

    @property
    def device(self) -> torch.device:
        return torch.device("mps")


def test_on_apples_mps_the_evaluations_keep_their_float64_values_on_the_cpu(shared_data_dir, tmp_path):
    """MPS has no float64: FID/KID's sums and features and the latent codes for the MMD are kept
    on the CPU there, and the scores are those of a CPU run."""
    from src.callbacks.latent import LatentCallback
    cfg = eval_run_cfg(tmp_path, shared_data_dir, "max_iters=1")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    callbacks = [cb for cb in build_callbacks(cfg, None) if isinstance(cb, (FidKidCallback, LatentCallback))]
    assert len(callbacks) == 2
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), callbacks=callbacks, logger=False,
                         enable_checkpointing=False)
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    for callback, key in zip(callbacks, ("eval/fid", "latent/mmd2")):
        scores = []
        for seen_as in (model, ReportsMPS(model)):
            callback.evaluate(trainer, seen_as)
            scores.append(float(trainer.callback_metrics[key]))
        assert math.isfinite(scores[0]) and scores[1] == pytest.approx(scores[0], rel=1e-9), key


def test_smoke_run_returns_eval_metrics_and_writes_best_checkpoint_and_tsne(single_process_run):
    cfg, metrics = single_process_run
    assert EVAL_KEYS <= set(metrics) and all(math.isfinite(metrics[k]) for k in EVAL_KEYS)
    assert metrics["eval/fid"] == pytest.approx((metrics["eval/fid_AtoB"] + metrics["eval/fid_BtoA"]) / 2)
    run_dir = Path(cfg.paths.output_dir)
    checkpoint = torch.load(run_dir / "checkpoints" / "best_fid.ckpt", map_location="cpu", weights_only=True)
    # the weights do not move (lr 0): the first evaluation stays the best
    assert best_of(checkpoint["callbacks"]["FidKidCallback"]) == {"best_fid": pytest.approx(metrics["eval/fid"]),
                                                                  "best_iteration": 2}
    # the measure it was taken with, as resolved: feature_extractor auto -> the shapes' random_cnn
    measure = checkpoint["callbacks"]["FidKidCallback"]["measure"]
    assert measure["feature_extractor"] == "random_cnn" and measure["directions"] == ["AtoB", "BtoA"]
    assert measure["images"] == cfg.callbacks.fid_kid.max_images == 7   # of the 16 test images
    assert sorted(p.name for p in (run_dir / "latent").glob("*.png")) == [
        "latent_tsne_iter_0000002.png", "latent_tsne_iter_0000004.png"]
    with open(next(run_dir.glob("csv/version_*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert sum(bool(row["eval/fid"]) for row in rows) == sum(bool(row["latent/mmd2"]) for row in rows) == 2


def test_the_last_evaluation_precedes_the_last_checkpoint_and_a_best_checkpoint_keeps_trainings_rng(
        shared_data_dir, tmp_path):
    """A run ending off the evaluation schedule (here FID only at the end, 3 iterations) evaluates
    at its last batch's end, before last.ckpt is written there, so last.ckpt holds that best FID
    (evaluated in on_train_end, after it, a run extended from last.ckpt compared with a stale
    best). best_fid.ckpt, saved at the same iteration, holds training's random streams, as
    last.ckpt does, not the evaluation's seeded ones: a resume from it draws as the run did."""
    cfg = eval_run_cfg(tmp_path, shared_data_dir, "max_iters=3", "callbacks.fid_kid.every_n_iters=0",
                       "model.optimizer.lr=2e-4")
    metrics = run_training(cfg)
    load = lambda name: torch.load(tmp_path / "checkpoints" / name, map_location="cpu", weights_only=True)  # noqa: E731
    last, best = load("last.ckpt"), load("best_fid.ckpt")
    assert last["global_step"] == best["global_step"] == 6
    assert best_of(last["callbacks"]["FidKidCallback"]) == {"best_fid": pytest.approx(metrics["eval/fid"]),
                                                            "best_iteration": 3}
    assert torch.equal(last["rng_states"]["torch"], best["rng_states"]["torch"])
    assert last["rng_states"]["python"] == best["rng_states"]["python"]
    assert torch.equal(last["rng_states"]["numpy"][1], best["rng_states"]["numpy"][1])


def test_real_features_are_extracted_at_the_first_evaluation_only(shared_data_dir, tmp_path, monkeypatch):
    """Two evaluations (iterations 2 and 4) of 7 test items in both directions: the real images
    pass the feature network once per direction, the translations at every evaluation, and the
    second evaluation, of the same weights (lr 0), gives the first one's values from the kept
    real features."""
    extracted = []
    features = FidKidScorer.features

    def counting_features(self, images):
        extracted.append(len(images))
        return features(self, images)

    monkeypatch.setattr(FidKidScorer, "features", counting_features)
    cfg = eval_run_cfg(tmp_path, shared_data_dir)
    run_training(cfg)
    assert sum(extracted) == 2 * 7 + 2 * 2 * 7   # real: once per direction; fakes: per evaluation
    with open(next(tmp_path.glob("csv/version_*/metrics.csv"))) as f:
        logged = [row for row in csv.DictReader(f) if row["eval/fid_AtoB"]]
    assert len(logged) == 2
    for key in ("eval/fid_AtoB", "eval/fid_BtoA", "eval/kid_x100_AtoB", "eval/kid_x100_BtoA"):
        assert float(logged[1][key]) == pytest.approx(float(logged[0][key]), rel=1e-9), key


def test_evaluations_leave_the_training_run_unchanged(train_cfg, tmp_path):
    """Same seed, with and without the evaluation callbacks: identical final weights (the
    evaluations draw from their own seeded RNG and restore the training one)."""
    weights = []
    for name, extra in (("plain", []), ("evaluated", EVAL_CALLBACKS)):
        cfg = train_cfg("model=cyclegan", "data.max_dataset_size=4", *extra)
        cfg.paths.output_dir = str(tmp_path / name)
        run_training(cfg)
        weights.append(torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_sample_grids_leave_the_training_run_unchanged(train_cfg, tmp_path):
    """pix2pix samples its grids with test-time dropout: drawn from the grid's own seeded RNG,
    a run that saves a grid every iteration trains exactly as one that saves it at the end."""
    weights = []
    for every in (1, 0):
        cfg = train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=3",
                        f"callbacks.image_grid.every_n_iters={every}", *NO_EVALUATION)
        cfg.paths.output_dir = str(tmp_path / str(every))
        run_training(cfg)
        weights.append(torch.load(tmp_path / str(every) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert len(list((tmp_path / "1" / "samples").glob("*.png"))) == 3
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_sample_grids_scale_each_image_down_to_max_side(train_cfg, tmp_path):
    """A 1024 px run's grids are tens of megapixels each: callbacks.image_grid.max_side scales
    every image of the grid down (the aspect kept); the row names stay as they are."""
    from PIL import Image
    heights = {}
    for max_side in ("null", "16"):
        cfg = train_cfg("model=cyclegan", "max_iters=1", f"++callbacks.image_grid.max_side={max_side}", *NO_EVALUATION)
        cfg.paths.output_dir = str(tmp_path / max_side)
        run_training(cfg)
        (grid,) = (tmp_path / max_side / "samples").glob("*.png")
        heights[max_side] = Image.open(grid).height
    rows = 6   # CycleGAN: real, fake and reconstruction of each domain, 32 px images padded by 2 on each side
    assert heights == {"null": rows * (32 + 4), "16": rows * (16 + 4)}
    with pytest.raises(InstantiationException, match=r"callbacks.image_grid.max_side=0 must be a positive integer"):
        run_training(train_cfg("model=cyclegan", "++callbacks.image_grid.max_side=0"))


def test_pix2pix_skips_btoa_and_turns_the_latent_callback_off_without_warnings(train_cfg, caplog):
    """What does not apply to a one-way model without a shared latent space (its other
    direction, the latent t-SNE/MMD of the default callbacks) is said, not warned about."""
    # (a schedule that fits the run's one epoch: pix2pix's 100 + 100 would be warned about)
    cfg = train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=2", "model.lr_schedule.constant=0",
                    "model.lr_schedule.decay=1", *EVAL_CALLBACKS)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        # Lightning's advice on a machine of 3 cores or more, for the smoke config's in-process loading
        warnings.filterwarnings("ignore", message=".*does not have many workers")
        metrics = run_training(cfg)
    # (a library's deprecation notices, which a fresh install's newer numpy or pillow may add,
    # are not this run's to answer for)
    library_notices = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
    assert [str(w.message) for w in caught if not issubclass(w.category, library_notices)] == []
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "LatentCallback off: Pix2Pix's networks have no shared latent space" in caplog.text and "not scoring BtoA" in caplog.text
    assert {"eval/fid_AtoB", "eval/kid_x100_AtoB", "eval/fid"} <= set(metrics)
    assert metrics["eval/fid"] == metrics["eval/fid_AtoB"]
    assert not any(k.endswith("_BtoA") or k.startswith("latent/") for k in metrics)
    assert not (Path(cfg.paths.output_dir) / "latent").exists()


def test_each_test_image_counts_once_when_the_test_domains_differ_in_size(tmp_path, monkeypatch):
    """An unpaired test split is as long as its larger domain and cycles the smaller one
    (horse2zebra: 120 horses, 140 zebras). Training-time FID/KID and the latent MMD score each
    image once, as eval.py and the papers' code do: the last evaluation's FID is eval.py's on
    the last checkpoint, and the MMD compares the 3 A latents with the 5 B ones."""
    from src.callbacks import latent as latent_module
    from test_truth_and_translate import evaluate_on_folders, write_folder_dataset

    root = write_folder_dataset(tmp_path / "uneven", {"testA/A2.png": (32, 32),
                                                      **{f"testB/B{k}.png": (32, 32) for k in (2, 3, 4)}})
    compared = []
    mmd2 = latent_module.mmd2_unbiased
    monkeypatch.setattr(latent_module, "mmd2_unbiased", lambda a, b: compared.append((len(a), len(b))) or mmd2(a, b))
    sizes = ("data.load_size=32", "data.crop_size=32")
    cfg = compose_train_cfg(["debug=smoke", "model=cyclegan", "data=horse2zebra", f"data.data_dir={root}", *sizes,
                             "callbacks.fid_kid.feature_extractor=random_cnn", "callbacks.fid_kid.kid_subset_size=2"],
                            tmp_path / "run", tmp_path)
    metrics = run_training(cfg)
    assert compared == [(3, 5), (3, 5)]   # iterations 2 and 4
    checkpoint = SimpleNamespace(ckpt=tmp_path / "run" / "checkpoints" / "last.ckpt")
    results, _ = evaluate_on_folders(checkpoint, tmp_path, root, *sizes)
    for direction in ("AtoB", "BtoA"):
        assert metrics[f"eval/fid_{direction}"] == pytest.approx(results[direction]["fid"], rel=1e-5), direction


# ----- DDP: 2 CPU processes give the single-process values --------------------------------


def test_callbacks_under_ddp_match_a_single_process(single_process_run, shared_data_dir, tmp_path):
    _, expected = single_process_run
    cfg = eval_run_cfg(tmp_path / "ddp", shared_data_dir, "trainer.devices=2",
                       "trainer.strategy=ddp_spawn_find_unused_parameters_true")
    metrics = run_training_on_two_ranks(cfg)
    for key in EVAL_KEYS:
        assert metrics[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    assert (tmp_path / "ddp" / "checkpoints" / "best_fid.ckpt").is_file()
    assert len(list((tmp_path / "ddp" / "latent").glob("latent_tsne_iter_*.png"))) == 2
    # the run's end state, written by the rank-zero process that trained (not the spawning one)
    final = json.loads((tmp_path / "ddp" / "final_metrics.json").read_text())
    assert final["iteration"] == 4 and final["metrics"]["eval/fid"] == pytest.approx(metrics["eval/fid"])
    # lr 0: iteration 4 evaluates the same weights as iteration 2, and only an improvement is the best
    assert final["best_fid"] == pytest.approx(metrics["eval/fid"]) and final["best_fid_iteration"] == 2


def empty_rank_worker(rank: int, real, fake, rows, out_dir: str) -> None:
    """Rank 0 holds every image and row, rank 1 none: both must still compute the full result."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=file_rendezvous(out_dir), rank=rank, world_size=2)
    try:
        scorer = FidKidScorer(build_feature_extractor("random_cnn"), kid_subset_size=4)
        if rank == 0:
            scorer.update(real=real[:3], fake=fake[:3])
            scorer.update(real=real[3:], fake=fake[3:])
        result = scorer.compute()
        gathered = gather_rows(rows if rank == 0 else rows[:0])
        torch.save({"scores": result, "rows": gathered}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_a_rank_with_an_empty_shard_still_gets_the_single_process_values(extractor, tmp_path):
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1, torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    rows = torch.randn(5, 3, generator=g)
    expected = scores(extractor, real, fake, kid_subset_size=4)
    mp.spawn(empty_rank_worker, args=(real, fake, rows, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["scores"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
        assert torch.equal(result["rows"], rows)


def random_inception_weights(path: Path, monkeypatch) -> Path:
    """A weights file shaped like torch-fidelity's download, randomly initialised (no download)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity_inception

    with monkeypatch.context() as patch:
        patch.setattr(fidelity_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fidelity_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        net = fidelity_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.skipif(not features_module.torch_fidelity_available(), reason="needs torch-fidelity (make install-fid)")
def test_inception_path_gives_2048_features_from_a_local_weights_file(tmp_path, monkeypatch):
    weights = random_inception_weights(tmp_path / "w.pth", monkeypatch)
    extractor = build_feature_extractor("inception", weights_path=str(weights))
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    features = extractor(images)
    assert features.shape == (3, 2048) and torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])


@pytest.mark.skipif(not features_module.torch_fidelity_available(), reason="needs torch-fidelity (make install-fid)")
def test_inception_features_are_torch_fidelitys_own(tmp_path, monkeypatch):
    """The same weights through torch-fidelity's extractor (TF1's bilinear resize to 299, the
    published numbers' protocol) give the same features, at a size it must resize."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    weights = random_inception_weights(tmp_path / "w.pth", monkeypatch)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    ours = build_feature_extractor("inception", weights_path=str(weights))(images)
    fidelity = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    uint8 = ((images + 1) * 127.5).round().to(torch.uint8)
    assert torch.allclose(ours, fidelity.eval()(uint8)[0], atol=1e-4)


def test_inception_resizes_as_torch_fidelity_not_antialiased(monkeypatch):
    """torchmetrics' Inception defaults to an antialiased resize; ours asks for TF1's."""
    import torchmetrics.image.fid as torchmetrics_fid
    made = {}

    class Recording(torch.nn.Module):
        def __init__(self, **settings):
            super().__init__()
            made.update(settings)

    monkeypatch.setattr(features_module, "torch_fidelity_available", lambda: True)
    monkeypatch.setattr(torchmetrics_fid, "NoTrainInceptionV3", Recording)
    build_feature_extractor("inception")
    assert made["antialias"] is False and made["features_list"] == ["2048"]


def test_inception_weights_must_load_as_plain_tensors(tmp_path, monkeypatch):
    monkeypatch.setattr(features_module, "torch_fidelity_available", lambda: True)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"conv.weight": torch.zeros(1), "extra": SimpleNamespace(a=1)}, unsafe)
    with pytest.raises(RuntimeError, match="weights_only=True") as error:
        build_feature_extractor("inception", weights_path=str(unsafe))
    assert str(unsafe) in str(error.value)
    # The file torch-fidelity would download to, found in torch.hub's cache (shared on a cluster)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / features_module.INCEPTION_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(unsafe.read_bytes())
    with pytest.raises(RuntimeError, match="weights_only=True") as error:
        build_feature_extractor("inception")
    assert str(cached) in str(error.value)


def test_an_unknown_feature_extractor_is_named_by_its_key(tmp_path):
    with pytest.raises(ValueError, match=r"callbacks.fid_kid.feature_extractor='clip' must be one of inception, random_cnn"):
        build_feature_extractor("clip")
    with pytest.raises(ValueError, match=r"^feature_extractor='clip' must be one of"):   # eval.py's own setting
        build_feature_extractor("clip", settings="")
    with pytest.raises(ValueError, match=r"data.feature_extractor='clip' must be one of inception, random_cnn"):
        ShapesDataModule(data_dir=str(tmp_path), feature_extractor="clip")


def test_each_evaluation_says_its_scores_in_the_log(train_cfg, caplog):
    """The loggers had the scores; the console and train.log said nothing but a new best FID."""
    from src.utils.run import run_training
    with caplog.at_level("INFO"):
        run_training(train_cfg("max_iters=2"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FidKidCallback at iteration 2 (")]
    assert len(lines) == 1 and "eval/fid_AtoB " in lines[0] and "eval/kid_x100 " in lines[0]
    # and the run's end says where its best FID and the command that scores it are
    messages = [r.getMessage() for r in caplog.records]
    assert "Training ended at iteration 2 (max_iters=2 reached)" in messages
    assert not any("max_steps=" in m for m in messages)   # Lightning's count of optimizer steps
    assert any(m.startswith("Best FID ") and m.endswith("best_fid.ckpt") for m in messages)
    assert any(m.startswith("Score it on the test split: python src/eval.py ckpt_path=") for m in messages)


def test_the_best_fid_checkpoint_goes_where_callbacks_fid_kid_says_or_nowhere(train_cfg, tmp_path):
    from src.utils.run import run_training
    elsewhere = tmp_path / "best"
    cfg = train_cfg("max_iters=2", f"++callbacks.fid_kid.dirpath={elsewhere}")
    run_training(cfg)
    assert (elsewhere / "best_fid.ckpt").is_file()
    assert not (Path(cfg.paths.output_dir) / "checkpoints" / "best_fid.ckpt").exists()
    cfg = train_cfg("max_iters=2", "callbacks.fid_kid.save_best=false")
    cfg.paths.output_dir = str(tmp_path / "no_best")
    run_training(cfg)
    assert (tmp_path / "no_best" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "no_best" / "checkpoints" / "best_fid.ckpt").exists()
    # the best FID is still the run's record (the summary's, the sweep table's), without its file
    record = json.loads((tmp_path / "no_best" / "final_metrics.json").read_text())
    assert math.isfinite(record["best_fid"]) and record["best_fid_iteration"] == 2


class _OpensAFile:
    """Unpickled in full, it creates `marker`: what a tampered weights file could run."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_weights_file_swapped_after_its_check_is_still_read_as_tensors_only(tmp_path, monkeypatch):
    """torch-fidelity unpickles the Inception weights with weights_only=False, after our check read
    the same path: a file another user swaps in between (a shared $TORCH_HOME) ran its code. Its
    own load is forced weights-only. (torch-fidelity's loader is played by a stand-in that reads
    the path as it does, once the file has been swapped.)"""
    import torchmetrics.image.fid as torchmetrics_fid
    weights, marker = tmp_path / "weights.pth", tmp_path / "ran"
    torch.save({"w": torch.zeros(1)}, weights)

    class SwappedThenLoaded:
        def __init__(self, name, features_list, feature_extractor_weights_path, antialias):
            torch.save(_OpensAFile(marker), feature_extractor_weights_path)
            torch.load(feature_extractor_weights_path, weights_only=False)

    monkeypatch.setattr(features_module, "torch_fidelity_available", lambda: True)
    monkeypatch.setattr(torchmetrics_fid, "NoTrainInceptionV3", SwappedThenLoaded)
    # set by users for torch >= 2.6's weights-only default; torch refuses both at once
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(features_module.InceptionUnavailable, match=r"loading the weights failed .*Weights only load"):
        features_module.InceptionFeatures(str(weights))
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None   # forced for that load only
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"      # the user's, back as it was


def test_inception_unavailable_offers_a_weights_file_only_where_torch_fidelity_would_read_it(tmp_path, monkeypatch):
    """Without torch-fidelity a weights file alone gave the same refusal again: it is offered as a
    step after installing it. Installed but the file missing, it is a fix of its own."""
    weights = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, weights)
    monkeypatch.setattr(features_module, "torch_fidelity_available", lambda: False)
    with pytest.raises(features_module.InceptionUnavailable) as missing:
        build_feature_extractor("inception", str(weights), settings="")
    ways = [line for line in str(missing.value).splitlines() if line.startswith("  * ")]
    assert len(ways) == 2 and "not installed" in str(missing.value)
    assert "make install-fid" in ways[0] and "then, on a machine without internet" in ways[0]
    assert "feature_extractor_weights_path=" in ways[0] and "feature_extractor=random_cnn" in ways[1]
    monkeypatch.setattr(features_module, "torch_fidelity_available", lambda: True)
    with pytest.raises(features_module.InceptionUnavailable) as no_file:
        build_feature_extractor("inception", str(tmp_path / "elsewhere.pth"), settings="callbacks.fid_kid.")
    ways = [line for line in str(no_file.value).splitlines() if line.startswith("  * ")]
    assert len(ways) == 3 and "weights file not found" in str(no_file.value)
    assert ways[1].startswith("  * on a machine without internet")
    assert "callbacks.fid_kid.feature_extractor_weights_path=" in ways[1]


def test_rank_zero_builds_first_and_a_rank_that_fails_stops_every_rank():
    """Inception's weights are downloaded by the rank that builds the extractor first, rank
    zero, before the others look for them, then by each other node's first rank (a node-local
    torch.hub cache: its ranks all downloaded at once); a rank's failure is decided together,
    where the others would wait in their next collective until the process group timed out."""
    events = []

    def trainer(rank, others_ok=True, local_rank=None):
        def reduce(ok, all):
            events.append(("decided", rank, ok))
            return ok and others_ok
        return SimpleNamespace(is_global_zero=rank == 0, local_rank=rank if local_rank is None else local_rank,
                               strategy=SimpleNamespace(reduce_boolean_decision=reduce))

    def build(rank):
        def built():
            events.append(("built", rank))
            return f"extractor {rank}"
        return built

    assert built_rank_zero_first(trainer(0), build(0), "the feature extractor") == "extractor 0"
    assert events == [("built", 0), ("decided", 0, True), ("decided", 0, True), ("decided", 0, True)]
    events.clear()
    assert built_rank_zero_first(trainer(4, local_rank=0), build(4), "the feature extractor") == "extractor 4"
    assert events == [("decided", 4, True), ("built", 4), ("decided", 4, True), ("decided", 4, True)]   # node 1's first
    events.clear()
    assert built_rank_zero_first(trainer(1), build(1), "the feature extractor") == "extractor 1"
    assert events == [("decided", 1, True), ("decided", 1, True), ("built", 1), ("decided", 1, True)]   # last
    events.clear()
    with pytest.raises(RuntimeError, match="Another rank could not build the feature extractor"):
        built_rank_zero_first(trainer(1, others_ok=False), build(1), "the feature extractor")
    assert events == [("decided", 1, True)]   # rank zero failed: this rank builds nothing

    def unavailable():
        raise OSError("HTTP Error 503")

    with pytest.raises(OSError, match="HTTP Error 503"):   # rank zero's own error, once the others know
        built_rank_zero_first(trainer(0), unavailable, "the feature extractor")


def test_the_latent_callback_is_off_for_a_cyclegan_whose_generators_have_no_encoder_half(train_cfg, caplog):
    """CycleGAN's code takes U-Net generators too, which have no encoder half to read: the callback
    said nothing at the start and stopped the run at its first latent evaluation."""
    import hydra

    from src.callbacks.latent import LatentCallback
    from src.nets.generators import UnetGenerator

    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    callback = LatentCallback(every_n_iters=1)
    assert model.has_latent()
    model.G_B = UnetGenerator(num_downs=5, ngf=4)
    with caplog.at_level(logging.INFO):
        callback.setup(None, model, "fit")
    assert not callback.enabled and "LatentCallback off: CycleGAN's networks have no shared latent" in caplog.text
