"""`optimized_metric`, what a sweep optimises: checked before training, and a diverged run's
value given to Optuna as the worst instead of a NaN that ends the whole study."""
import json
import math
import os
from pathlib import Path

import optuna
import pytest

from src.callbacks.optimized_metric import OptimizedMetricCheck, better_direction
from src.utils.objective import objective_value
from src.utils.run import run_training
from conftest import NO_EVALUATION


def test_a_metric_no_callback_of_the_run_logs_stops_the_run_before_training(train_cfg):
    """The searches' default, truth/AtoB/iou, comes from the shapes ground truth, which is off
    off the shapes data or (here) for grayscale shapes: the trial used to train to its end and
    fail on the missing value."""
    cfg = train_cfg("model=cyclegan", "data.input_nc=1", "data.output_nc=1", "optimized_metric=truth/AtoB/iou")
    with pytest.raises(ValueError, match=r"optimized_metric=truth/AtoB/iou comes from callbacks.shapes_truth, "
                                         r"which is off for this run"):
        run_training(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))   # nothing trained
    with pytest.raises(ValueError, match=r"optimized_metric=latent/mmd2: no callback of this run logs it"):
        run_training(train_cfg("model=cyclegan", "callbacks.latent=null", "optimized_metric=latent/mmd2"))


def test_a_name_the_first_evaluation_did_not_log_stops_the_run_there(train_cfg):
    """eval/kid (the logged name is eval/kid_x100) passed the family check and failed only after
    the trial's whole training; the first evaluation (iteration 2 of 4) decides it now."""
    cfg = train_cfg("model=cyclegan", "optimized_metric=eval/kid", "max_iters=4", "callbacks.latent=null",
                    "callbacks.shapes_truth=null", "callbacks.image_grid=null")
    with pytest.raises(ValueError, match=r"optimized_metric=eval/kid: callbacks.fid_kid evaluated at iteration 2 "
                                         r"without logging it \(the closest: eval/kid_x100"):
        run_training(cfg)


