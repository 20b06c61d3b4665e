"""Recurrent GANs over time series (RGAN, RCGAN): the sequence data (sines, CSV windows), the
per-step discriminator, the condition at every step, the critic/generator iteration, the MMD
evaluation, plotted sample grids and resume."""
import math
import warnings
from pathlib import Path

import hydra
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from conftest import NO_EVALUATION, assert_resume_continues_the_run, single_and_two_rank_metrics
from src.callbacks.fid_kid import FidKidCallback
from src.data.sequences import SequenceDataModule
from src.losses import gradient_penalty
from src.metrics.mmd import mmd2_unbiased, sample_mmd2
from src.nets.recurrent import RecurrentDiscriminator, RecurrentGenerator
from src.utils.run import build_callbacks, build_trainer_kwargs, run_training
from src.utils.sequence_plot import plot_series
from test_models import fit_briefly, record_player_steps


def sines(**kwargs) -> SequenceDataModule:
    settings = dict(seq_len=20, channels=3, num_classes=4, n_train=64, n_test=16, batch_size=4)
    datamodule = SequenceDataModule(**{**settings, **kwargs})
    datamodule.setup("fit")
    return datamodule


def test_sines_are_seeded_sines_labelled_by_frequency_band():
    datamodule = sines()
    item = datamodule.dataset("train")[3]
    series = item["A"]
    assert series.shape == (20, 3) and series.abs().max() <= 0.9 and item["index"] == 3
    # Each channel is a sine of one frequency: its spectrum peaks at one bin, in the band of the label.
    spectrum = np.abs(np.fft.rfft(datamodule.dataset("train").series.numpy(), axis=1)).sum(2)
    peaks = spectrum[:, 1:].argmax(1) + 1   # cycles per series, rounded
    labels = datamodule.dataset("train").labels
    assert np.corrcoef(peaks, labels)[0, 1] > 0.8 and set(labels) == {0, 1, 2, 3}
    again = sines(n_train=32)   # the test split does not depend on the training split's size
    assert torch.equal(again.dataset("test").series, datamodule.dataset("test").series)
    assert not torch.equal(sines(seed=1).dataset("test").series, datamodule.dataset("test").series)


def write_csv(path: Path, steps: int) -> np.ndarray:
    values = np.stack([np.arange(steps, dtype=float), np.arange(steps, dtype=float) * -2], axis=1)
    labels = (np.arange(steps) // 10) % 2
    lines = ["a,b,label"] + [f"{x},{y},{c}" for (x, y), c in zip(values, labels)]
    path.write_text("\n".join(lines) + "\n")
    return values


def test_csv_windows_test_split_comes_last_and_is_scaled_by_training_range(tmp_path):
    write_csv(tmp_path / "s.csv", 50)
    datamodule = sines(source="csv", csv_path=str(tmp_path / "s.csv"), label_column="label", num_classes=2,
                       seq_len=10, channels=2, stride=5, test_fraction=0.4)
    train, test = datamodule.dataset("train"), datamodule.dataset("test")
    # Steps 0-29 train (windows from 0, 5, ... 20), 30-49 test (from 30, 35, 40): no window shares steps.
    assert len(train) == 5 and len(test) == 3
    first = train[0]["A"]
    assert first.shape == (10, 2) and torch.isclose(first[0, 0], torch.tensor(-1.0))
    assert torch.isclose(train.series[:, :, 0].max(), torch.tensor(1.0))   # the training part spans [-1, 1]
    assert test.series[:, :, 0].min() > 1.0      # the later test part lies above its range
    assert train[0]["label"] == 0 and train[1]["label"] == 1   # the window's last step: 9 -> 0, 14 -> 1
    # A spreadsheet's UTF-8 export starts with a byte-order mark: the first column keeps its name.
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "s.csv").read_bytes())
    from_bom = sines(source="csv", csv_path=str(tmp_path / "bom.csv"), columns=["a", "b"], label_column="label",
                     num_classes=2, seq_len=10, channels=2, stride=5, test_fraction=0.4)
    assert torch.equal(from_bom.dataset("train").series, train.series)


