"""The sweep table (src/utils/sweep_summary.py) from job directories as training leaves them."""
import json
import math
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from src.utils import sweep_summary
from src.utils.run_results import write_failure, write_final_metrics

ROOT = Path(__file__).resolve().parents[1]


def make_job(sweep, number, overrides, **final):
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if final:
        write_final_metrics(job, **final)
    return job


def test_table_lists_jobs_in_number_order_with_what_differs(tmp_path):
    sweep = tmp_path / "sweep"
    shared = ["model=cyclegan", "data=shapes"]
    make_job(sweep, 10, [*shared, "loss.weights.cycle=10"], metrics={"eval/fid": 12.5, "train/G": 1.0},
             iteration=40, checkpoint="ckpt10", best_fid=11.0, best_fid_iteration=30)
    make_job(sweep, 2, [*shared, "loss.weights.cycle=5"], metrics={"eval/fid": math.nan}, iteration=40,
             checkpoint="ckpt2", best_fid=math.inf, best_fid_iteration=-1)   # never evaluated finite
    make_job(sweep, 3, [*shared, "loss.weights.cycle=1"])                      # still running, or killed
    failed = make_job(sweep, 4, [*shared, "loss.weights.cycle=0"])
    write_failure(failed, ValueError("bad |\nvalue"))
    write_failure(sweep / "10", ValueError("not this"))         # a finished run keeps its file
    (sweep / "notes").mkdir()                                                 # not a job

    path = sweep_summary.write_summary(sweep, ["eval/fid", "eval/kid_x100"])
    lines = path.read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| job")]
    assert rows == [
        "| 2 | loss.weights.cycle=5 | completed | 40 | nan | - |",
        "| 3 | loss.weights.cycle=1 | not finished | - | - | - |",
        "| 4 | loss.weights.cycle=0 | failed: ValueError: bad / value | - | - | - |",
        "| 10 | loss.weights.cycle=10 | completed | 40 | 12.5 | 11 (30) |",
    ]
    assert "| job | overrides | status | iteration | eval/fid | best FID (iteration) |" in lines   # no KID logged
    csv_lines = (sweep / "summary.csv").read_text().splitlines()
    assert csv_lines[0].endswith("error,eval/fid,train/G") and csv_lines[-1].startswith("10,10,completed,")
    assert json.loads((sweep / "2" / "final_metrics.json").read_text())["metrics"]["eval/fid"] == "nan"


def test_an_unreadable_result_is_a_row_that_says_so_and_the_others_stand(tmp_path):
    """A result file cut short (a partial copy of the sweep folder, an edit by hand) stopped the
    table with an error naming no file, at every later job's update."""
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["seed=1"], metrics={"eval/fid": 3.0}, iteration=4, checkpoint="c0")
    make_job(sweep, 1, ["seed=2"], metrics={"eval/fid": 5.0}, iteration=4, checkpoint="c1")
    (sweep / "0" / "final_metrics.json").write_text('{"metrics": {"eval/fid"')
    rows = [line for line in sweep_summary.write_summary(sweep, ["eval/fid"]).read_text().splitlines()
            if line.startswith(("| 0 ", "| 1 "))]
    assert rows[0].startswith(f"| 0 | seed=1 | unreadable: {sweep / '0' / 'final_metrics.json'}: ")
    assert rows[1] == "| 1 | seed=2 | completed | 4 | 5 |"


