"""metrics.csv has one row per logged step, in step order, whatever order the values come in; its
train/kimg column counts the images trained on."""
import csv
import io
from pathlib import Path

import pytest

from conftest import NO_EVALUATION
from src.utils.csv_logger import StepRowsCSVLogger


def read_rows(logger) -> list[dict]:
    with open(Path(logger.log_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def log(logger, metrics: dict, step: int) -> None:
    """As Lightning's logger connector and the callbacks do: log, then save."""
    logger.log_metrics(metrics, step=step)
    logger.save()


def test_values_of_one_step_share_a_row_and_rows_follow_the_steps(tmp_path):
    logger = StepRowsCSVLogger(tmp_path)
    log(logger, {"lr/generators": 0.1}, 0)              # the learning-rate monitor, at the batch's start
    log(logger, {"eval/fid": 30.0}, 1)            # an evaluation at the batch's end, logged at the next step
    log(logger, {"train/G": 2.0, "epoch": 0}, 0)  # the losses, after the batch's callbacks
    log(logger, {"lr/generators": 0.1}, 1)
    log(logger, {"train/G": 1.5, "epoch": 0}, 1)
    log(logger, {"lr/generators": 0.05}, 2)
    log(logger, {"train/G": 1.0, "epoch": 0}, 2)
    logger.finalize("success")
    rows = read_rows(logger)
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    assert [(r["lr/generators"], r["train/G"]) for r in rows] == [("0.1", "2.0"), ("0.1", "1.5"), ("0.05", "1.0")]
    assert [r["eval/fid"] for r in rows] == ["", "30.0", ""]


def test_a_value_for_a_step_already_written_joins_its_row(tmp_path):
    logger = StepRowsCSVLogger(tmp_path)
    for step in range(3):
        log(logger, {"train/G": float(step)}, step)
    log(logger, {"eval/kid": 7.0}, 0)   # late: step 0 is in the file already
    logger.finalize("success")
    rows = read_rows(logger)
    assert [(r["step"], r["train/G"], r["eval/kid"]) for r in rows] == [("0", "0.0", "7.0"), ("1", "1.0", ""),
                                                                         ("2", "2.0", "")]


def test_a_resume_takes_up_a_file_of_several_rows_per_step_with_every_value(tmp_path):
    """A metrics.csv written before rows were merged has two or three half-empty rows per
    step, out of order; a resume kept one row per step, and the run's earlier FIDs and learning
    rates were gone, with no replaced file and no word."""
    folder = tmp_path / "lightning_logs" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("epoch,eval/fid,lr/generators,step,train/G\n"
                                        ",,0.1,1,\n0,,,1,2.0\n,30.0,,2,\n,,0.1,2,\n0,,,2,1.5\n,,0.1,3,\n0,,,3,1.0\n")
    logger = StepRowsCSVLogger(tmp_path)
    log(logger, {"train/G": 0.5, "epoch": 0}, 2)   # resumed at step 2: step 3 is the stopped run's
    logger.finalize("success")
    rows = read_rows(logger)
    assert [(r["step"], r["eval/fid"], r["lr/generators"], r["train/G"]) for r in rows] == [
        ("1", "", "0.1", "2.0"), ("2", "30.0", "0.1", "0.5")]
    (replaced,) = folder.glob("metrics.replaced_*.csv")
    with open(replaced, newline="") as f:
        assert [(r["step"], r["lr/generators"], r["train/G"]) for r in csv.DictReader(f)] == [("3", "0.1", "1.0")]


def test_the_rows_up_to_a_checkpoint_reach_the_file_with_it(tmp_path):
    """The latest step's row waits for a later step; the evaluation logged just before a save
    waited for the next loss log, about 50 iterations on, and a process killed meanwhile lost it
    (the resumed run does not repeat it)."""
    logger = StepRowsCSVLogger(tmp_path / "csv")
    log(logger, {"train/G": 1.0}, 49)
    log(logger, {"eval/fid": 30.0}, 50)   # held back: the latest step
    assert [r["step"] for r in read_rows(logger)] == ["49"]
    logger.after_save_checkpoint(None)
    assert [(r["step"], r["eval/fid"]) for r in read_rows(logger)] == [("49", ""), ("50", "30.0")]
    log(logger, {"lr/generators": 0.1}, 50)   # the step's later value joins its row
    logger.finalize("success")
    assert [(r["step"], r["eval/fid"], r["lr/generators"]) for r in read_rows(logger)] == [
        ("49", "", ""), ("50", "30.0", "0.1")]


def test_a_runs_metrics_csv_has_a_whole_row_per_iteration(train_cfg):
    """Losses, learning rates and the evaluations (FID/KID every 2 iterations here) of a smoke run:
    each step once, in order, every row with its losses and rates."""
    from src.utils.run import run_training

    cfg = train_cfg("model=cyclegan", "max_iters=4", "++callbacks.latent=null", "++callbacks.shapes_truth=null")
    run_training(cfg)
    with open(next(Path(cfg.paths.output_dir).glob("csv/version_*/metrics.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[:4] == [0, 1, 2, 3]
    assert all(r["train/G"] and r["lr/generators"] for r in rows if int(r["step"]) < 4)
    assert [int(r["step"]) for r in rows if r["eval/fid"]] == [2, 4]


def kimg_column(cfg) -> list[float]:
    with open(next(Path(cfg.paths.output_dir).glob("csv/version_*/metrics.csv")), newline="") as f:
        return [float(r["train/kimg"]) for r in csv.DictReader(f) if r.get("train/kimg")]


def test_train_kimg_counts_the_images_of_every_iteration_across_batch_sizes_and_resumes(train_cfg, tmp_path):
    """The axis on which runs of other batch sizes line up; a resumed run continues the count,
    also from a checkpoint written before it was kept (estimated from the iterations)."""
    import torch

    from src.utils.run import run_training

    common = ("model=cyclegan", "data.max_dataset_size=8", *NO_EVALUATION)
    runs = {}
    for batch in (1, 2):
        cfg = train_cfg(*common, "max_iters=4", f"data.batch_size={batch}")
        cfg.paths.output_dir = str(tmp_path / f"batch{batch}")
        run_training(cfg)
        runs[batch] = kimg_column(cfg)
    assert runs[1] == pytest.approx([0.001, 0.002, 0.003, 0.004])
    assert runs[2] == pytest.approx([0.002, 0.004, 0.006, 0.008])

    first = train_cfg(*common, "max_iters=2")
    first.paths.output_dir = str(tmp_path / "first")
    run_training(first)
    last = Path(first.paths.output_dir, "checkpoints", "last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["images_seen"] == 2
    del checkpoint["images_seen"]
    torch.save(checkpoint, tmp_path / "older.ckpt")
    for name, path in (("resumed", last), ("from_older", tmp_path / "older.ckpt")):
        resumed = train_cfg(*common, "max_iters=4", f"ckpt_path={path}")
        resumed.paths.output_dir = str(tmp_path / name)
        run_training(resumed)
        assert kimg_column(resumed) == pytest.approx([0.003, 0.004]), name


def test_the_learning_rate_rows_carry_the_image_count_of_their_steps_loss_rows(train_cfg, monkeypatch):
    """wandb plots `lr/*` over train/kimg only from rows that hold both: each rate row (written
    apart, at its batch's start) carries the count its step's loss row does (batch 2: 2 images a step)."""
    from src.utils.csv_logger import StepRowsWriter
    from src.utils.run import run_training

    calls = []
    plain = StepRowsWriter.log_metrics
    monkeypatch.setattr(StepRowsWriter, "log_metrics",
                        lambda self, metrics, step=None: (calls.append((step, dict(metrics))), plain(self, metrics, step)))
    cfg = train_cfg("model=cyclegan", "data.max_dataset_size=8", "data.batch_size=2", "max_iters=3", *NO_EVALUATION)
    run_training(cfg)
    rates = {step: row["train/kimg"] for step, row in calls if "lr/generators" in row}
    losses = {step: row["train/kimg"] for step, row in calls if "train/G" in row}
    assert sorted(rates) == sorted(losses) == [0, 1, 2]
    assert rates == pytest.approx(losses) and losses == pytest.approx({0: 0.002, 1: 0.004, 2: 0.006})


def test_a_resumed_run_goes_on_in_its_metrics_csv(train_cfg, tmp_path):
    """Lightning started a new csv/version_N at every resume: a run requeued three times was split
    over four files, the older ones holding the iterations the resume repeats. The resumed run
    continues the file: the stopped run's rows past its checkpoint are set aside in a file of
    their own, the resume step's evaluation stays, and the file reads as one unbroken run."""
    from src.utils.run import run_training

    common = ("model=cyclegan", "max_iters=4", "++callbacks.latent=null", "++callbacks.shapes_truth=null")

    def metrics(run_dir: Path) -> list[dict]:
        (path,) = Path(run_dir, "csv").glob("version_*/metrics.csv")
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    straight = train_cfg(*common)
    straight.paths.output_dir = str(tmp_path / "straight")
    run_training(straight)
    # The stopped run got to iteration 3 (rows up to step 3 written), its last checkpoint at 2.
    first = train_cfg(*common, "max_iters=3", "callbacks.model_checkpoint.every_n_iters=2",
                      "callbacks.model_checkpoint.save_top_k=-1")
    run_training(first)
    run_dir = Path(first.paths.output_dir)
    run_training(train_cfg(*common, f"ckpt_path={run_dir}/checkpoints/iter_0000002.ckpt"))
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]
    rows, expected = metrics(run_dir), metrics(straight.paths.output_dir)
    assert [r["step"] for r in rows] == [r["step"] for r in expected] == ["0", "1", "2", "3", "4"]
    assert rows[2]["eval/fid"] and rows[2]["train/G"]   # the resume step: its evaluation kept, its losses new
    for row, unbroken in zip(rows, expected):
        assert row.keys() == unbroken.keys() and row["train/G"] == unbroken["train/G"], row["step"]
    (aside,) = (run_dir / "csv" / "version_0").glob("metrics.replaced_*.csv")
    with open(aside, newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["3"]   # the stopped run's work past its checkpoint


def test_a_rolled_back_run_is_one_run_in_tensorboard_without_its_abandoned_steps(train_cfg):
    """TensorBoard got a new version_N at every resume, as the CSV logger did: a requeued run was
    several runs there. The resumed run writes into the same folder, and TensorBoard drops the
    abandoned branch's events past the resumed checkpoint's step (its purge step); that step's
    losses, logged by both, show twice with the same value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from src.utils.run import run_training

    common = ("model=cyclegan", "logger=tensorboard", "max_iters=3", "++callbacks.latent=null",
              "++callbacks.shapes_truth=null", "callbacks.model_checkpoint.every_n_iters=1",
              "callbacks.model_checkpoint.save_top_k=-1")
    first = train_cfg(*common)
    run_training(first)
    run_dir = Path(first.paths.output_dir)
    run_training(train_cfg(*common, f"ckpt_path={run_dir}/checkpoints/iter_0000001.ckpt"))
    assert [p.name for p in (run_dir / "tensorboard").iterdir()] == ["version_0"]
    assert len(list((run_dir / "tensorboard" / "version_0").glob("events.out.tfevents.*"))) == 2
    accumulator = EventAccumulator(str(run_dir / "tensorboard" / "version_0"))
    accumulator.Reload()
    events = accumulator.Scalars("train/G")
    assert [event.step for event in events] == [0, 1, 1, 2] and events[1].value == events[2].value
    # A new run in the folder (no checkpoint) purges the earlier run's events, as the CSV logger
    # sets its rows aside
    run_training(train_cfg(*common[:2], "max_iters=2", *common[3:], "callbacks.model_checkpoint.dirpath=${paths.output_dir}/again"))
    accumulator = EventAccumulator(str(run_dir / "tensorboard" / "version_0"))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("train/G")] == [0, 1]


def test_a_rewrite_cut_short_leaves_the_old_file_and_a_resume_drops_a_row_cut_short(tmp_path, monkeypatch, caplog):
    """A job killed while the file is rewritten (here, the disk failing the write) leaves the old
    file, not the run's history cut short; an append cut short leaves a row without its step,
    which the resumed run drops (and says so) instead of failing on it."""
    import os

    logger = StepRowsCSVLogger(tmp_path)
    for step in range(3):
        log(logger, {"eval/kid": 1.0, "train/G": float(step)}, step)
    logger.finalize("success")
    metrics = Path(logger.log_dir, "metrics.csv")
    before = metrics.read_bytes()

    def disk_fails(descriptor):
        raise OSError("No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", disk_fails)
        with pytest.raises(OSError, match="No space left"):
            log(StepRowsCSVLogger(tmp_path), {"train/G": 9.0}, 2)   # a resume at step 2 rewrites the file
    assert metrics.read_bytes() == before and sorted(p.name for p in metrics.parent.iterdir()) == ["metrics.csv"]
    with open(metrics, "a") as f:
        f.write("1.0,1,9.")   # a row cut short in its last field (and, were it step 12's, in its step)
    resumed = StepRowsCSVLogger(tmp_path)
    with caplog.at_level("WARNING"):
        log(resumed, {"eval/kid": 1.0, "train/G": 3.0}, 3)
    resumed.finalize("success")
    assert "1 row(s) cut short by a writer that was stopped are dropped" in caplog.text
    assert [(r["step"], r["train/G"]) for r in read_rows(resumed)] == [("0", "0.0"), ("1", "1.0"), ("2", "2.0"),
                                                                     ("3", "3.0")]


def test_sample_grids_and_the_latent_tsne_reach_tensorboard_at_their_iteration(train_cfg):
    """Every other metric's x-axis is the iteration (global_step counts each player's step):
    images logged at global_step would sit at twice (CycleGAN) their iteration."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from src.utils.run import run_training

    cfg = train_cfg("model=cyclegan", "logger=tensorboard", "max_iters=4")
    run_training(cfg)
    accumulator = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard" / "version_0"),
                                   size_guidance={"images": 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Images("samples")] == [2, 4]
    assert [event.step for event in accumulator.Images("latent_tsne")] == [2, 4]


def test_evaluation_rows_carry_the_image_count_for_a_kimg_axis():
    """wandb plots a metric over train/kimg (the README's advice) only from rows that hold both:
    the loss rows had it and the evaluation rows (FID, latent MMD, rho) did not."""
    from types import SimpleNamespace

    from src.utils.metric_publishing import publish_metrics

    class Recording:
        def __init__(self):
            self.rows = []

        def log_metrics(self, metrics, step):
            self.rows.append((step, metrics))

    logger = Recording()
    trainer = SimpleNamespace(callback_metrics={}, is_global_zero=True, loggers=[logger],
                              lightning_module=SimpleNamespace(images_seen=2500))
    publish_metrics(trainer, {"eval/fid": 31.5}, step=5)
    assert logger.rows == [(5, {"eval/fid": 31.5, "train/kimg": 2.5})]
    assert set(trainer.callback_metrics) == {"eval/fid"}   # what a monitor reads is unchanged
    trainer.lightning_module = None   # a model's step called outside a fit
    publish_metrics(trainer, {"eval/fid": 30.0}, step=6)
    assert logger.rows[-1] == (6, {"eval/fid": 30.0})


def test_a_late_value_for_the_last_rows_rewrites_them_alone(tmp_path, monkeypatch):
    """At every checkpoint the rows up to its evaluation are written, and the iteration's losses
    come after: merged into the rows of that last write in place, not by rewriting the whole
    file (the cost of a long run's logging grew with the square of its length). A value for an
    earlier row, a new column, or a file changed since still rewrite it whole."""
    from src.utils import csv_logger
    logger = StepRowsCSVLogger(tmp_path)
    rewrites = []
    write_rows = csv_logger.StepRowsWriter._write_rows
    monkeypatch.setattr(csv_logger.StepRowsWriter, "_write_rows",
                        lambda self, *args: rewrites.append(args[0]) or write_rows(self, *args))
    log(logger, {"lr/generators": 0.1, "train/G": 0.0, "epoch": 0, "eval/fid": 40.0}, 0)   # the file's columns
    for step in range(50, 200, 50):
        log(logger, {"lr/generators": 0.1}, step)                  # the batch's start
        if step in (50, 150):
            log(logger, {"eval/fid": 30.0 - step / 10}, step + 1)   # the evaluation, logged at the next step
            logger.after_save_checkpoint(None)                     # the checkpoint writes it
        log(logger, {"train/G": float(step), "epoch": 0}, step)    # the losses, after the checkpoint
    logger.finalize("success")
    assert rewrites == []
    rows = read_rows(logger)
    assert [(r["step"], r["lr/generators"], r["train/G"], r["eval/fid"]) for r in rows] == [
        ("0", "0.1", "0.0", "40.0"), ("50", "0.1", "50.0", ""), ("51", "", "", "25.0"), ("100", "0.1", "100.0", ""),
        ("150", "0.1", "150.0", ""), ("151", "", "", "15.0")]
    log(logger, {"eval/kid": 1.0}, 50)   # an earlier row, and a new column
    log(logger, {"train/G": 9.0}, 151)
    log(logger, {"train/G": 8.0}, 200)
    logger.finalize("success")
    assert len(rewrites) == 1
    path = Path(logger.log_dir, "metrics.csv")
    path.write_text(path.read_text().replace("8.0", "8.5"))   # changed by another program since
    log(logger, {"lr/generators": 0.2}, 200)
    logger.finalize("success")
    assert len(rewrites) == 2
    assert [(r["step"], r["train/G"], r["eval/kid"], r["lr/generators"]) for r in read_rows(logger)][1:] == [
        ("50", "50.0", "1.0", "0.1"), ("51", "", "", ""), ("100", "100.0", "", "0.1"), ("150", "150.0", "", "0.1"),
        ("151", "9.0", "", ""), ("200", "8.5", "", "0.2")]
    log(logger, {"lr/generators": 0.125}, 201)
    log(logger, {"lr/generators": 0.0625}, 200)   # a longer value: in place
    logger.finalize("success")
    assert len(rewrites) == 2
    log(logger, {"lr/generators": 0.5}, 200)   # a shorter one: rewritten whole
    logger.finalize("success")
    assert len(rewrites) == 3
    assert [(r["step"], r["lr/generators"]) for r in read_rows(logger)][-2:] == [("200", "0.5"), ("201", "0.125")]



def test_the_last_rows_kept_for_late_values_slide_with_the_file(tmp_path, monkeypatch):
    """The window of rows a late value is merged into in place moves on as rows are appended and
    merged. A window of 2 rows, over 8 steps with late values, merges in place (each merge checks
    the file's bytes at its offset first) and gives the file the whole rewrite gives."""
    from src.utils import csv_logger
    monkeypatch.setattr(csv_logger, "LAST_ROWS", 2)
    files = []
    for in_place in (True, False):
        logger = StepRowsCSVLogger(tmp_path / str(in_place))
        merged_in_place = []
        merge = csv_logger.StepRowsWriter._merge_into_last_rows
        monkeypatch.setattr(csv_logger.StepRowsWriter, "_merge_into_last_rows",
                            lambda self: merged_in_place.append(merge(self)) or merged_in_place[-1])
        if not in_place:
            monkeypatch.setattr(csv_logger.StepRowsWriter, "_merge_into_last_rows", lambda self: False)
        log(logger, {"lr": 0.1, "train/G": 0.0, "eval/fid": 1.0}, 0)
        for step in range(1, 9):
            log(logger, {"lr": 0.1}, step)   # (writes the previous step's late value: a merge)
            log(logger, {"eval/fid": float(step)}, step + 1)
            logger.after_save_checkpoint(None)
            log(logger, {"train/G": float(step) * 1.5}, step)   # late: after the checkpoint's rows
        logger.finalize("success")
        files.append(Path(logger.log_dir, "metrics.csv").read_bytes())
        assert sum(merged_in_place) >= (7 if in_place else 0)
    assert files[0] == files[1]
    rows = list(csv.DictReader(io.StringIO(files[0].decode())))
    assert [(r["step"], r["train/G"]) for r in rows][-2:] == [("8", "12.0"), ("9", "")]


def test_a_failed_runs_last_rows_that_cannot_be_written_leave_the_runs_own_error(tmp_path, monkeypatch, caplog):
    """On a failure's way out (a full disk, which also failed the run) an error writing the rows
    replaced the run's own error, and Lightning's teardown after it did not run. A successful
    run's write error still stops it: its rows would be lost without a word."""
    logger = StepRowsCSVLogger(tmp_path)
    log(logger, {"train/G": 2.0}, 0)

    def disk_full():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logger, "_write_every_row", disk_full)
    with caplog.at_level("WARNING"):
        logger.finalize("failed")
    assert "the last rows could not be written (OSError: [Errno 28] No space left on device)" in caplog.text
    with pytest.raises(OSError, match="No space left"):
        logger.finalize("success")