def test_csv_windows_are_views_of_one_scaled_series(tmp_path):
    """With stride 1 a copy of every window would hold each value seq_len times (12 GB of a
    5M-step, 10-channel series at seq_len 30): the windows of both splits share the series' memory."""
    expected = write_csv(tmp_path / "s.csv", 50)
    datamodule = sines(source="csv", csv_path=str(tmp_path / "s.csv"), label_column="label", num_classes=2,
                       seq_len=10, channels=2, stride=1, test_fraction=0.4)
    train, test = datamodule.dataset("train"), datamodule.dataset("test")
    assert len(train) == 21 and len(test) == 11
    storage = train.series.untyped_storage()
    assert storage.nbytes() == 50 * 2 * 4 and storage.data_ptr() == test.series.untyped_storage().data_ptr()
    low, high = expected[:30].min(0), expected[:30].max(0)
    scaled = torch.as_tensor(2 * (expected - low) / (high - low) - 1, dtype=torch.float32)
    assert torch.equal(train[7]["A"], scaled[7:17]) and torch.equal(test[3]["A"], scaled[33:43])


@pytest.mark.parametrize("kwargs,message", [
    ({"columns": ["a", "z"]}, r"no column \['z'\]"),
    ({"channels": 3}, "data.channels=3"),
    ({"seq_len": 60}, "too few"),
    ({"label_column": None}, r"data.num_classes=2 but no data.label_column: without a column of classes every "
                             r"window's label is 0"),
    ({"num_classes": 1}, r"data.label_column=label holds labels 0..1, outside 0..0: set data.num_classes=2"),
    ({"source": "parquet"}, r"data.source='parquet' must be one of"),
    ({"csv_path": None}, r"data.source=csv needs data.csv_path=/path/to/series.csv"),
    ({"csv_path": "nowhere.csv"}, r"data.csv_path=.*/nowhere.csv does not exist: point it at a CSV file"),
    ({"csv_path": "empty.csv"}, r"data.csv_path=.*empty.csv holds no data rows"),
    ({"csv_path": "header.csv"}, r"data.csv_path=.*header.csv holds no data rows"),
])
def test_csv_errors_name_the_setting(tmp_path, kwargs, message):
    write_csv(tmp_path / "s.csv", 50)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("a,b,label\n")
    if kwargs.get("csv_path") in ("nowhere.csv", "empty.csv", "header.csv"):   # in tmp_path, not the working folder
        kwargs = {**kwargs, "csv_path": str(tmp_path / kwargs["csv_path"])}
    settings = {"source": "csv", "csv_path": str(tmp_path / "s.csv"), "channels": 2, "seq_len": 10,
                "label_column": "label", "num_classes": 2, **kwargs}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        sines(**settings)


@pytest.mark.parametrize("line, message", [
    ("1.5,nan,0", r"column 'b' holds 'nan' on line 3: every value must be a finite number"),
    ("1.5,inf,0", r"column 'b' holds 'inf' on line 3"),
    ("1.5,2,0.5", r"label column 'label' holds '0.5' on line 3: labels are class indices"),
    ("1.5,two,0", r"column 'b' is not numeric \('two' on line 3: could not convert"),
    ("1.5", r"line 3 has 1 fields, the header has 3"),                 # or an unquoted comma: 4
    ("1.5,NA,0", r"column 'b' has no value \('NA'\) on line 3: every value must be a finite number"),
    ("1.5,,0", r"column 'b' has no value \(''\) on line 3"),
    ("\n\n1.5,nan,0", r"column 'b' holds 'nan' on line 5"),   # blank lines are passed over, and counted
])
def test_csv_values_that_are_not_finite_or_labels_that_are_not_whole_are_named_by_line(tmp_path, line, message):
    """float() reads nan and inf: they would scale a whole channel to NaN; 2.7 would be class 2."""
    write_csv(tmp_path / "s.csv", 50)
    rows = (tmp_path / "s.csv").read_text().splitlines()
    rows[2] = line
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=message):
        sines(source="csv", csv_path=str(tmp_path / "s.csv"), channels=2, seq_len=10, label_column="label",
              num_classes=2)