def test_a_name_whose_first_evaluation_is_the_last_is_left_to_the_end_of_the_run(train_cfg):
    """Where the first evaluation is the run's last (every_n_iters past max_iters), the run ends
    with its checkpoint, and the missing name is reported after it."""
    import src.train as train_script
    cfg = train_cfg("model=cyclegan", "optimized_metric=eval/kid", "max_iters=1", "callbacks.latent=null",
                    "callbacks.shapes_truth=null", "callbacks.image_grid=null")
    with pytest.raises(ValueError, match=r"optimized_metric=eval/kid was not logged by this run \(the closest: "
                                         r"eval/kid_x100"):
        train_script.main(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file() and not (checkpoints / "crashed.ckpt").exists()
    # the job fails: its record (and a sweep's table) must not say completed
    record = json.loads((Path(cfg.paths.output_dir) / "final_metrics.json").read_text())
    assert record["status"] == "failed" and "optimized_metric=eval/kid was not logged" in record["error"]
    assert record["iteration"] == 1   # beside what the run did


def test_a_name_logged_by_no_evaluation_is_named_with_the_closest_at_the_end(train_cfg):
    """A name outside the evaluations' families (a loss) can only be told at the end: a
    ValueError naming the setting and the closest logged names, not a KeyError listing all."""
    import src.train as train_script
    with pytest.raises(ValueError, match=r"optimized_metric=train/Gx was not logged by this run \(the closest: "
                                         r"train/G"):
        train_script.main(train_cfg("model=cyclegan", "optimized_metric=train/Gx", "max_iters=1", *NO_EVALUATION))


def test_a_metric_the_run_logs_passes_and_is_returned(train_cfg):
    """The searches' default: the IoU of both directions a CycleGAN translates, not AtoB's alone."""
    metrics = run_training(train_cfg("model=cyclegan", "optimized_metric=truth/iou", "max_iters=2"))
    assert math.isfinite(metrics["truth/iou"]) and metrics["truth/AtoB/iou"] != metrics["truth/BtoA/iou"]
    assert metrics["truth/iou"] == pytest.approx((metrics["truth/AtoB/iou"] + metrics["truth/BtoA/iou"]) / 2)


def test_a_resumed_trial_is_not_stopped_for_its_earlier_evaluations(train_cfg, tmp_path):
    """The evaluations of the run before a resume counted as this fit's: at the resumed fit's first
    iteration the metric was missing from its (fresh) metrics, and the trial stopped as if the
    metric were not logged; a requeued or auto-resumed sweep trial crashed at every resume."""
    common = ["model=cyclegan", "optimized_metric=truth/iou", "callbacks.shapes_truth.every_n_iters=2",
              "callbacks.model_checkpoint.every_n_iters=2", "callbacks.model_checkpoint.save_top_k=-1",
              "++callbacks.fid_kid=null", "++callbacks.latent=null"]
    first = train_cfg(*common, "max_iters=2")
    run_training(first)
    resumed = train_cfg(*common, "max_iters=5",
                        f"ckpt_path={Path(first.paths.output_dir) / 'checkpoints' / 'iter_0000002.ckpt'}")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    assert math.isfinite(run_training(resumed)["truth/iou"])


@pytest.mark.parametrize("metric, better", [("eval/fid", "minimize"), ("eval/fid_AtoB", "minimize"),
                                            ("eval/kid_x100", "minimize"), ("latent/mmd2", "minimize"),
                                            ("truth/AtoB/color_error", "minimize"), ("truth/AtoB/iou", "maximize"),
                                            ("eval/is_samples", "maximize"), ("eval/cls_acc_fake_samples", "maximize"),
                                            ("segmentation/AtoB/label_class_iou", "maximize"), ("train/G", None)])
def test_a_search_going_the_wrong_way_is_refused(metric, better):
    assert better_direction(metric) == better
    OptimizedMetricCheck(metric, better)
    if better is not None:
        wrong = "maximize" if better == "minimize" else "minimize"
        with pytest.raises(ValueError, match=f"hydra.sweeper.direction={wrong}: the search would look for the worst "
                                             f"runs. Set hydra.sweeper.direction={better}"):
            OptimizedMetricCheck(metric, wrong)


def test_a_diverged_trial_is_the_worst_value_and_the_study_goes_on():
    """Optuna refuses a NaN objective, and the Hydra sweeper's own failure handling then raises
    again, ending the study; the worst value in the search's direction is a completed trial."""
    assert objective_value("eval/fid", 3.5, "minimize") == 3.5
    assert objective_value("eval/fid", math.nan, "minimize") == math.inf
    assert objective_value("truth/AtoB/iou", math.nan, "maximize") == -math.inf
    with pytest.raises(ValueError, match="optimized_metric eval/fid is nan: the run diverged"):
        objective_value("eval/fid", math.nan, None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for value in (2.0, objective_value("eval/fid", math.nan, "minimize"), 1.0):
        study.tell(study.ask(), values=[value])
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3 and study.best_value == 1.0


def test_a_trial_stopped_for_diverging_gives_the_search_the_worst_value(train_cfg, monkeypatch):
    """TrainingDiverged stops the run before NaN weights are saved; in a search the trial still
    ends as the worst value, not as the error that would end the study."""
    import gc
    import weakref

    import src.train as train_script
    import src.utils.run as run_module
    from src.models.divergence import TrainingDiverged

    class Model:
        pass

    models = []

    def diverge(cfg):
        model = Model()   # what a run's frames hold: its model, trainer, batch (GPU memory)
        models.append(weakref.ref(model))
        raise TrainingDiverged("Training diverged at iteration 3: train/G is nan")

    monkeypatch.setattr(run_module, "run_training", diverge)
    cfg = train_cfg("model=cyclegan", "optimized_metric=eval/fid")
    monkeypatch.setattr(train_script, "sweeper_direction", lambda: "minimize")
    gc.disable()   # the error's frames form a cycle with main's: only a full collection would free them
    try:
        assert train_script.main(cfg) == math.inf
        assert models[-1]() is None   # released for the next trial
    finally:
        gc.enable()
    # Hydra sees a completed job: its record, which the sweep table reads, says it diverged
    record = json.loads(Path(cfg.paths.output_dir, "final_metrics.json").read_text())
    assert record == {"status": "diverged", "error": "TrainingDiverged: Training diverged at iteration 3: train/G is nan"}
    monkeypatch.setattr(train_script, "sweeper_direction", lambda: None)   # no search: the error stands
    with pytest.raises(TrainingDiverged):
        train_script.main(cfg)


def test_a_single_run_that_fails_records_its_error_in_its_folder(train_cfg, monkeypatch):
    """Sweep jobs got a final_metrics.json saying "failed" and the error; a single run left none,
    so a script collecting many separately started runs (a SLURM array) found only a missing file."""
    import src.train as train_script
    import src.utils.run as run_module

    def refused(cfg):   # by its checks, before its start is recorded
        raise ValueError("ckpt_path=auto found last.ckpt, written by the run of seed=0, and this run is seed=3")

    def fail(cfg):   # in training: past its checks, its start recorded
        Path(cfg.paths.output_dir, "starts", "002_now").mkdir(parents=True)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    cfg = train_cfg("model=cyclegan")
    # an earlier start's record in the folder (a re-run into a fixed hydra.run.dir, a requeued job)
    earlier = Path(cfg.paths.output_dir, "final_metrics.json")
    earlier.parent.mkdir(parents=True)
    earlier.write_text(json.dumps({"status": "completed", "iteration": 100}))
    os.utime(earlier, (earlier.stat().st_mtime - 60,) * 2)
    # A start its checks refused (a sweep extended into the same folder: another job's settings)
    # leaves the record of the run whose checkpoints are there
    monkeypatch.setattr(run_module, "run_training", refused)
    with pytest.raises(ValueError, match="seed=3"):
        train_script.main(cfg)
    assert json.loads(earlier.read_text()) == {"status": "completed", "iteration": 100}
    monkeypatch.setattr(run_module, "run_training", fail)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        train_script.main(cfg)
    record = json.loads(earlier.read_text())
    assert record == {"status": "failed", "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}


def diverging_rank(rank: int) -> None:
    """A spawned rank that stops as a diverged run does (module level: spawn pickles it by name)."""
    from src.models.divergence import TrainingDiverged, diverged_message
    raise TrainingDiverged(diverged_message(f"train/G is nan on rank {rank}", 3))


def test_a_trial_whose_spawned_rank_diverged_gives_the_search_the_worst_value(train_cfg, monkeypatch):
    """Under ddp_spawn the main process gets torch's ProcessRaisedException, the rank's error as
    text: the trial is still the worst value, not the error that ends the study."""
    import torch.multiprocessing as mp

    import src.train as train_script
    import src.utils.run as run_module

    monkeypatch.setattr(run_module, "run_training", lambda cfg: mp.start_processes(diverging_rank, nprocs=1,
                                                                                    start_method="spawn"))
    monkeypatch.setattr(train_script, "sweeper_direction", lambda: "minimize")
    cfg = train_cfg("model=cyclegan", "optimized_metric=eval/fid")
    assert train_script.main(cfg) == math.inf
    record = json.loads(Path(cfg.paths.output_dir, "final_metrics.json").read_text())
    assert record["status"] == "diverged"
    assert record["error"].startswith("TrainingDiverged: Training diverged at iteration 3: "
                                      "train/G is nan on rank 0.")
    # any other error of a spawned rank still ends the trial as an error
    monkeypatch.setattr(run_module, "run_training", lambda cfg: mp.start_processes(math.log, nprocs=1,  # log(rank 0)
                                                                                    start_method="spawn"))
    with pytest.raises(mp.ProcessRaisedException, match="ValueError: math domain error"):
        train_script.main(train_cfg("model=cyclegan", "optimized_metric=eval/fid"))