def test_settings_that_differ_through_a_models_own_config_are_columns(tmp_path):
    """`-m model=cyclegan,ugatit`: U-GAT-IT's config trains at another size and length, which
    no override names; the rows compared more than the models without a word. So do scores of a
    generators' average (ProGAN's and StyleGAN's configs keep one) beside the trained weights'."""
    sweep = tmp_path / "sweep"
    for number, model, size, iterations in ((0, "cyclegan", 256, None), (1, "ugatit", 128, 1000)):
        job = make_job(sweep, number, [f"model={model}", "data=horse2zebra"], metrics={"eval/fid": 50.0 + number},
                       iteration=10, checkpoint="c")
        start = job / "starts" / "001_2026-12-06_10-00-00"
        start.mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({"max_iters": iterations, "trainer": {"max_epochs": 200},
                                         "data": {"name": "horse2zebra", "crop_size": size, "batch_size": 1},
                                         "callbacks": {"ema": {"enabled": bool(number)}}}),
                       start / "resolved.yaml")
    lines = sweep_summary.write_summary(sweep, ["eval/fid"]).read_text().splitlines()
    assert "| job | overrides | size | iterations | EMA | status | iteration | eval/fid |" in lines
    assert "| 0 | model=cyclegan | 256 | - | False | completed | 10 | 50 |" in lines
    assert "| 1 | model=ugatit | 128 | 1000 | True | completed | 10 | 51 |" in lines
    assert any("The jobs differ in size, iterations, EMA" in line for line in lines)
    # a job whose config keeps no EMA at all (callbacks.ema=null) is one without an EMA
    resolved = sweep / "0" / "starts" / "001_2026-12-06_10-00-00" / "resolved.yaml"
    OmegaConf.save(OmegaConf.merge(OmegaConf.load(resolved), {"callbacks": {"ema": None}}), resolved)
    assert "| 0 | model=cyclegan | 256 | - | False | completed | 10 | 50 |" in \
        sweep_summary.write_summary(sweep, ["eval/fid"]).read_text().splitlines()
    # jobs that differ only in what the overrides say get no such columns
    (sweep / "1" / "starts" / "001_2026-12-06_10-00-00" / "resolved.yaml").write_text(
        (sweep / "0" / "starts" / "001_2026-12-06_10-00-00" / "resolved.yaml").read_text())
    lines = sweep_summary.write_summary(sweep, ["eval/fid"]).read_text().splitlines()
    assert "| job | overrides | status | iteration | eval/fid |" in lines and not any("differ in" in l for l in lines)


def test_the_table_and_a_jobs_result_are_replaced_whole(tmp_path, monkeypatch):
    """The jobs of a cluster sweep end at once, each rewriting the table while others read it or
    a job's result: a write cut off (here: its sync fails) leaves the previous file, not part of
    the new one, and no temporary file."""
    import pytest
    from src.utils import whole_files
    sweep = tmp_path / "sweep"
    job = make_job(sweep, 0, ["loss.weights.cycle=5"], metrics={"eval/fid": 3.0}, iteration=5, checkpoint=None)
    before = {name: (sweep / name).read_text() for name in ("summary.csv", "summary.md")} \
        if sweep_summary.write_summary(sweep) else {}
    result = (job / "final_metrics.json").read_text()
    make_job(sweep, 1, ["loss.weights.cycle=10"])

    def cut_off(descriptor):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(whole_files.os, "fsync", cut_off)
    with pytest.raises(OSError, match="Input/output error"):
        sweep_summary.write_summary(sweep)
    with pytest.raises(OSError, match="Input/output error"):
        write_final_metrics(job, metrics={"eval/fid": 4.0}, iteration=6, checkpoint=None)
    assert before and {name: (sweep / name).read_text() for name in before} == before
    assert (job / "final_metrics.json").read_text() == result
    assert not list(tmp_path.rglob("*.tmp"))