def test_numbers_as_column_names_pass_from_the_command_line(train_cfg, tmp_path):
    """A header of years: Hydra reads `++data.columns=[2019,2020]` and `++data.label_column=2024` as
    numbers, which the refusal of a headless file suggests; they are taken as the names."""
    from src.utils.config_checks import check_argument_types
    (tmp_path / "years.csv").write_text("2019,2020,2024\n" + "".join(f"{i},{-i},{i % 2}\n" for i in range(80)))
    cfg = train_cfg("model=rgan", "data=csv_series", f"data.csv_path={tmp_path / 'years.csv'}",
                    "++data.columns=[2019,2020]", "++data.label_column=2024", "data.channels=2", "data.num_classes=2",
                    "data.seq_len=10")
    assert list(cfg.data.columns) == [2019, 2020] and cfg.data.label_column == 2024   # (numbers, as Hydra reads them)
    check_argument_types(cfg.data, "data")
    series = hydra.utils.instantiate(cfg.data).dataset("train")
    assert series.series.shape[-1] == 2 and set(series.labels.tolist()) == {0, 1}
    one = train_cfg("model=rgan", "data=csv_series", f"data.csv_path={tmp_path / 'years.csv'}", "++data.columns=2020",
                    "++data.label_column=null", "data.channels=1", "data.num_classes=1", "data.seq_len=10")
    check_argument_types(one.data, "data")   # one number, not a list of them
    assert hydra.utils.instantiate(one.data).dataset("train").series.shape[-1] == 1


def test_csv_files_that_would_train_on_something_else_are_refused_or_warned(tmp_path, caplog):
    """A file without a header lost its first values to column names; `data.columns=a` on the
    command line arrives as a string (its letters were taken as columns); a negative label was
    answered with a num_classes; a test part beyond the training range is said."""
    expected = write_csv(tmp_path / "s.csv", 50)
    rows = (tmp_path / "s.csv").read_text().splitlines()
    (tmp_path / "headless.csv").write_text("\n".join(rows[1:]) + "\n")
    with pytest.raises(ValueError, match=r"headless.csv: line 1 \(.*\) looks like data, not a header row"):
        sines(source="csv", csv_path=str(tmp_path / "headless.csv"), channels=3, seq_len=10, num_classes=1)
    named = sines(source="csv", csv_path=str(tmp_path / "headless.csv"), columns=["0.0", "-0.0"], channels=2,
                  seq_len=10, num_classes=1)   # numbers as names, when named so
    assert named.dataset("train").series.shape[-1] == 2
    one = sines(source="csv", csv_path=str(tmp_path / "s.csv"), columns="a", channels=1, seq_len=10, num_classes=1)
    assert one.dataset("train").series.shape[-1] == 1
    rows[5] = rows[5].rsplit(",", 1)[0] + ",-1"
    (tmp_path / "negative.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"data.label_column=label holds -1 \(first in data row 5\): labels are "
                                         r"classes 0..K-1"):
        sines(source="csv", csv_path=str(tmp_path / "negative.csv"), columns=["a", "b"], label_column="label",
              num_classes=2, channels=2, seq_len=10).dataset("train")
    with caplog.at_level("WARNING", logger="src.data.sequences"):
        datamodule = sines(source="csv", csv_path=str(tmp_path / "s.csv"), columns=["a", "b"], channels=2,
                           seq_len=10, test_fraction=0.4, num_classes=1)
        datamodule.dataset("train")
    assert "of the test part's values lie outside the training part's range" in caplog.text
    low, high = datamodule.scale
    assert np.allclose(low, expected[:30, :2].min(0)) and np.allclose(high, expected[:30, :2].max(0))


