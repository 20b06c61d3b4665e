"""`ckpt_path=auto`: the same command, started again in the same run directory, continues the
run from its most advanced readable checkpoint, and starts it when there is none."""
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from conftest import NO_EVALUATION, most_advanced_checkpoint
from src.models.cyclegan import CycleGAN
from src.models.pix2pix import Pix2Pix
from src.models.progan import ProGAN
from src.models.ugatit import UGATIT
from src.models.checkpoint_fit import changed_settings, check_checkpoint_file
from src.utils.run import run_training

PIX2PIX = ("model=pix2pix", "data=shapes_paired", *NO_EVALUATION)


def save_progress(path: Path, global_step: int) -> Path:
    torch.save({"global_step": global_step}, path)
    return path


def test_the_most_advanced_readable_checkpoint_is_chosen_and_a_cut_file_is_named(tmp_path, caplog):
    checkpoints, run_dir = tmp_path / "checkpoints", tmp_path
    checkpoints.mkdir()
    save_progress(checkpoints / "iter_0000002.ckpt", 4)
    save_progress(checkpoints / "last.ckpt", 8)
    crashed = save_progress(checkpoints / "crashed.ckpt", 11)     # the work after last.ckpt
    assert most_advanced_checkpoint(checkpoints, run_dir) == crashed

    hpc = save_progress(run_dir / "hpc_ckpt_1.ckpt", 14)          # Lightning's SLURM save, in the run dir
    assert most_advanced_checkpoint(checkpoints, run_dir) == hpc

    whole = hpc.read_bytes()
    hpc.write_bytes(whole[: len(whole) // 2])                      # a copy cut short
    with caplog.at_level(logging.WARNING):
        assert most_advanced_checkpoint(checkpoints, run_dir) == crashed
    assert f"passing over {hpc}, which cannot be read as a checkpoint (not a complete zip archive" in caplog.text


def refuse_reads_of(path: Path, monkeypatch, where: str) -> None:
    """Make the system refuse reads of `path`: its opening for the zip directory's check (where a
    file this user may not read fails first) or its contents (torch.load)."""
    import io
    if where == "directory":
        real_open = io.open

        def refusing_open(file, *args, **kwargs):
            if isinstance(file, (str, Path)) and Path(file) == path:
                raise PermissionError(13, "Permission denied")
            return real_open(file, *args, **kwargs)
        monkeypatch.setattr(io, "open", refusing_open)
    else:
        real_load = torch.load

        def failing_load(file, *args, **kwargs):
            if Path(file) == path:
                raise OSError(5, "Input/output error")
            return real_load(file, *args, **kwargs)
        monkeypatch.setattr(torch, "load", failing_load)


@pytest.mark.parametrize("where", ["directory", "contents"])
def test_a_read_the_system_refuses_stops_auto_rather_than_pass_over_the_file(tmp_path, monkeypatch, where):
    """A whole last.ckpt on a file system that fails a read (permissions, an I/O error): passing
    over it would resume from the older iter_*.ckpt, whose next save overwrites last.ckpt.
    zipfile.is_zipfile answers False for such a read, as for a file cut short."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    save_progress(checkpoints / "iter_0000002.ckpt", 4)
    last = save_progress(checkpoints / "last.ckpt", 8)
    refuse_reads_of(last, monkeypatch, where)
    with pytest.raises(OSError, match=rf"reading {last} failed \((Permission denied|Input/output error)\); the "
                                      r"file may be whole"):
        most_advanced_checkpoint(checkpoints, tmp_path)


def test_auto_without_a_checkpoint_callback_names_the_setting_it_reads(train_cfg):
    from src.utils.run import run_training
    with pytest.raises(ValueError, match=r"ckpt_path=auto looks for checkpoints in callbacks.model_checkpoint.dirpath, "
                                         r"which this config does not set \(see conf/callbacks/default.yaml\)"):
        run_training(train_cfg("ckpt_path=auto", "callbacks.model_checkpoint=null"))


def test_auto_stops_where_every_checkpoint_is_unreadable_rather_than_start_over_them(tmp_path):
    from omegaconf import OmegaConf
    from src.utils.auto_resume import resolve_auto_resume

    checkpoints = tmp_path / "checkpoints"
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)},
                            "callbacks": {"model_checkpoint": {"dirpath": str(checkpoints)}}})
    assert resolve_auto_resume(cfg) is None   # nothing saved yet: the run starts
    checkpoints.mkdir()
    last = save_progress(checkpoints / "last.ckpt", 8)
    last.write_bytes(last.read_bytes()[:100])                       # cut short: the only file
    with pytest.raises(ValueError, match=rf"no checkpoint of this run can be read \({last}; each is named above\)\. "
                                         r"Name one to resume from with ckpt_path="):
        resolve_auto_resume(cfg)


def test_a_requeued_job_naming_an_earlier_runs_checkpoint_resumes_from_its_own_further_one(tmp_path, monkeypatch):
    """The README's continuation job (`ckpt_path=<old run>/last.ckpt`, a new run directory),
    requeued after it saved: the same command line resumes from its own last.ckpt, not the
    old run's file again; a first start, or its own files not further on, keep the named one."""
    from omegaconf import OmegaConf
    from src.utils.auto_resume import resume_a_requeued_job
    (tmp_path / "old").mkdir()
    old = save_progress(tmp_path / "old" / "last.ckpt", 4)
    run = tmp_path / "new"
    (run / "checkpoints").mkdir(parents=True)

    def resumed_from(restarts: str) -> str:
        monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
        cfg = OmegaConf.create({"ckpt_path": str(old), "paths": {"output_dir": str(run)},
                                "callbacks": {"model_checkpoint": {"dirpath": str(run / "checkpoints")}}})
        resume_a_requeued_job(cfg)
        return cfg.ckpt_path

    save_progress(run / "checkpoints" / "iter_0000002.ckpt", 4)   # not further on than the named file
    assert resumed_from("1") == str(old)
    save_progress(run / "checkpoints" / "last.ckpt", 10)
    assert resumed_from("0") == str(old)
    assert resumed_from("1") == str(run / "checkpoints" / "last.ckpt")


def test_a_requeued_job_in_a_new_folder_named_by_its_start_time_resumes_its_earlier_starts_run(
        train_cfg, monkeypatch, tmp_path, caplog):
    """Hydra's default run folder is named by the start time: a plain sbatch job requeued by SLURM
    lands in a new, empty one, where it trained from scratch. Each start's folder carries its job
    id; the requeued one finds the earlier ones beside its own and goes on from the furthest
    checkpoint, in its new folder, ending on the weights of an unbroken run, also when the start
    just before it was stopped before its first save. A requeue with no such folder starts,
    saying so."""
    straight = train_cfg(*PIX2PIX, "max_iters=4")
    straight.paths.output_dir = str(tmp_path / "straight")
    run_training(straight)

    def start(folder: str, max_iters: int) -> None:
        cfg = train_cfg(*PIX2PIX, f"max_iters={max_iters}")   # hydra.run.dir: Hydra's, named by the start time
        cfg.paths.output_dir = str(tmp_path / "runs" / folder)
        cfg.callbacks.model_checkpoint.dirpath = str(tmp_path / "runs" / folder / "checkpoints")
        run_training(cfg)

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    start("2026-12-06_01-00-00_slurm-4242", 2)
    monkeypatch.setenv("SLURM_JOB_ID", "777")   # another job of the same folder's parent
    start("2026-12-06_01-00-00_slurm-777", 1)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    stopped_early = tmp_path / "runs" / "2026-12-06_01-30-00_slurm-4242"   # requeued before its first save
    (stopped_early / "checkpoints").mkdir(parents=True)
    # Another command of the same job script (another seed), further on: not this run's.
    other_command = tmp_path / "runs" / "2026-12-06_01-40-00_slurm-4242"
    (other_command / "checkpoints").mkdir(parents=True)
    save_progress(other_command / "checkpoints" / "last.ckpt", 6)
    (other_command / ".hydra").mkdir()
    (other_command / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    with caplog.at_level(logging.INFO):
        start("2026-12-06_02-00-00_slurm-4242", 4)
    earlier = tmp_path / "runs" / "2026-12-06_01-00-00_slurm-4242"
    assert f"Passing over {other_command}: run folders of job 4242 that another command started" in caplog.text
    assert f"the earlier starts of this job ran in {stopped_early}, {earlier}" in caplog.text
    assert f"ckpt_path=auto: resuming from {earlier / 'checkpoints' / 'last.ckpt'}" in caplog.text
    load = lambda run: torch.load(Path(run, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)  # noqa: E731
    expected, resumed = load(tmp_path / "straight"), load(tmp_path / "runs" / "2026-12-06_02-00-00_slurm-4242")
    assert resumed["global_step"] == expected["global_step"] == 8
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    caplog.clear()
    monkeypatch.setenv("SLURM_JOB_ID", "9999")   # requeued before any start recorded it: it starts
    with caplog.at_level(logging.INFO):
        start("2026-12-06_03-00-00_slurm-9999", 1)
    assert "no run folder beside it records an earlier start of job 9999 by this command" in caplog.text


def test_a_run_folder_copied_elsewhere_goes_on_in_its_last_ckpt(train_cfg, tmp_path):
    """Resumed from a copy of its folder (a node's scratch disk, a moved project), Lightning does
    not restore the checkpoint paths it recorded, and its version counter wrote last-v1.ckpt
    beside the copied last.ckpt, which stayed at the older state a later resume then took."""
    import shutil

    first = train_cfg(*PIX2PIX, "max_iters=2")
    first.paths.output_dir = str(tmp_path / "first")
    first.callbacks.model_checkpoint.dirpath = str(tmp_path / "first" / "checkpoints")
    run_training(first)
    shutil.copytree(tmp_path / "first", tmp_path / "copy")
    resumed = train_cfg(*PIX2PIX, "max_iters=4", "ckpt_path=auto")
    resumed.paths.output_dir = str(tmp_path / "copy")
    resumed.callbacks.model_checkpoint.dirpath = str(tmp_path / "copy" / "checkpoints")
    run_training(resumed)
    names = sorted(p.name for p in (tmp_path / "copy" / "checkpoints").glob("*.ckpt"))
    assert not [name for name in names if "-v" in name], names
    last = torch.load(tmp_path / "copy" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 8   # 4 iterations of pix2pix's 2 optimizer steps


def test_a_requeue_with_nothing_to_resume_names_a_fixed_run_folder_of_its_own_task(tmp_path, monkeypatch, caplog):
    """The fixed folder it suggests is where this task's runs live (experiment=quickstart's under
    logs/quickstart/runs), not the train task's."""
    from omegaconf import OmegaConf

    from src.utils import auto_resume

    monkeypatch.setattr(auto_resume, "run_dir_named_by_start_time", lambda: True)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    run = tmp_path / "logs" / "quickstart" / "runs" / "2026-12-06_02-00-00_slurm-4242"
    cfg = OmegaConf.create({"task_name": "quickstart", "paths": {"log_dir": str(tmp_path / "logs"),
                                                                 "output_dir": str(run)},
                            "callbacks": {"model_checkpoint": {"dirpath": str(run / "checkpoints")}}})
    with caplog.at_level(logging.WARNING):
        assert auto_resume.own_checkpoint_dirs(cfg) == [(run / "checkpoints", run)]
    assert f"hydra.run.dir={tmp_path / 'logs' / 'quickstart' / 'runs'}/slurm-$SLURM_JOB_ID keeps one folder" in caplog.text


def test_the_fixed_slurm_run_folder_pastes_into_a_job_script_whatever_the_folders_name():
    """A runs folder with a space or parentheses, pasted as shown, was split by the shell or Hydra."""
    import subprocess

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from src.utils.auto_resume import fixed_slurm_run_dir
    for runs in ("/home/ana/GAN runs (1)/logs/train/runs", "/scratch/runs"):
        shown = fixed_slurm_run_dir(Path(runs))
        pasted = subprocess.run(["bash", "-c", f"printf '%s\\n' {shown}"], env={"SLURM_JOB_ID": "4242"},
                                capture_output=True, text=True, check=True).stdout.splitlines()
        (override,) = OverridesParser.create().parse_overrides(pasted)
        assert (override.key_or_group, override.value()) == ("hydra.run.dir", f"{runs}/slurm-4242")


def test_the_ranks_lightning_launches_resume_from_rank_zeros_choice(tmp_path, monkeypatch):
    """Lightning launches ranks 1.. with rank zero's run folder named: a requeued job's ranks
    would not look in its earlier start's folder, and start from scratch while rank zero
    resumed. Rank zero's choice reaches them through the environment they inherit."""
    import src.utils.run as run_module
    from omegaconf import OmegaConf
    checkpoints = tmp_path / "earlier" / "checkpoints"
    checkpoints.mkdir(parents=True)
    chosen = save_progress(checkpoints / "last.ckpt", 4)
    monkeypatch.setattr(run_module, "resolve_auto_resume", lambda cfg: str(chosen))   # rank zero's search
    rank_zero = OmegaConf.create({"ckpt_path": "auto"})
    assert run_module.resolve_checkpoint(rank_zero) is True and rank_zero.ckpt_path == str(chosen)
    monkeypatch.setenv("LOCAL_RANK", "1")   # a launched rank, its environment inherited from rank zero
    monkeypatch.setattr(run_module, "resolve_auto_resume", lambda cfg: pytest.fail("a launched rank searched again"))
    launched = OmegaConf.create({"ckpt_path": "auto"})
    assert run_module.resolve_checkpoint(launched) is True and launched.ckpt_path == str(chosen)


def test_equal_progress_takes_the_newest_file(tmp_path):
    older = save_progress(tmp_path / "last.ckpt", 6)
    newer = save_progress(tmp_path / "interrupted.ckpt", 6)
    times = older.stat().st_mtime
    os.utime(older, (times - 10, times - 10))
    assert most_advanced_checkpoint(tmp_path, tmp_path / "elsewhere") == newer
    os.utime(newer, (times - 20, times - 20))
    assert most_advanced_checkpoint(tmp_path, tmp_path / "elsewhere") == older


def test_equal_progress_prefers_an_exact_checkpoint_to_a_crash_inside_an_iteration(tmp_path):
    """A crash in iteration k+1 rolls crashed.ckpt's count back to k, last.ckpt's progress, but
    keeps a player's update: the exact file wins though it is older."""
    from src.callbacks.checkpoint import PARTIAL_STEPS_KEY
    last = save_progress(tmp_path / "last.ckpt", 6)
    torch.save({"global_step": 6, PARTIAL_STEPS_KEY: 1}, tmp_path / "crashed.ckpt")
    times = last.stat().st_mtime
    os.utime(last, (times - 10, times - 10))
    assert most_advanced_checkpoint(tmp_path, tmp_path / "elsewhere") == last
    ahead = tmp_path / "crashed.ckpt"
    torch.save({"global_step": 8, PARTIAL_STEPS_KEY: 1}, ahead)   # further on: taken all the same
    assert most_advanced_checkpoint(tmp_path, tmp_path / "elsewhere") == ahead


def test_a_whole_file_a_weights_only_load_refuses_stops_auto_naming_it(tmp_path):
    """Passing it over would train again over the work it holds; resuming would fail on it."""
    from omegaconf import ListConfig
    save_progress(tmp_path / "iter_0000002.ckpt", 4)
    refused = tmp_path / "last.ckpt"
    torch.save({"global_step": 8, "datamodule_hyper_parameters": {"classes": ListConfig(["B"])}}, refused)
    with pytest.raises(ValueError, match=rf"{refused} is whole but holds objects a weights-only load refuses"):
        most_advanced_checkpoint(tmp_path, tmp_path / "elsewhere")


def test_the_same_command_starts_then_continues_the_run(train_cfg, tmp_path, caplog, monkeypatch):
    """auto in an empty run directory starts; run again (a longer max_iters, as a requeued job
    whose first part ran out of time) it resumes, ending on the weights of an unbroken run."""
    straight = train_cfg(*PIX2PIX, "max_iters=4")
    straight.paths.output_dir = str(tmp_path / "straight")
    run_training(straight)

    with caplog.at_level(logging.INFO):
        run_training(train_cfg(*PIX2PIX, "max_iters=2", "ckpt_path=auto"))
    assert "ckpt_path=auto: no checkpoint in" in caplog.text
    caplog.clear()
    trained = []
    train_iteration = Pix2Pix.train_iteration
    monkeypatch.setattr(Pix2Pix, "train_iteration", lambda self, batch: trained.append(self.iteration)
                        or train_iteration(self, batch))
    with caplog.at_level(logging.INFO):
        run_training(train_cfg(*PIX2PIX, "max_iters=4", "ckpt_path=auto"))
    assert "ckpt_path=auto: resuming from" in caplog.text and trained == [2, 3]

    load = lambda run: torch.load(Path(run, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)  # noqa: E731
    expected, resumed = load(tmp_path / "straight"), load(tmp_path / "run")
    assert resumed["global_step"] == expected["global_step"] == 8
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_rolling_back_to_an_earlier_checkpoint_sets_the_abandoned_branch_aside(train_cfg, tmp_path, caplog):
    """Resuming from iter_0000002.ckpt in a folder that holds iteration 4: the files further on
    are moved into an abandoned_* folder, so auto (a requeue) continues the new branch, not them."""
    every_save = ("callbacks.model_checkpoint.every_n_iters=2", "callbacks.model_checkpoint.save_top_k=-1")
    run_training(train_cfg(*PIX2PIX, *every_save, "max_iters=4"))
    checkpoints = tmp_path / "run" / "checkpoints"
    rolled_back_to = checkpoints / "iter_0000002.ckpt"
    with caplog.at_level(logging.WARNING):
        run_training(train_cfg(*PIX2PIX, *every_save, "max_iters=3", f"ckpt_path={rolled_back_to}"))
    (shelf,) = checkpoints.glob("abandoned_*")
    assert sorted(p.name for p in shelf.iterdir()) == ["iter_0000004.ckpt", "last.ckpt"]
    assert f"moved iter_0000004.ckpt, last.ckpt into {shelf}" in caplog.text
    assert torch.load(shelf / "last.ckpt", weights_only=True)["global_step"] == 8   # the old branch, kept whole
    assert most_advanced_checkpoint(checkpoints, tmp_path / "run").name in ("last.ckpt", "iter_0000003.ckpt")
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 6
    assert rolled_back_to.exists()
    # Resuming from the newest file moves nothing.
    caplog.clear()
    run_training(train_cfg(*PIX2PIX, *every_save, "max_iters=3", f"ckpt_path={checkpoints / 'last.ckpt'}"))
    assert len(list(checkpoints.glob("abandoned_*"))) == 1 and "abandoned" not in caplog.text
    # SLURM's save lies in the run folder and goes aside there: the checkpoint folder may be on
    # other storage (a rename across file systems fails), or not made yet, as here.
    named = tmp_path / "iter_0000002.ckpt"
    shutil.copy(rolled_back_to, named)
    shutil.copy(shelf / "last.ckpt", tmp_path / "run" / "hpc_ckpt_1.ckpt")
    shutil.rmtree(checkpoints)
    with caplog.at_level(logging.WARNING):
        run_training(train_cfg(*PIX2PIX, *every_save, "max_iters=3", f"ckpt_path={named}"))
    (run_shelf,) = (tmp_path / "run").glob("abandoned_*")
    assert [p.name for p in run_shelf.iterdir()] == ["hpc_ckpt_1.ckpt"]
    assert f"moved hpc_ckpt_1.ckpt into {run_shelf}" in caplog.text


def test_a_fresh_run_in_a_used_folder_sets_the_earlier_runs_checkpoints_aside(train_cfg, tmp_path, caplog):
    """The same fixed run folder started again without ckpt_path: Lightning wrote last-v1.ckpt
    beside the earlier last.ckpt, the new best_fid.ckpt replaced the earlier run's better one, and
    auto would have resumed the earlier run where it was further on. Its files go aside, whole."""
    run_training(train_cfg(*PIX2PIX, "max_iters=4"))
    checkpoints = tmp_path / "run" / "checkpoints"
    earlier = {path.name: path.read_bytes() for path in checkpoints.glob("*.ckpt")}
    assert "last.ckpt" in earlier
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training(train_cfg(*PIX2PIX, "max_iters=2"))
    (shelf,) = checkpoints.glob("abandoned_*")
    assert {path.name: path.read_bytes() for path in shelf.iterdir()} == earlier
    assert "This run starts afresh in a folder that holds an earlier run's checkpoints: moved " in caplog.text
    assert "pass ckpt_path=auto" in caplog.text
    assert sorted(path.name for path in checkpoints.glob("*.ckpt")) == ["iter_0000002.ckpt", "last.ckpt"]   # no -v1
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 2 * 2   # this run's
    assert most_advanced_checkpoint(checkpoints, tmp_path / "run") == checkpoints / "last.ckpt"
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]   # (said here instead)
    # A fresh run from a checkpoint of the folder itself is refused, the files left as they are: it
    # would go aside too, and DDP's launched ranks and a requeued start read init_from again.
    source = checkpoints / "last.ckpt"
    before = sorted(path.name for path in checkpoints.rglob("*.ckpt"))
    with pytest.raises(ValueError, match=r"init_from=.*last.ckpt lies in this run's own checkpoint folder.*copy it "
                                         r"elsewhere and start from the copy, or give this run its own folder"):
        run_training(train_cfg(*PIX2PIX, "max_iters=2", f"init_from={source}"))
    assert sorted(path.name for path in checkpoints.rglob("*.ckpt")) == before and source.is_file()


def test_a_search_trial_in_an_earlier_sweeps_job_folder_is_refused(train_cfg, tmp_path, monkeypatch):
    """An Optuna search numbers its jobs' folders from 0 in every sweep, and a study kept in
    storage continues with new trials: in a fixed hydra.sweep.dir, trial 2 set trial 0's
    checkpoints aside and overwrote its results and the sweep's table."""
    from src.utils import auto_resume
    run_training(train_cfg(*PIX2PIX, "max_iters=2"))
    checkpoints = tmp_path / "run" / "checkpoints"
    earlier = sorted(path.name for path in checkpoints.rglob("*.ckpt"))
    monkeypatch.setattr(auto_resume, "is_multirun", lambda: True)
    monkeypatch.setattr(auto_resume, "sweeper_direction", lambda: "minimize")
    with pytest.raises(ValueError, match=r"This search's job folder .*run holds the checkpoints of an earlier sweep's "
                                         r"job.*Give this search a sweep folder of its own"):
        run_training(train_cfg(*PIX2PIX, "max_iters=2"))
    assert sorted(path.name for path in checkpoints.rglob("*.ckpt")) == earlier   # nothing moved
    monkeypatch.setattr(auto_resume, "sweeper_direction", lambda: None)   # a grid sweep's job: set aside, as above
    run_training(train_cfg(*PIX2PIX, "max_iters=2"))
    assert len(list(checkpoints.glob("abandoned_*"))) == 1


@pytest.mark.parametrize("overrides", [(*PIX2PIX, "max_iters=2"),
                                       ("model=stylegan", "max_iters=null", "max_kimg=0.004", *NO_EVALUATION)])
def test_a_finished_run_run_again_trains_nothing_and_keeps_its_record(train_cfg, tmp_path, overrides):
    """A finished job run again in its folder with ckpt_path=auto (a grid sweep restarted):
    nothing trains and no checkpoint is rewritten, whether max_iters or max_kimg ended it, its
    final_metrics.json (the sweep table's row) stays, and train() returns the run's metrics."""
    finished = run_training(train_cfg(*overrides, "ckpt_path=auto"))
    run_dir = tmp_path / "run"
    record = (run_dir / "final_metrics.json").read_text()
    last = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    assert finished
    again = run_training(train_cfg(*overrides, "ckpt_path=auto"))
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == last
    assert (run_dir / "final_metrics.json").read_text() == record
    assert again == pytest.approx(finished)


def test_a_run_stopped_after_its_last_save_writes_its_record_when_resumed_at_its_end(train_cfg, tmp_path):
    """Stopped in its last iteration (a preemption during the final evaluation), or killed
    between its last save and its record, a run has no final_metrics.json, or the sweep's
    "failed" one. Resumed at its end it trains and logs nothing, and wrote a "completed" record
    without metrics, and train() returned none: a search's trial had no value, which ends an
    Optuna study. The checkpoint carries the metrics as of its save."""
    overrides = ("model=pix2pix", "data=shapes_paired", "max_iters=2", "callbacks.fid_kid.every_n_iters=0",
                 "ckpt_path=auto", "++callbacks.latent=null", "++callbacks.shapes_truth=null")
    finished = run_training(train_cfg(*overrides))
    record_path = tmp_path / "run" / "final_metrics.json"
    record = json.loads(record_path.read_text())
    assert "eval/fid" in finished and record["metrics"]
    for left_behind in (None, {"status": "failed", "error": "SystemExit: 143"}):
        if left_behind is None:
            record_path.unlink()
        else:
            record_path.write_text(json.dumps(left_behind))
        again = run_training(train_cfg(*overrides))
        assert again == pytest.approx(finished)
        assert json.loads(record_path.read_text()) == record


def test_a_runs_record_keeps_the_metrics_logged_before_its_resume():
    """A metric logged before a resume and not since (an evaluation with a long interval) stays
    in the checkpoints and the record; the fit's own values win."""
    from types import SimpleNamespace
    from src.callbacks.final_metrics import FinalMetrics
    final = FinalMetrics("unused")
    final.load_state_dict({"metrics": {"eval/fid": 30.0, "train/G": 2.0}})
    final.setup(SimpleNamespace(callback_metrics={"train/G": torch.tensor(1.5)}), None, "fit")
    assert final.state_dict() == {"metrics": {"eval/fid": 30.0, "train/G": 1.5}}


def test_auto_outside_training_asks_for_a_file():
    with pytest.raises(ValueError, match="ckpt_path=auto: name a checkpoint file here .*resumes a run from its own folder"):
        check_checkpoint_file("auto")


def test_auto_refuses_a_checkpoint_of_other_settings_and_a_named_one_warns(train_cfg, tmp_path):
    """A sweep started again over a fixed sweep folder with other values (or an Optuna study
    resumed from its storage) reuses job folders by number: auto would resume another run's
    checkpoint under the new settings and credit its training to them. Settings a resume may
    change (the batch size, the loader's) pass; a named checkpoint warns, saying the optimizers
    keep their saved learning rates."""
    run_training(train_cfg(*PIX2PIX, "max_iters=2"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"ckpt_path=auto found .*last.ckpt, written by a run with other settings "
                                         r"\(loss.weights.l1=100.0 -> 5; model.optimizer.lr=0.0002 -> 0.001\)"
                                         r".*hydra.sweep.dir\), or name the checkpoint \(ckpt_path=.*last.ckpt\) to "
                                         r"continue it with the new settings\. Where instead this code's defaults "
                                         r"changed since that run, pass that run's values listed above to continue it "
                                         r"as it trained$"):
        run_training(train_cfg(*PIX2PIX, "max_iters=4", "ckpt_path=auto", "loss.weights.l1=5",
                               "model.optimizer.lr=1e-3"))
    # Named, a checkpoint of other networks would not load: not offered
    with pytest.raises(ValueError, match=r"hydra.sweep.dir\); its networks do not fit this run's \(.*tensors of other "
                                         r"shapes.*\), so it cannot continue under these settings\. Where instead"):
        run_training(train_cfg(*PIX2PIX, "max_iters=4", "ckpt_path=auto", "model.generator.ngf=8"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training(train_cfg(*PIX2PIX, "max_iters=3", "ckpt_path=auto", "data.batch_size=2", "data.num_workers=1",
                               "model.optimizer.step_in_backward=false"))
        assert not [w for w in caught if "other settings" in str(w.message)]
        run_training(train_cfg(*PIX2PIX, "max_iters=4", f"ckpt_path={last}", "model.optimizer.lr=1e-3"))
    assert [str(w.message) for w in caught if "other settings" in str(w.message)] == [
        f"ckpt_path={last} was written with other settings (model.optimizer.lr=0.0002 -> 0.001): the run goes on "
        "with this run's settings, except that the optimizers and learning-rate schedules continue from their "
        "saved states (a new model.optimizer.lr scales their restored rates; another model.lr_schedule.policy "
        "shapes the rate from the saved schedule's count on)"]
    saved = torch.load(last, map_location="cpu", weights_only=True)
    # the restored rate scaled to the new one (pix2pix's smoke schedule is constant here)
    assert saved["global_step"] == 8 and {g["lr"] for o in saved["optimizer_states"] for g in o["param_groups"]} == {1e-3}


def test_auto_refuses_a_checkpoint_of_another_seeds_run_and_a_named_one_warns(train_cfg, tmp_path):
    """`-m seed=0,1,2` started again as seed=3,4,5 over a fixed sweep folder: job 0 resumed seed 0's
    run as seed 3's. A named checkpoint of another seed warns that the seed changes nothing; a
    drawn seed (seed=null: another on every start) is not compared."""
    run_training(train_cfg(*PIX2PIX, "max_iters=2", "seed=0"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["run_seed"] == 0
    with pytest.raises(ValueError, match=r"ckpt_path=auto found .*last.ckpt, written by the run of seed=0, and this "
                                         r"run is seed=3: this run folder holds another run .* or pass seed=0"):
        run_training(train_cfg(*PIX2PIX, "max_iters=3", "ckpt_path=auto", "seed=3"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training(train_cfg(*PIX2PIX, "max_iters=3", "ckpt_path=auto", "seed=null"))
        run_training(train_cfg(*PIX2PIX, "max_iters=4", f"ckpt_path={last}", "seed=3"))
    assert [str(w.message) for w in caught if "seed=" in str(w.message)] == [
        f"ckpt_path={last} is of the run of seed=0: the resume continues its random streams and data order, so "
        "seed=3 changes nothing but the record"]


def test_settings_a_resume_may_change_and_settings_added_since_are_not_compared(train_cfg):
    checkpoint = {"hyper_parameters": {"loss": {"weights": {"cycle": 10.0}}, "pool_size": 50,
                                       "init": {"type": "normal", "gain": 0.02},   # weights loaded over it
                                       "optimizer": {"players": {"G": {"step_in_backward": True}}}},
                  "datamodule_hyper_parameters": {"batch_size": 1, "data_dir": "/a", "crop_size": 256,
                                                  "cache_decoded": False}}
    same = changed_settings(checkpoint, {"loss": {"weights": {"cycle": 10}}, "pool_size": 0, "init": {"type": "tflib", "gain": 1},
                                         "optimizer": {"players": {"G": {"step_in_backward": False}}}},
                            {"batch_size": 4, "data_dir": "/b", "crop_size": 256, "cache_decoded": True},
                            CycleGAN.resumable_settings)
    assert same == []
    # The loss settings are named as set: model.loss interpolates the top-level loss group, and
    # Hydra refuses an override under it
    assert changed_settings(checkpoint, {"loss": {"weights": {"cycle": 5.0}}}, {"crop_size": 128}) == [
        "data.crop_size=256 -> 128", "loss.weights.cycle=10.0 -> 5.0"]
    assert train_cfg("model=cyclegan", "loss.weights.cycle=10.0").model.loss.weights.cycle == 10.0
    # A CSV file recorded as typed (before the record was absolute) is the same file absolute
    series = {"datamodule_hyper_parameters": {"csv_path": "series.csv"}}
    assert changed_settings(series, {}, {"csv_path": os.path.abspath("series.csv")}) == []
    assert changed_settings(series, {}, {"csv_path": "/other/series.csv"}) == [
        f"data.csv_path={os.path.abspath('series.csv')!r} -> '/other/series.csv'"]
    # A run from before data.unpaired_sampling sampled as CycleGAN's loader: U-GAT-IT's config
    # now samples balanced, which a resume of it changes. Said, not refused, even under
    # ckpt_path=auto (a requeued job): nobody changed a setting, the default did.
    from src.models.checkpoint_fit import check_resume_settings
    model = type("Model", (), {"hparams": {}, "resumable_settings": ()})()
    for must_match in (True, False):
        said = check_resume_settings("last.ckpt", checkpoint, model, {"unpaired_sampling": "balanced"}, must_match)
        assert said == ("ckpt_path=last.ckpt is of a run from before settings this run sets otherwise than that run "
                        "did (data.unpaired_sampling='cyclegan' -> 'balanced'): the run goes on with this run's "
                        "values (pass the earlier ones to continue as it trained)")
    assert check_resume_settings("last.ckpt", checkpoint, model, {"unpaired_sampling": "cyclegan"}, True) is None
    # A table of settings a resume may change (README "Resuming": StyleGAN's batch per resolution
    # lowered after running out of memory) is compared by its entries' keys, which name the table
    growing = {"hyper_parameters": {"batch_sizes": {"512": 4, "1024": 4}, "batch_size": 16, "phase_images": {"4": 800}}}
    assert changed_settings(growing, {"batch_sizes": {"512": 2, "1024": 4}, "batch_size": 8, "phase_images": {"4": 600}},
                            {}, ProGAN.resumable_settings) == []


@pytest.mark.parametrize("model_name, added, before, now", [
    ("progan", "reset_optimizers_per_phase", False, True),   # Adam's state was kept across phases
    ("dcgan", "test_time_batch_stats", False, True),          # samples by running statistics
])
def test_a_resume_of_a_run_from_before_a_model_setting_says_what_it_did(train_cfg, model_name, added, before, now):
    """Settings added since a checkpoint was written were not compared on a resume: an older
    ProGAN resumed under today's default reset its optimizers at every later phase, an older DCGAN
    changed how its grids and FID sample mid-run, without a word. Said, never refused (auto too)."""
    import hydra

    from src.models.checkpoint_fit import check_resume_settings, class_path

    data = "shapes_labelled"
    cfg = train_cfg(f"model={model_name}", f"data={data}")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert model.hparams[added] == now
    # (the noise models' two sampling settings came together)
    removed = {added, "reference_batch_size"} if added == "test_time_batch_stats" else {added}
    older = {key: value for key, value in dict(model.hparams).items() if key not in removed}
    checkpoint = {"hyper_parameters": older, "datamodule_hyper_parameters": {"batch_size": cfg.data.batch_size},
                  "model_class": class_path(model), "state_dict": {}}
    for must_match in (True, False):
        said = check_resume_settings("last.ckpt", checkpoint, model, {}, must_match)
        assert f"model.{added}={before!r} -> {now!r}" in said and "goes on with this run's values" in said
        assert "reference_batch_size" not in said   # unread under the earlier running averages
    checkpoint["hyper_parameters"] = dict(model.hparams)   # a run that recorded them: nothing to say
    assert check_resume_settings("last.ckpt", checkpoint, model, {}, True) is None


def test_a_setting_this_run_leaves_unread_tells_of_no_other_run(train_cfg):
    """data.load_size's default changed, and a run on data.preprocess=none, which never reads
    it, was refused its own run folder under ckpt_path=auto as another run's; passing the
    earlier value was then refused as changing nothing. An older DCGAN resumed with
    model.test_time_batch_stats=false, as its warning asked, was still told of
    model.reference_batch_size, which that leaves unread (and passing it was refused)."""
    import hydra

    from src.models.checkpoint_fit import check_resume_settings, class_path

    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    for preprocess, read in (("none", False), ("resize_and_crop", True)):
        here = {"preprocess": preprocess, "load_size": 62, "crop_size": 32}
        checkpoint = {"hyper_parameters": dict(model.hparams), "model_class": class_path(model), "state_dict": {},
                      "datamodule_hyper_parameters": {**here, "load_size": 32}}
        if read:
            with pytest.raises(ValueError, match=r"ckpt_path=auto found last.ckpt, written by a run with other "
                                                 r"settings \(data.load_size=32 -> 62\)"):
                check_resume_settings("last.ckpt", checkpoint, model, here, must_match=True)
        else:
            assert check_resume_settings("last.ckpt", checkpoint, model, here, must_match=True) is None
    cfg = train_cfg("model=dcgan", "data=shapes_labelled", "model.test_time_batch_stats=false")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    older = {key: value for key, value in dict(model.hparams).items()
             if key not in ("test_time_batch_stats", "reference_batch_size")}
    checkpoint = {"hyper_parameters": older, "datamodule_hyper_parameters": {"batch_size": cfg.data.batch_size},
                  "model_class": class_path(model), "state_dict": {}}
    assert check_resume_settings("last.ckpt", checkpoint, model, {}, must_match=True) is None


def test_a_resume_that_counts_its_schedule_in_other_units_is_refused():
    """A schedule's saved count read in other units (CycleGAN's 120 epochs as 120 iterations) would
    end its decay 80 iterations later and train at 0 from then on; a named checkpoint too."""
    from src.models.checkpoint_fit import check_resume_settings

    checkpoint = {"hyper_parameters": {"lr_schedule": {"policy": "linear", "constant": 100, "decay": 100}}}
    model = type("Model", (), {"hparams": {"lr_schedule": {"policy": "linear", "unit": "iteration"}},
                               "resumable_settings": ()})()
    for must_match in (True, False):
        with pytest.raises(ValueError, match=r"ckpt_path=last.ckpt counts its learning-rate schedule in epochs "
                                             r"\(model.lr_schedule.unit=epoch\), and this run in iterations.*Resume "
                                             r"with model.lr_schedule.unit=epoch, or .*init_from=last.ckpt"):
            check_resume_settings("last.ckpt", checkpoint, model, {}, must_match)
    model.hparams["lr_schedule"]["unit"] = "epoch"   # (the checkpoint's by default)
    assert check_resume_settings("last.ckpt", checkpoint, model, {}, False) is None
    constant = {"hyper_parameters": {"lr_schedule": {"policy": "constant"}}}   # (a count nothing reads)
    model.hparams["lr_schedule"] = {"policy": "constant", "unit": "iteration"}
    check_resume_settings("last.ckpt", constant, model, {}, False)   # not refused


def test_auto_resumes_a_run_whose_model_changed_a_setting_its_class_lets_a_resume_change(train_cfg, caplog):
    """Through the run: CycleGAN lists the image pool's size (the pool warns of it), so a
    requeued job with another model.pool_size continues its run rather than being refused as
    another run's."""
    run_training(train_cfg("model=cyclegan", "max_iters=1", "ckpt_path=auto", *NO_EVALUATION))
    with caplog.at_level(logging.INFO):
        run_training(train_cfg("model=cyclegan", "max_iters=2", "ckpt_path=auto", "model.pool_size=1", *NO_EVALUATION))
    assert "ckpt_path=auto: resuming from" in caplog.text and "the resumed run keeps 1" in caplog.text


def test_each_model_class_names_the_settings_a_resume_may_change():
    """A model's own resumable settings belong to its class: another model's setting of the
    same name is compared, and a new model extends its parent's list without editing this code."""
    checkpoint = {"hyper_parameters": {"pool_size": 50, "log_rho_every_n_iters": 100, "batch_size": 16}}
    here = {"pool_size": 0, "log_rho_every_n_iters": 10, "batch_size": 8}
    assert changed_settings(checkpoint, here, {}, CycleGAN.resumable_settings) == [
        "model.batch_size=16 -> 8", "model.log_rho_every_n_iters=100 -> 10"]
    assert changed_settings(checkpoint, here, {}, UGATIT.resumable_settings) == [
        "model.batch_size=16 -> 8", "model.pool_size=50 -> 0"]

    class UGATITWithPreview(UGATIT):
        resumable_settings = UGATIT.resumable_settings + ("batch_size",)

    assert changed_settings(checkpoint, here, {}, UGATITWithPreview.resumable_settings) == ["model.pool_size=50 -> 0"]


def test_a_resume_at_another_learning_rate_scales_the_restored_rates_once(train_cfg, tmp_path):
    """After a divergence a run rolls back and goes on at a lower rate: the restored rates and
    their schedule (U-GAT-IT's decays per iteration) are scaled by new / saved, the schedule's
    shape going on from where it was; a requeued job resuming the branch scales nothing again."""
    common = ("model=ugatit", *NO_EVALUATION, "callbacks.model_checkpoint.every_n_iters=1",
              "callbacks.model_checkpoint.save_top_k=-1")
    first = train_cfg(*common, "max_iters=6")   # constant for 3 iterations, then decaying to 0
    run_training(first)
    saved = Path(first.paths.output_dir) / "checkpoints" / "iter_0000002.ckpt"
    lr = first.model.optimizer.lr

    def resumed(folder: str, *overrides: str) -> dict:
        """The branch's checkpoint at iteration 5 (decaying, not yet at 0)."""
        cfg = train_cfg(*common, *overrides)
        cfg.paths.output_dir = str(tmp_path / folder)
        run_training(cfg)
        return torch.load(tmp_path / folder / "checkpoints" / "iter_0000005.ckpt", weights_only=True)

    def rates(checkpoint: dict) -> tuple[list[float], list[float]]:
        return ([group["lr"] for state in checkpoint["optimizer_states"] for group in state["param_groups"]],
                [base for state in checkpoint["lr_schedulers"] for base in state["base_lrs"]])

    straight = rates(resumed("straight", "max_iters=6", f"ckpt_path={saved}"))
    halved = resumed("halved", "max_iters=6", f"ckpt_path={saved}", f"model.optimizer.lr={lr / 2}")
    assert 0 < straight[0][0] < lr   # decaying: the resumed schedule is under way
    assert rates(halved) == (pytest.approx([r / 2 for r in straight[0]]), pytest.approx([b / 2 for b in straight[1]]))
    requeued = resumed("requeued", "max_iters=6", f"ckpt_path={tmp_path / 'halved' / 'checkpoints' / 'iter_0000004.ckpt'}",
                       f"model.optimizer.lr={lr / 2}")
    assert rates(requeued) == rates(halved)


def test_a_finished_run_resumed_from_its_last_batch_evaluates_nothing_again(train_cfg, monkeypatch):
    """A run in epochs whose last periodic checkpoint falls on its final batch (pix2pix's 200
    epochs of facades' 400 images: 80000 iterations, every 1000) leaves last.ckpt at that batch;
    resumed, it trains nothing, and its evaluations and sample grid ran again at its end, logging
    that iteration's rows twice. The iterations last evaluated come back with the checkpoint."""
    from src.callbacks.image_grid import ImageGridCallback
    from src.callbacks.periodic_evaluation import PeriodicEvaluation
    common = ["model=cyclegan", "data=shapes", "data.max_dataset_size=2", "max_iters=null", "trainer.max_epochs=2",
              "model.lr_schedule.unit=epoch", "model.lr_schedule.constant=1", "model.lr_schedule.decay=1",
              "++callbacks.fid_kid=null", "++callbacks.latent=null",   # the ground truth stands for them
              "callbacks.image_grid.every_n_iters=3"]   # the last grid (iteration 4) is the run's end's, not due
    run_training(train_cfg(*common))
    evaluated = []
    monkeypatch.setattr(PeriodicEvaluation, "_run", lambda self, trainer, module: evaluated.append(type(self).__name__))
    monkeypatch.setattr(ImageGridCallback, "save", lambda self, trainer, module: evaluated.append("grid"))
    run_training(train_cfg(*common, "ckpt_path=auto"))
    assert evaluated == []


def test_a_run_extended_by_a_resume_is_told_its_schedule_stays_the_saved_one(train_cfg):
    """Raised max_iters on a resume: the decay restored with the schedulers ends where the saved
    run's did, and no model.lr_schedule setting changes it, so the warning names init_from."""
    schedule = ["model.lr_schedule.unit=iteration", "model.lr_schedule.constant=1", "model.lr_schedule.decay=1"]
    run_training(train_cfg(*PIX2PIX, *schedule, "max_iters=2"))
    with pytest.warns(UserWarning, match=r"but this run is 4 iterations long: its last 2 iterations train at a rate "
                                         r"of 0\. A resumed run keeps the schedule of the run it continues.*init_from="):
        run_training(train_cfg(*PIX2PIX, *schedule, "max_iters=4", "ckpt_path=auto"))


def test_a_resume_reading_its_data_from_elsewhere_says_so(train_cfg, tmp_path, caplog):
    """data.data_dir may change on a resume (the data copied to a node's scratch disk), so it is
    not refused; but another dataset of the same name would otherwise resume without a word."""
    run_training(train_cfg(*PIX2PIX, "max_iters=1"))
    with caplog.at_level(logging.INFO):
        run_training(train_cfg(*PIX2PIX, "max_iters=2", "ckpt_path=auto", f"data.data_dir={tmp_path}/copy"))
    assert f"The data now comes from {tmp_path}/copy; the checkpoint's run read " in caplog.text