def test_jobs_update_the_table_one_at_a_time_and_a_job_is_not_failed_for_it(tmp_path, monkeypatch, caplog):
    """Jobs ending together each read every job's record and write the table: one that read
    before another's record was written must not write its older table last, so they take turns.
    A job that cannot get its turn leaves the table, with a warning, and keeps its own result."""
    import logging
    import os

    import pytest
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    from src.utils.folder_lock import FolderInUse, FolderLock
    sweep = tmp_path / "sweep"
    job = make_job(sweep, 0, ["loss.weights.cycle=5"], metrics={"eval/fid": 3.0}, iteration=5, checkpoint=None)
    monkeypatch.setattr(sweep_summary, "SUMMARY_LOCK_WAIT_S", 0.2)
    config = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(sweep)},
                                         "runtime": {"output_dir": str(job)}}})
    with FolderLock(sweep, "another job's table", "", name=sweep_summary.SUMMARY_LOCK):
        with pytest.raises(FolderInUse, match=rf"in use by process {os.getpid()}.*: the sweep's table is written by "
                                              r"one process at a time. .*python -m src.utils.sweep_summary"):
            sweep_summary.write_summary(sweep)
        with caplog.at_level(logging.WARNING):
            sweep_summary.SweepSummary().on_job_end(config, JobReturn(status=JobStatus.COMPLETED))
    assert "The sweep's table was not updated after this job" in caplog.text
    assert not (sweep / "summary.md").exists() and (job / "final_metrics.json").is_file()
    sweep_summary.SweepSummary().on_job_end(config, JobReturn(status=JobStatus.COMPLETED))   # its turn now
    assert "| 0 | loss.weights.cycle=5 | completed | 5 |" in (sweep / "summary.md").read_text()


def test_command_line_rebuilds_the_table_or_says_there_is_none(tmp_path, capsys):
    assert sweep_summary.main([str(tmp_path)]) == 1
    assert "no job directories" in capsys.readouterr().err
    make_job(tmp_path, 0, ["model=pix2pix"], metrics={"eval/fid": 3.0}, iteration=5, checkpoint=None)
    assert sweep_summary.main([str(tmp_path)]) == 0
    assert "| 0 | model=pix2pix | completed | 5 | 3 |" in capsys.readouterr().out
    # rebuilt as the sweep wrote it: its own columns and result file (an evaluation sweep's metrics.json)
    OmegaConf.save(OmegaConf.create({"hydra": {"callbacks": {"sweep_summary": {
        "_target_": "src.utils.sweep_summary.SweepSummary", "metrics": ["eval/kid_x100"],
        "result_file": "final_metrics.json"}}}}), tmp_path / "0" / ".hydra" / "hydra.yaml")
    assert sweep_summary.main([str(tmp_path)]) == 0
    assert "| job | overrides | status | iteration |\n" in capsys.readouterr().out   # no eval/fid column
    (tmp_path / "0" / "metrics.json").write_text('{"ckpt_path": "c", "metrics": {"AtoB": {"fid": 2.0}}}')
    OmegaConf.save(OmegaConf.create({"hydra": {"callbacks": {"sweep_summary": {
        "_target_": "src.utils.sweep_summary.SweepSummary", "metrics": ["AtoB/fid"], "result_file": "metrics.json"}}}}),
        tmp_path / "0" / ".hydra" / "hydra.yaml")
    assert sweep_summary.main([str(tmp_path)]) == 0
    assert "| 0 | model=pix2pix | completed | 2 |" in capsys.readouterr().out


def test_an_evaluation_sweep_reads_each_jobs_metrics_by_direction(tmp_path):
    for number, fid, extractor in ((0, 20.0, "inception"), (1, 30.0, "random_cnn")):
        job = make_job(tmp_path, number, [f"ckpt_path=run{number}/last.ckpt"])
        report = {"ckpt_path": "x", "directions": {"AtoB": {"real": 4}}, "feature_extractor": extractor,
                  "metrics": {"AtoB": {"fid": fid, "iou": 0.5}, "BtoA": {"fid": fid + 1}}}
        (job / "metrics.json").write_text(json.dumps(report))
    assert sweep_summary.main([str(tmp_path), "metrics.json"]) == 0
    table = (tmp_path / "summary.md").read_text()
    # no iteration: an evaluation; the features each FID was measured on, beside it
    assert "| job | overrides | status | features | AtoB/fid | BtoA/fid | AtoB/iou |" in table
    assert "| 1 | ckpt_path=run1/last.ckpt | completed | random_cnn | 30 | 31 | 0.5 |" in table
    assert "feature_extractor" in (tmp_path / "summary.csv").read_text().splitlines()[0]