def test_eval_writes_series_samples_in_the_datas_units_and_their_labels(tmp_path):
    """samples.npy of CSV data: the data's units (the [-1, 1] values beside it), row i drawn for
    test series i, whose label labels.npy holds."""
    from types import SimpleNamespace
    from src.utils.evaluation import evaluate_series
    real = torch.rand(6, 10, 2) * 2 - 1
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    loader = [{"A": real[:3], "label": labels[:3]}, {"A": real[3:], "label": labels[3:]}]
    model = SimpleNamespace(num_classes=2, evaluation_pair=lambda batch, stream: (batch["A"], batch["A"] / 2))
    low, high = np.array([10.0, -5.0]), np.array([20.0, 5.0])
    evaluate_series(model, loader, tmp_path, scale=(low, high))
    assert np.allclose(np.load(tmp_path / "samples.npy"), ((real / 2).double().numpy() + 1) / 2 * (high - low) + low)
    assert np.allclose(np.load(tmp_path / "samples_scaled.npy"), (real / 2).numpy())
    assert np.array_equal(np.load(tmp_path / "labels.npy"), labels.numpy())


def test_discriminator_decides_per_step_and_the_condition_reaches_every_step():
    torch.manual_seed(0)
    G = RecurrentGenerator(latent_dim=3, channels=2, seq_len=7, hidden=8, num_classes=2)
    D = RecurrentDiscriminator(channels=2, hidden=8, num_classes=2)
    z = torch.randn(4, 7 * 3)
    x = G(z, torch.tensor([0, 0, 1, 1]))
    assert x.shape == (4, 7, 2) and x.abs().max() <= 1
    assert D(x, torch.tensor([0, 0, 1, 1])).shape == (4, 7)
    assert not torch.allclose(G(z, torch.zeros(4, dtype=torch.long)), G(z, torch.ones(4, dtype=torch.long)))
    # A step's decision depends on the steps before it only (the recurrence runs forward).
    y = x.clone()
    y[:, 5:] = 0
    labels = torch.tensor([0, 1, 0, 1])
    assert torch.allclose(D(x, labels)[:, :5], D(y, labels)[:, :5]) and not torch.allclose(D(x, labels), D(y, labels))


def test_the_sample_mmd_kernel_is_fixed_by_the_real_series():
    """The bandwidth comes from the real series alone: the MMD of a generator against the test
    set is measured with one kernel whatever it generates. From the pooled sample, a generator
    far off (or collapsed) would widen (or narrow) the kernel and read as closer than it is."""
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(60, 30, 5, generator=g), torch.randn(60, 30, 5, generator=g)
    sigma = (float(torch.pdist(real.flatten(1).double()).pow(2).median()) / 2) ** 0.5
    assert sample_mmd2(real, fake) == pytest.approx(mmd2_unbiased(real, fake, bandwidth=sigma), rel=1e-9)
    assert abs(sample_mmd2(real, fake)) < 0.01 and sample_mmd2(real, fake + 3) > 0.5
    # Far off, the kernel between real and fake is ~0 whatever the distance: one value, where the
    # pooled bandwidth grows with the distance and the value with it.
    assert sample_mmd2(real, fake + 100) == pytest.approx(sample_mmd2(real, fake + 1000), rel=1e-6)
    assert mmd2_unbiased(real, fake + 100) != pytest.approx(mmd2_unbiased(real, fake + 1000), rel=1e-3)


def test_a_conditional_model_of_one_class_is_refused(train_cfg):
    """One label for every series: RCGAN's condition would say nothing and its TSTR score 1.0."""
    with pytest.raises(ValueError, match=r"model.num_classes=1: a conditional model needs two classes or more"):
        run_training(train_cfg("model=rcgan", "data.num_classes=1", "max_iters=1", *NO_EVALUATION))