def test_the_sweep_callback_loads_no_torch():
    """Hydra builds its callbacks before src/train.py sets the allocator, which must precede torch."""
    code = "import sys; import src.utils.sweep_summary; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_a_training_sweep_records_the_features_its_fid_was_measured_on(train_cfg, tmp_path):
    from src.utils.run import run_training

    cfg = train_cfg("model=cyclegan", "max_iters=2", "++callbacks.latent=null", "++callbacks.shapes_truth=null")
    run_training(cfg)
    record = json.loads(Path(cfg.paths.output_dir, "final_metrics.json").read_text())
    assert record["feature_extractor"] == "random_cnn"   # the embedded shapes' (auto)


def test_a_sweep_over_seeds_gets_each_settings_mean_and_spread(tmp_path):
    """`-m model=cyclegan,ugatit seed=0,1,2`: a paper's table wants each model's mean ± std over
    its seeds, and says where a run did not finish or stopped elsewhere."""
    sweep = tmp_path / "sweep"
    fids = {("cyclegan", 0): 10.0, ("cyclegan", 1): 12.0, ("cyclegan", 2): 14.0,
            ("ugatit", 0): 9.0, ("ugatit", 1): 11.0}
    job = 0
    for model in ("cyclegan", "ugatit"):
        for seed in (0, 1, 2):
            overrides = ["data=horse2zebra", f"model={model}", f"seed={seed}"]
            if (model, seed) in fids:
                make_job(sweep, job, overrides, metrics={"eval/fid": fids[model, seed]},
                         iteration=40 if (model, seed) != ("ugatit", 1) else 30, checkpoint="c")
            else:
                make_job(sweep, job, overrides)   # not finished
            job += 1
    lines = sweep_summary.write_summary(sweep, ["eval/fid"]).read_text().splitlines()
    table = lines[lines.index("## Over seeds"):]
    assert "| overrides (but the seed) | runs | iteration | eval/fid (mean ± std) |" in table
    assert "| model=cyclegan | 3 of 3 | 40 | 12 ± 2 (n=3) |" in table
    assert "| model=ugatit | 2 of 3 | 30, 40 | 10 ± 1.4 (n=2) |" in table

    single = tmp_path / "single"   # one run per setting: no table over seeds
    make_job(single, 0, ["model=cyclegan"], metrics={"eval/fid": 1.0}, iteration=4, checkpoint="c")
    make_job(single, 1, ["model=ugatit"], metrics={"eval/fid": 2.0}, iteration=4, checkpoint="c")
    assert "## Over seeds" not in sweep_summary.write_summary(single, ["eval/fid"]).read_text()


def test_a_diverged_seed_is_counted_apart_from_the_mean_of_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    for job, (seed, fid) in enumerate(((0, 10.0), (1, math.nan), (2, 14.0))):
        make_job(sweep, job, ["model=cyclegan", f"seed={seed}"], metrics={"eval/fid": fid}, iteration=4, checkpoint="c")
    lines = sweep_summary.write_summary(sweep, ["eval/fid"]).read_text().splitlines()
    assert "| - | 3 of 3 | 4 | 12 ± 2.8 (n=2; 1 non-finite) |" in lines


def test_a_row_names_the_run_its_folder_holds_and_the_code_it_ran(tmp_path):
    """A sweep extended into the same folder (seed=0,1,2 -> 0..4) gives job 3 another job's
    overrides: Hydra rewrites .hydra/ before the resume checks refuse the job, so the row took
    the refused job's overrides beside the numbers of the run the folder holds. Jobs started
    hours apart may run other code: the revision each start recorded is a column where they
    differ, and in the CSV."""
    sweep = tmp_path / "sweep"
    for number, model, revision in ((0, "cyclegan", "abc123"), (1, "ugatit", "abc123+dirty")):
        job = make_job(sweep, number, [f"model={model}", "seed=0|1"], metrics={"eval/fid": 50.0 + number},
                       iteration=10, checkpoint="c")
        start = job / "starts" / "001_2026-12-06_10-00-00"
        start.mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"model={model}", "seed=0|1"]), start / "overrides.yaml")
        OmegaConf.save(OmegaConf.create({"data": {"name": "horse2zebra"}}), start / "resolved.yaml")
        OmegaConf.save(OmegaConf.create({"code_revision": revision}), start / "start.yaml")
    OmegaConf.save(OmegaConf.create(["model=cyclegan", "seed=3"]), sweep / "1" / ".hydra" / "overrides.yaml")
    lines = sweep_summary.write_summary(sweep, ["eval/fid"]).read_text().splitlines()
    assert "| job | overrides | code | status | iteration | eval/fid |" in lines
    assert "| 0 | model=cyclegan | abc123 | completed | 10 | 50 |" in lines
    assert "| 1 | model=ugatit | abc123+dirty | completed | 10 | 51 |" in lines   # (seed=0|1: shared, left out)
    csv_rows = (sweep / "summary.csv").read_text().splitlines()
    assert csv_rows[0].split(",")[:len(sweep_summary.JOB_COLUMNS)] == list(sweep_summary.JOB_COLUMNS) and ",abc123+dirty," in csv_rows[2]


def test_seeds_group_by_their_settings_whatever_the_order_they_were_given_in(tmp_path):
    """Two commands listing the same overrides in another order ran the same setting; and a
    value holding a | stays in its cell."""
    sweep = tmp_path / "sweep"
    for number, overrides in enumerate((["a=1", "b=2", "seed=0"], ["b=2", "a=1", "seed=1"], ["a=x|y", "b=2", "seed=0"])):
        make_job(sweep, number, overrides, metrics={"eval/fid": 10.0 + number}, iteration=5, checkpoint="c")
    lines = sweep_summary.write_summary(sweep, ["eval/fid"]).read_text().splitlines()
    assert "| a=1 | 2 of 2 | 5 | 10.5 ± 0.71 (n=2) |" in lines and "| a=x/y | 1 of 1 | 5 | 12 (n=1) |" in lines
    assert "| 2 | a=x/y seed=0 | completed | 5 | 12 |" in lines


def test_a_failure_after_training_ended_joins_that_starts_own_completed_record(tmp_path):
    """A run that trained to its end and then failed (a full disk at the loggers' last rows) kept
    its "completed" record while the process failed: the sweep's table showed it completed."""
    import time
    started = time.time() - 1
    ended = make_job(tmp_path / "sweep", 0, ["model=cyclegan"], metrics={"eval/fid": 12.5}, iteration=40,
                     checkpoint="ckpt0")
    write_failure(ended, OSError("No space left on device"), replace_older_than=started)
    record = json.loads((ended / "final_metrics.json").read_text())
    assert record["status"] == "failed" and record["error"] == "after training ended: OSError: No space left on device"
    assert record["iteration"] == 40 and record["metrics"]["eval/fid"] == 12.5   # its results kept
    rows = sweep_summary.write_summary(tmp_path / "sweep", ["eval/fid"]).read_text()
    assert "| 0 | model=cyclegan | failed: after training ended: OSError: No space left on device | 40 | 12.5 |" in rows
    # an earlier start's record (without replace_older_than: a start its checks refused) stays as it was
    write_failure(ended, ValueError("refused"))
    assert json.loads((ended / "final_metrics.json").read_text())["error"].startswith("after training ended")