@pytest.mark.parametrize("name", ["rgan", "rcgan"])
def test_iteration_and_mmd_evaluation_and_plotted_grids(train_cfg, name):
    cfg = train_cfg(f"model={name}", "max_iters=2", "++callbacks.latent=null", "++callbacks.shapes_truth=null")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert model.num_classes == (cfg.data.num_classes if name == "rcgan" else 0)
    steps = record_player_steps(model)
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), callbacks=build_callbacks(cfg, None),
                         logger=pl.loggers.CSVLogger(cfg.paths.output_dir))   # the LR monitor needs one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    # FID/KID of the default callbacks has no images to score here: off, without a warning
    fid_kid = next(cb for cb in trainer.callbacks if isinstance(cb, FidKidCallback))
    assert not fid_kid.enabled and not [w for w in caught if "FidKid" in str(w.message)]
    assert steps == 2 * ([("discriminator",)] * 5 + [("generator",)])
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["eval/mmd2_samples"])) and "eval/fid" not in metrics
    # The value is the MMD between the test series and one sample each (latents fixed by index).
    test = trainer.datamodule.dataset("test", train=False)
    batch = trainer.datamodule.collate([test[i] for i in range(len(test))])
    real, fake = model.evaluation_pair(batch, "samples")
    assert float(metrics["eval/mmd2_samples"]) == pytest.approx(sample_mmd2(real, fake), rel=1e-6)
    grid = np.asarray(Image.open(Path(cfg.paths.output_dir) / "samples" / "iter_0000002.png"))
    assert grid.shape[0] == 2 * (48 + 4) and (grid < 128).any()   # two rows of line plots


@pytest.mark.parametrize("name", ["rgan", "rcgan"])
def test_sample_mmd_under_ddp_equals_the_single_process_value(train_cfg, tmp_path, name):
    """Each rank samples its block of the test series (latents seeded by item index, RCGAN's by
    its conditions too) and the rows are gathered: two ranks give one process's MMD. (Learning
    rates 0, the discriminator's own SGD rate included, keep both runs' weights at the same
    seeded initialisation.)"""
    single, ddp = single_and_two_rank_metrics(train_cfg, tmp_path, f"model={name}", "max_iters=1",
                                              "model.optimizer.lr=0", "model.optimizer.players.discriminator.lr=0")
    assert math.isfinite(single["eval/mmd2_samples"])
    assert ddp["eval/mmd2_samples"] == pytest.approx(single["eval/mmd2_samples"], rel=1e-6, abs=1e-9)