def test_a_failure_found_after_a_finished_runs_new_start_keeps_its_results(tmp_path):
    """A finished run started again trains nothing and writes no record: a failure found after
    its fit (a missing optimized_metric) replaced the earlier start's completed record, results
    and all, with a bare failure."""
    import time
    ended = make_job(tmp_path / "sweep", 0, ["model=cyclegan"], metrics={"eval/fid": 12.5}, iteration=40,
                     checkpoint="ckpt0")
    started = time.time() + 1   # (this start began after the record was written)
    write_failure(ended, ValueError("optimized_metric=x was not logged"), replace_older_than=started,
                  after_training=True)
    record = json.loads((ended / "final_metrics.json").read_text())
    assert record["status"] == "failed" and record["metrics"]["eval/fid"] == 12.5
    assert record["error"] == "after training ended: ValueError: optimized_metric=x was not logged"


def test_jobs_in_folders_another_sweep_subdir_names_are_found_in_number_order(tmp_path, caplog):
    """`hydra.sweep.subdir=${hydra.job.override_dirname}` named the job folders by their overrides
    (nested where a value is a path): the sweep ended without a table and without a word."""
    sweep = tmp_path / "sweep"
    for number, folder, cycle in ((1, "loss.weights.cycle=5", 5), (0, "loss.weights.cycle=10", 10),
                                  (2, "paths.data_dir=/data/a", 1)):
        job = sweep / folder
        (job / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"loss.weights.cycle={cycle}"]), job / ".hydra" / "overrides.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": number}}}), job / ".hydra" / "hydra.yaml")
        write_final_metrics(job, metrics={"eval/fid": float(cycle)}, iteration=4, checkpoint="c")
        (job / "checkpoints" / "old" / ".hydra").mkdir(parents=True)   # not searched below a job
    lines = sweep_summary.write_summary(sweep, ["eval/fid"]).read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| job")]
    assert rows == ["| 0 (loss.weights.cycle=10) | loss.weights.cycle=10 | completed | 4 | 10 |",
                    "| 1 (loss.weights.cycle=5) | loss.weights.cycle=5 | completed | 4 | 5 |",
                    "| 2 (paths.data_dir=/data/a) | loss.weights.cycle=1 | completed | 4 | 1 |"]
    assert (sweep / "summary.csv").read_text().splitlines()[1].startswith("0,loss.weights.cycle=10,completed,")

    # a sweep whose jobs keep no .hydra/ there gets no table, and says why
    empty = tmp_path / "empty"
    (empty / "loss=lsgan").mkdir(parents=True)
    with caplog.at_level("WARNING"):
        sweep_summary.SweepSummary(["eval/fid"])._write_table(empty, "at the sweep's end")
    assert "The sweep has no table: no job directories found (0/, 1/, ... or any holding the .hydra/" in caplog.text
    assert "keep hydra.output_subdir=.hydra" in caplog.text and not (empty / "summary.md").exists()


def test_a_sweep_whose_every_job_diverged_says_so_at_its_end(tmp_path, caplog):
    """Every trial of a search diverged: the sweep ended as a success and its
    optimization_results.yaml named a diverged trial as the best, without a word."""
    from src.models.divergence import TrainingDiverged
    sweep = tmp_path / "sweep"
    for number in (0, 1):
        write_failure(make_job(sweep, number, [f"model.optimizer.lr={number}"]), TrainingDiverged("nan"), status="diverged")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with caplog.at_level("WARNING"):
        sweep_summary.SweepSummary(["eval/fid"]).on_multirun_end(config)
    assert "No job of this sweep completed (2 diverged): any best parameters it names are of no result" in caplog.text
    caplog.clear()
    make_job(sweep, 2, ["model.optimizer.lr=2"], metrics={"eval/fid": 3.0}, iteration=4, checkpoint="c")
    with caplog.at_level("WARNING"):
        sweep_summary.SweepSummary(["eval/fid"]).on_multirun_end(config)
    assert "No job" not in caplog.text