def test_wgangp_critic_on_series(train_cfg):
    """RGAN's per-step critic trains with the gradient penalty on series: the term is in its loss."""
    model = fit_briefly(train_cfg("model=rgan", "loss=wgangp", "max_iters=1", *NO_EVALUATION))
    penalties = {k: float(v) for k, v in model.trainer.callback_metrics.items() if k.endswith("gp")}
    assert penalties and all(math.isfinite(v) and v > 0 for v in penalties.values()), penalties
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_gradient_penalty_mixes_series_sample_by_sample():
    """One mixing weight per series (B, T, C), not per step or channel: with fake series at zero
    and a critic whose gradient is its input, each series' gradient norm is its weight times its
    real series' norm."""
    real, fake = torch.randn(5, 7, 3), torch.zeros(5, 7, 3)

    def critic(x):   # a score per time step, as RGAN's critic gives: d/dx sum(x^2)/2 = x
        return (x ** 2).sum(-1) / 2
    torch.manual_seed(0)
    penalty = gradient_penalty(critic, real, fake)
    torch.manual_seed(0)
    alpha = torch.rand(5)
    expected = ((alpha * real.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)


def test_resume_continues_the_run(train_cfg, tmp_path):
    assert_resume_continues_the_run(train_cfg, tmp_path, ["model=rcgan", *NO_EVALUATION])


def test_image_data_is_refused_with_the_fix(train_cfg):
    with pytest.raises(ValueError, match=r"model=rgan .*data=sines"):
        run_training(train_cfg("model=rgan", "data=shapes", *NO_EVALUATION))


def test_series_plot_draws_each_value_where_it_belongs():
    constant = torch.full((1, 5, 1), 0.5)   # y = 0.5: a quarter of the way down
    image = plot_series(constant, height=41, width=21)
    assert image.shape == (1, 3, 41, 21)
    dark_rows = (image[0] < 0.9).any(0).any(1).nonzero().flatten().tolist()
    assert dark_rows == [10]


def test_eval_writes_series_samples_a_plot_and_their_mmd(train_cfg, tmp_path, shared_data_dir):
    import json

    from hydra.core.global_hydra import GlobalHydra

    from conftest import compose_train_cfg
    from src.utils.evaluation import run_evaluation

    cfg = train_cfg("model=rcgan", "max_iters=2", *NO_EVALUATION)
    run_training(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    data = cfg.data
    eval_cfg = compose_train_cfg(eval_cfg_overrides(data, ckpt), tmp_path / "eval", shared_data_dir,
                                 config_name="eval")
    try:
        results = run_evaluation(eval_cfg)
    finally:
        GlobalHydra.instance().clear()
    out = Path(eval_cfg.output_dir)
    samples = np.load(out / "samples.npy")
    assert samples.shape == (data.n_test, data.seq_len, data.channels) and np.abs(samples).max() <= 1
    # the measure the training callback logs: the samples against the test series, the kernel fixed by the latter
    test = hydra.utils.instantiate(eval_cfg.data).dataset("test", train=False)
    real = torch.stack([test[i]["A"] for i in range(len(test))])
    assert results["samples"]["mmd2"] == pytest.approx(sample_mmd2(real, torch.from_numpy(samples)), rel=1e-6)
    assert json.loads((out / "metrics.json").read_text())["metrics"]["samples"]["mmd2"] == results["samples"]["mmd2"]
    assert np.asarray(Image.open(out / "samples.png")).shape[0] == 2 * (48 + 4)
    # RCGAN's own evaluation: a classifier of the condition trained on samples / on real series
    assert 0 <= results["samples"]["tstr"] <= 1 and 0 <= results["samples"]["trtr"] <= 1
    assert np.array_equal(np.load(out / "labels.npy"), test.labels)   # sample i drawn for test series i's label
    untrained = compose_train_cfg([*eval_cfg_overrides(data, ckpt), "tstr=false"], tmp_path / "no_tstr",
                                  shared_data_dir, config_name="eval")
    try:
        assert "tstr" not in run_evaluation(untrained)["samples"]
    finally:
        GlobalHydra.instance().clear()


def eval_cfg_overrides(data, ckpt) -> list[str]:
    """eval.py's command line for a checkpoint of the sines data `data`."""
    return [f"ckpt_path={ckpt}", "data=sines", f"data.seq_len={data.seq_len}", f"data.channels={data.channels}",
            f"data.n_test={data.n_test}", f"data.n_train={data.n_train}"]


def test_tstr_trains_one_fixed_classifier_on_either_side():
    from src.metrics.tstr import classifier_accuracy, tstr_trtr
    g = torch.Generator().manual_seed(0)

    def series(n: int, shuffled: bool = False):   # class k: a constant level k, plus noise
        labels = torch.arange(n) % 3
        x = labels[:, None, None].float() + 0.3 * torch.randn(n, 10, 2, generator=g)
        return x, (labels[torch.randperm(n, generator=g)] if shuffled else labels)

    real_train, real_test = series(300), series(90)
    assert classifier_accuracy(*real_train, *real_test, 3) > 0.95
    assert classifier_accuracy(*series(300, shuffled=True), *real_test, 3) < 0.6   # labels that mean nothing
    same = tstr_trtr(real_train, real_train, real_test, 3)
    assert same["tstr"] == same["trtr"]   # the same data gives the same (seeded) classifier
    state = torch.get_rng_state()
    tstr_trtr(series(300, shuffled=True), real_train, real_test, 3)
    assert torch.equal(torch.get_rng_state(), state)
