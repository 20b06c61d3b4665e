"""The training-speed benchmark runs end to end and writes its results. No timing is asserted:
the numbers depend on the machine and its load; only that they exist and are positive."""
import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from src.models.cyclegan import CycleGAN
from src.nets.fast_conv import REWRITTEN_LAYERS
from src.nets.gemm_conv import use_gemm_conv
from src.nets.narrow_conv import use_narrow_output
from src.callbacks.ema import GeneratorEMA
from src.utils import bench_ab, bench_machine, bench_profile, bench_report, bench_run, bench_step, bench_versus
from src.utils.bench_report import markdown, merge_rows, row_key, write_results
from src.utils.bench_run import measured_code_revision, same_measured_code, train_step_specs, versus_reference_specs
from src.utils.bench_step import compose_model_config, measure_training_step
from src.utils.reference_iterations import CycleGANReference, reference_for

ROOT = Path(__file__).resolve().parents[1]


#: the machine and settings a results file records, for tables built in the tests
MACHINE = {"cpu": "cpu", "cpu_count": 2, "torch": "t", "lightning": "l"}
SETTINGS = {"threads": 2, "repeats": 5, "warmup": 2}


def bench_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="bench", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


def test_bench_runs_a_tiny_configuration_end_to_end(tmp_path):
    out = tmp_path / "bench"
    data = "data_throughput.datamodules.shapes_256_workers2"
    # batch 2 in fp32 and bf16 (autocast, as on a GPU): the grid and the mixed-precision path
    cmd = [sys.executable, str(ROOT / "src" / "bench.py"), "configurations=[smoke]", "batch_sizes=[2]",
           "precision=[fp32,bf16]", "warmup=1", "repeats=2",
           "profile=true", f"profile_dir={tmp_path}/profiles", f"output_dir={out}", f"paths.log_dir={tmp_path}/logs",
           "quiet.max_load=null", "quiet.max_busy_cores=null", "data_throughput.epochs=2",
           "~data_throughput.datamodules.shapes_286crop256_workers2", "~data_throughput.datamodules.shapes_256_workers0",
           "~data_throughput.datamodules.shapes_256_workers2_persistent",
           "~data_throughput.datamodules.shapes_286crop256_dataset_defaults",
           "~data_throughput.datamodules.photos_12mp_workers2", "~data_throughput.datamodules.photos_12mp_workers2_full_decode",
           f"{data}.size=32", f"{data}.n_train=4", f"{data}.num_workers=0"]
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1", "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]

    results = json.loads((out / "results.json").read_text())
    rows = results["train_step"]
    assert [(r["name"], r["batch_size"], r["precision"]) for r in rows] == [("smoke", 2, "fp32"), ("smoke", 2, "bf16")]
    for row in rows:
        assert len(row["iteration_times_s"]) == 3 and all(t > 0 for t in row["iteration_times_s"])
        assert row["s_per_iter"] > 0 and row["images_per_s"] > 0
        assert row["peak_rss_bytes"] > row["rss_before_model_bytes"] > 0
        assert row["foreign_cpu_cores"] >= 0
        host = row["host"]   # the host's speed that day, and what kind of CPU it is
        assert host["gemm_gmac_per_s"] > 0 and host["conv_gmac_per_s"] > 0 and host["copy_gb_per_s"] > 0
        assert host["cpu_kind"] == bench_machine.cpu_kind() == results["machine"]["cpu"]
        assert host["free_page_reporting_order"] == bench_machine.free_page_reporting_order()
        assert row["profile"]["top_ops"] and row["profile"]["profiled_s"] > 0
        assert Path(row["profile"]["table"]).is_file()
        by_shape = Path(row["profile"]["table_by_shape"]).read_text()
        assert "Input Shapes" in by_shape and "[2, 3, 32, 32]" in by_shape   # the batch, as the layers see it
    (data_row,) = results["data"]
    assert data_row["items_per_epoch"] == 4 and data_row["items_per_s"] > 0 and data_row["image_shape"] == [3, 32, 32]

    md = (out / "results.md").read_text()
    assert "| configuration |" in md and rows[0]["label"] in md and "precision=bf16" in md and "Data pipeline" in md
    # the host's speed beside the row (a row another process disturbed carries a note after it)
    assert f"{rows[0]['revision']}, host {rows[0]['host']['gemm_gmac_per_s']:.0f} G/s" in md


def test_specs_cover_every_batch_size_and_precision():
    cfg = bench_cfg("device=cuda")  # composing needs no GPU; running would
    specs = train_step_specs(cfg)
    assert {(s["batch_size"], s["precision"]) for s in specs} == {(1, "fp32"), (1, "bf16"), (8, "fp32"), (8, "bf16")}
    assert {s["size"] for s in specs} == {256}
    cpu = train_step_specs(bench_cfg())
    assert {s["name"] for s in cpu} >= {"cyclegan_128", "cyclegan_256", "pix2pix_unet256", "pix2pix_unet128",
                                        "ugatit_light_128", "nicegan_light_128", "nicegan_full_128"}
    assert all(s["threads"] == 2 and s["warmup"] == 2 and s["repeats"] == 5 for s in cpu)


def test_unknown_configuration_is_named():
    with pytest.raises(KeyError, match="no_such_model"):
        train_step_specs(bench_cfg("configurations=[no_such_model]"))


def test_a_fast_conv_trial_names_a_configuration_without_the_setting():
    """model.fast_conv is the translation models' setting: a trial of it over a noise model's row
    is named, not a Hydra refusal of the override; the reference's iteration (which turns it off)
    leaves such a row to the worker, which says the model has no reference iteration."""
    (spec,) = train_step_specs(bench_cfg("configurations=[cyclegan_64]", "tweaks.fast_conv=false"))
    assert spec["overrides"][-1] == "model.fast_conv=false"
    with pytest.raises(ValueError, match="configuration 'dcgan_64' \\(model=dcgan\\) has no model.fast_conv"):
        train_step_specs(bench_cfg("configurations=[dcgan_64]", "tweaks.fast_conv=false"))
    (spec,) = train_step_specs(bench_cfg("configurations=[dcgan_64]", "tweaks.iteration=reference"))
    assert not any("fast_conv" in override for override in spec["overrides"])


@pytest.mark.parametrize("override, message", [
    ("device=gpu", r"device='gpu' must be cpu or cuda"),
    ("threads=0", r"threads=0 must be a positive integer"),
    ("repeats=0", r"repeats=0 must be a positive integer"),
    ("warmup=-1", r"warmup=-1 must be an integer >= 0"),
    ("ab=foo", r"ab='foo' must be one of fast_conv, step_in_backward, or null"),
    ("seed=abc", r"seed='abc' must be an integer >= 0$"),
    ("data_throughput.epochs=0", r"data_throughput.epochs=0 must be a positive integer \(passes over each dataset\)"),
    # a model built for a GPU has no fast_conv rewrites: the row would time the default
    ("device=cuda ab=fast_conv", r"ab=fast_conv measures CPU convolutions, and device=cuda builds none"),
    ("device=cuda tweaks.fast_conv=true", r"tweaks.fast_conv=true measures CPU convolutions"),
])
def test_settings_a_worker_would_fail_on_are_refused_before_any_starts(override, message):
    with pytest.raises(ValueError, match=message):
        bench_run.run_benchmark(bench_cfg(*override.split()))


def _row(name, s_per_iter, variant=None, reference=None):
    return {"kind": "train_step", "name": name, "label": name, "device": "cpu", "batch_size": 1, "precision": "fp32",
            "threads": 2, "variant": variant or {}, "s_per_iter": s_per_iter, "images_per_s": 1 / s_per_iter,
            "peak_rss_bytes": 1e9, "reference": reference, "measured_at": "2026-01-01T00:00:00", "revision": "abc"}


def test_merge_replaces_remeasured_rows_and_keeps_the_rest():
    old = [_row("a", 1.0), _row("b", 2.0), _row("a", 3.0, {"channels_last": True})]
    new = [_row("b", 1.5), _row("c", 4.0)]
    merged = merge_rows(old, new)
    assert [(r["name"], r["s_per_iter"]) for r in merged] == [("a", 1.0), ("b", 1.5), ("a", 3.0), ("c", 4.0)]
    assert len({row_key(r) for r in merged}) == 4


def test_a_run_stopped_part_way_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    def measure(cfg, spec, first, revision):
        if spec["name"] == "cyclegan_64":
            raise KeyboardInterrupt   # as a time limit or Ctrl-C would stop the run
        return _row(spec["name"], 0.5)

    monkeypatch.setattr(bench_run, "measure", measure)
    cfg = bench_cfg("configurations=[smoke,cyclegan_64]", f"output_dir={tmp_path}", "data_throughput=null")
    with pytest.raises(KeyboardInterrupt):
        bench_run.run_benchmark(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["name"], r["s_per_iter"]) for r in results["train_step"]] == [("smoke", 0.5)]
    assert "| smoke |" in (tmp_path / "results.md").read_text()


def test_markdown_puts_the_speedup_beside_the_reference():
    ref = {"code": "ref impl", "s_per_iter": 3.0, "peak_rss_gb": 2.0}
    results = {"machine": MACHINE, "settings": SETTINGS,
               "train_step": [_row("x", 1.5, reference=ref), _row("x", 1.0, {"adam": "fused"}, reference=ref)]}
    md = markdown(results)
    assert "| 2.00x | 0.50x |" in md  # 3.0 / 1.5 faster, 1 GB of 2 GB
    assert "adam=fused" in md and "1.50x" in md  # the variant against the default row


def test_an_interleaved_ab_row_is_compared_with_its_own_off_iterations():
    ab_row = {**_row("x", 1.0, {"ab": "fast_conv"}), "ab": {"setting": "fast_conv", "off_s_per_iter": 1.25}}
    results = {"machine": MACHINE, "settings": SETTINGS,
               "train_step": [_row("x", 2.0), ab_row]}
    md = markdown(results)
    assert "ab=fast_conv" in md and "| 1.250 | 1.25x |" in md   # not 2.0 / 1.0 against the separate run


def test_a_trial_keeps_the_baseline_it_was_saved_with(tmp_path):
    """A later run of the plain configuration (a slower hour) replaces the baseline row, not the
    comparison of the trials saved before it; a trial measured again takes the new baseline."""
    path, md = tmp_path / "r.json", tmp_path / "r.md"
    write_results(path, md, {"train_step": [_row("x", 1.0), _row("x", 0.8, {"channels_last": True})]}, MACHINE, SETTINGS)
    write_results(path, md, {"train_step": [_row("x", 2.0)]}, MACHINE, SETTINGS)
    assert "| default | 0.800 | 1.000 | 1.25x |" in md.read_text()
    write_results(path, md, {"train_step": [_row("x", 1.6, {"channels_last": True})]}, MACHINE, SETTINGS)
    assert "| default | 1.600 | 2.000 | 1.25x |" in md.read_text()


def test_two_benchmarks_into_one_results_file_take_turns_and_a_damaged_file_is_named(tmp_path, monkeypatch):
    """Two benchmarks saving into one results.json (two GPUs of a node) each read, merge and
    write it: one waits for the other's save rather than drop its rows or mix the two files."""
    from src.utils.folder_lock import FolderInUse, FolderLock
    path, md = tmp_path / "r.json", tmp_path / "r.md"
    write_results(path, md, {"train_step": [_row("x", 1.0)]}, MACHINE, SETTINGS)
    monkeypatch.setattr(bench_report, "RESULTS_LOCK_WAIT_S", 0.2)
    with FolderLock(tmp_path, "the other benchmark's save", "", name=".r.json.lock"):
        with pytest.raises(FolderInUse, match=rf"{tmp_path} is in use by process {os.getpid()}.*: {path} is written "
                                              r"by one process at a time. Wait for the other benchmark"):
            write_results(path, md, {"train_step": [_row("y", 2.0)]}, MACHINE, SETTINGS)
    write_results(path, md, {"train_step": [_row("y", 2.0)]}, MACHINE, SETTINGS)   # its save done: merged
    assert [row["name"] for row in json.loads(path.read_text())["train_step"]] == ["x", "y"]
    path.write_text('{"rows": ["B"]}AAAA"]}')   # two unlocked writers' interleaving
    with pytest.raises(ValueError, match=rf"{path} is not a results file .*: move it aside, or pass "
                                         r"merge_results=false"):
        write_results(path, md, {"train_step": [_row("z", 2.0)]}, MACHINE, SETTINGS)


def test_rows_of_one_configuration_on_different_gpus_are_kept_apart(tmp_path):
    """An H200 run neither replaces the H100's rows nor becomes the baseline of its trials; rows
    from before the GPU was recorded stay plain "cuda"."""
    def on(gpu, s_per_iter, variant=None):
        row = {**_row("x", s_per_iter, variant), "device": "cuda", "peak_cuda_allocated_bytes": 1e9,
               "warmup_peak_cuda_allocated_bytes": 2e9}
        return {**row, "gpu_name": gpu} if gpu else row

    path, md = tmp_path / "r.json", tmp_path / "r.md"
    write_results(path, md, {"train_step": [on("NVIDIA H100 80GB HBM3", 0.016), on(None, 0.02)]}, MACHINE, SETTINGS)
    write_results(path, md, {"train_step": [on("NVIDIA H200", 0.009, {"compile": "reduce-overhead"})]},
                  MACHINE, SETTINGS)
    assert "baseline_s_per_iter" not in json.loads(path.read_text())["train_step"][-1]
    write_results(path, md, {"train_step": [on("NVIDIA H200", 0.018)]}, MACHINE, SETTINGS)
    rows = json.loads(path.read_text())["train_step"]
    assert [(r.get("gpu_name"), r["s_per_iter"]) for r in rows] == [
        ("NVIDIA H100 80GB HBM3", 0.016), (None, 0.02), ("NVIDIA H200", 0.009), ("NVIDIA H200", 0.018)]
    text = md.read_text()
    assert "| x | cuda H100 80GB HBM3 | 1 |" in text and "| x | cuda | 1 |" in text
    trial = next(line for line in text.splitlines() if "compile=reduce-overhead" in line)
    assert trial.startswith("| x (cuda H200, batch 1, fp32) |") and "| 0.009 | 0.018 | 2.00x |" in trial


def test_rows_of_other_cpu_kinds_or_thread_counts_are_kept_apart(tmp_path):
    """A run on another kind of CPU, or with other threads, neither replaces the stored rows nor
    becomes the baseline of their trials; a 4-thread row gets no speed-up against the 2-thread
    reference times."""
    ref = {"code": "ref impl", "s_per_iter": 3.0, "peak_rss_gb": 2.0}

    def on(kind, s_per_iter, variant=None, threads=2):
        return {**_row("x", s_per_iter, variant, reference=ref), "threads": threads,
                "host": {"cpu_kind": kind, "gemm_gmac_per_s": 50.0}}

    path, md = tmp_path / "r.json", tmp_path / "r.md"
    write_results(path, md, {"train_step": [on("EPYC", 1.5)]}, MACHINE, SETTINGS)
    write_results(path, md, {"train_step": [on("Xeon", 0.6, {"channels_last": True})]}, MACHINE, SETTINGS)
    assert "baseline_s_per_iter" not in json.loads(path.read_text())["train_step"][-1]   # not EPYC's row
    write_results(path, md, {"train_step": [on("Xeon", 1.2), on("Xeon", 0.5, threads=4)]}, MACHINE, SETTINGS)
    rows = json.loads(path.read_text())["train_step"]
    assert [(r["host"]["cpu_kind"], r["threads"], r["s_per_iter"]) for r in rows] == [
        ("EPYC", 2, 1.5), ("Xeon", 2, 0.6), ("Xeon", 2, 1.2), ("Xeon", 4, 0.5)]
    lines = md.read_text().splitlines()
    assert any(line.startswith("| x | cpu EPYC | 1 |") and "| 2.00x |" in line for line in lines)
    assert any(line.startswith("| x | cpu Xeon | 1 |") and "| 2.50x |" in line for line in lines)
    four_threads = [line for line in lines if line.startswith("| x | cpu Xeon | 1 |") and "| 0.500 |" in line]
    assert len(four_threads) == 1 and "| - | - |" in four_threads[0]   # no speed-up, no memory ratio
    trial = next(line for line in lines if "channels_last=True" in line)
    assert "| 0.600 | 1.200 | 2.00x |" in trial   # against the Xeon row measured after it


def test_data_rows_of_an_allocator_trial_are_kept_apart_from_trainings(tmp_path):
    def data_row(allocator, items_per_s):
        return {"kind": "data", "name": "shapes", "device": "cpu", "threads": 2, "allocator": allocator,
                "host": {"cpu_kind": "Xeon"}, "datamodule": {"num_workers": 0}, "image_shape": [3, 8, 8],
                "items_per_s": items_per_s, "steady_items_per_s": items_per_s}
    path, md = tmp_path / "r.json", tmp_path / "r.md"
    write_results(path, md, {"data": [data_row("thp", 300.0)]}, MACHINE, SETTINGS)
    write_results(path, md, {"data": [data_row("reuse", 320.0)]}, MACHINE, SETTINGS)
    assert [r["allocator"] for r in json.loads(path.read_text())["data"]] == ["thp", "reuse"]
    assert "| shapes (none) | cpu Xeon | reuse | 3x8x8 |" in md.read_text()


def test_the_quiet_check_looks_at_the_cpus_the_benchmark_may_use(monkeypatch):
    """On a share of a node (a SLURM job's cores), other jobs' work on the other cores made the
    benchmark wait its whole patience before every row, then flag each one disturbed."""
    from src.utils import bench_machine
    stat = ("cpu  900 0 100 1000 0 0 0 0 0 0\n"
            "cpu0 800 0 100 100 0 0 0 0 0 0\n"     # another job's core, busy
            "cpu1 100 0 0 900 0 0 0 0 0 0\n"       # ours, mostly idle
            "intr 12345\n")
    assert bench_machine.busy_cpu_ticks(stat) == 1000
    assert bench_machine.busy_cpu_ticks(stat, {1}) == 100
    # the load average counts the whole node: not checked on a share of it
    monkeypatch.setattr(bench_machine, "allowed_cpus", lambda: {1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(bench_machine, "load_average", lambda: 50.0)
    said = []
    assert bench_machine.wait_until_quiet(max_load=0.5, max_busy_cores=None, wait_s=0, checks=0, log=said.append)
    assert "the load average, which counts all of them, is not checked" in said[0]
    monkeypatch.setattr(bench_machine, "allowed_cpus", lambda: {0, 1})   # the whole machine: it is
    assert not bench_machine.wait_until_quiet(max_load=0.5, max_busy_cores=None, wait_s=0, checks=0, log=said.append)


def test_a_save_cut_short_leaves_the_earlier_results_whole(tmp_path, monkeypatch):
    path, md = tmp_path / "r.json", tmp_path / "r.md"
    write_results(path, md, {"train_step": [_row("x", 1.0)]}, MACHINE, SETTINGS)
    before = path.read_text()

    def killed(src, dst):   # the process dies between writing the new text and putting it in place
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_results(path, md, {"train_step": [_row("y", 2.0)]}, MACHINE, SETTINGS)
    assert path.read_text() == before
    monkeypatch.undo()
    write_results(path, md, {"train_step": [_row("y", 2.0)]}, MACHINE, SETTINGS)
    assert [r["name"] for r in json.loads(path.read_text())["train_step"]] == ["x", "y"]


def test_the_profile_counts_steps_taken_inside_the_backward_once():
    """With step_in_backward the optimizer steps run inside the engine's backward spans: they are
    the optimizer's time, not the backward's as well."""
    net = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    optimizers = {p: torch.optim.Adam([p]) for p in net.parameters()}

    def step(param):
        optimizers[param].step()
        optimizers[param].zero_grad()
    for param in net.parameters():
        param.register_post_accumulate_grad_hook(step)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        net(torch.randn(16, 256)).sum().backward()
    events = profiler.events()
    engine_us = sum(e.cpu_time_total for e in events if e.name.startswith(bench_profile.BACKWARD_SPAN))
    split = bench_profile.time_split_us(events)
    assert split["optimizer_step"] > 0 and split["zero_grad"] > 0 and split["backward"] > 0
    assert split["backward"] + split["optimizer_step"] + split["zero_grad"] == pytest.approx(engine_us)


def test_the_timer_reads_peak_memory_after_the_timed_iterations_and_leaves_the_last_batch_untimed(monkeypatch):
    """The untimed last batch (an epoch's end, or the profiled one) adds neither a time nor its
    memory to the row."""
    readings = iter(range(100))
    monkeypatch.setattr(bench_step, "peak_rss_bytes", lambda: next(readings))
    timer = bench_step.IterationTimer("cpu", warmup=1, repeats=2)
    for batch_idx in range(4):
        timer.starter.on_train_batch_start(None, None, None, batch_idx)
        timer.on_train_batch_end(None, None, None, None, batch_idx)
        if batch_idx == 2:
            assert timer.peak_memory == {"peak_rss_bytes": 0}
    assert len(timer.times) == 3 and timer.peak_memory == {"peak_rss_bytes": 0} and timer.foreign_cores is not None


def test_the_ema_a_model_trains_with_is_part_of_its_timed_iteration():
    """ProGAN and StyleGAN average their generators after every iteration (their configs turn the
    EMA on); the translation models' EMA is off unless configured."""
    conf = str(ROOT / "conf")
    (ema,) = bench_step.training_callbacks(compose_model_config(conf, "stylegan", 32, []))
    assert isinstance(ema, GeneratorEMA) and ema.enabled and ema.half_life_images == 10000
    assert bench_step.training_callbacks(compose_model_config(conf, "cyclegan", 32, [])) == []
    (ema,) = bench_step.training_callbacks(compose_model_config(conf, "cyclegan", 32, ["callbacks.ema.enabled=true"]))
    assert ema.enabled


def test_the_reference_iteration_row_is_compared_with_ours_as_it_runs():
    results = {"machine": MACHINE, "settings": SETTINGS,
               "train_step": [_row("x", 1.0), {**_row("x", 4.0, {"allocator": "default"}), "allocator": "default"},
                              {**_row("x", 2.0, {"iteration": "reference", "allocator": "default"}),
                               "allocator": "default"}]}
    md = markdown(results)
    # against our default row (1.0 s), not our run under the reference's allocator (4.0 s)
    assert "baseline: ours, as it runs) | default | 2.000 | 1.000 | 0.50x |" in md


def test_ab_measures_both_settings_alternately_in_one_run(tmp_path):
    (spec,) = train_step_specs(bench_cfg("configurations=[smoke]", "ab=step_in_backward", "warmup=1", "repeats=2",
                                         f"paths.log_dir={tmp_path}"))
    assert spec["variant"] == {"ab": "step_in_backward"}
    seen = []
    original = bench_ab._step_in_backward

    def recording(model):
        toggle = original(model)
        return lambda on: (seen.append(on), toggle(on))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_ab, "TOGGLES", {**bench_ab.TOGGLES, "step_in_backward": recording})
        result = measure_training_step({**spec, "work_dir": str(tmp_path)})
    # an even warm-up (1 -> 2) so both settings warm up, then 2 timed iterations of each, then
    # the untimed last batch
    assert seen == [True, False, True, False, True, False, True]
    ab = result["ab"]
    assert len(ab["on_times_s"]) == len(ab["off_times_s"]) == 2
    assert result["s_per_iter"] == ab["on_s_per_iter"] > 0 and ab["off_s_per_iter"] > 0 and ab["pair_speedup"] > 0
    assert len(result["iteration_times_s"]) == 6


def test_iteration_reference_runs_only_the_reference_on_torch_layers(tmp_path):
    (spec,) = train_step_specs(bench_cfg("configurations=[smoke]", "tweaks.iteration=reference", "tweaks.fast_conv=true",
                                         "warmup=1", "repeats=1", f"paths.log_dir={tmp_path}"))
    assert spec["variant"] == {"iteration": "reference", "fast_conv": False, "spectral_norm": "torch",
                               "allocator": "default"} and spec["allocator"] == "default"
    assert spec["overrides"][-1] == "model.fast_conv=false"   # the reference's layers are torch's
    calls = []
    original = CycleGANReference.__call__

    def reference(self, batch):
        calls.append(sum(isinstance(m, REWRITTEN_LAYERS) for m in self.model.modules()))
        return original(self, batch)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CycleGAN, "train_iteration", lambda self, batch: calls.append("own"))
        mp.setattr(CycleGANReference, "__call__", reference)
        measure_training_step({**spec, "work_dir": str(tmp_path)})
    assert calls == [0, 0, 0]   # every iteration the reference's (the untimed last one too), none on rewritten layers
    with pytest.raises(ValueError, match="tweaks.iteration='theirs' must be own or reference"):
        train_step_specs(bench_cfg("configurations=[smoke]", "tweaks.iteration=theirs"))
    with pytest.raises(ValueError, match="cannot be combined with ab=fast_conv"):
        train_step_specs(bench_cfg("configurations=[smoke]", "tweaks.iteration=reference", "ab=fast_conv"))


def test_the_reference_iteration_is_refused_where_the_reference_trains_something_else():
    with pytest.raises(ValueError, match="Linear has no reference iteration here"):
        reference_for(nn.Linear(2, 2))
    cfg = compose_model_config(str(ROOT / "conf"), "cyclegan", 32, ["loss=vanilla", "model.generator.ngf=4",
                                                                     "model.generator.n_blocks=1", "model.discriminator.ndf=4"])
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ValueError, match=r"loss.gan_mode=vanilla \(the reference's: lsgan\)"):
        reference_for(model)
    # A model built on CycleGAN's may train another algorithm: it gets no CycleGAN reference.
    cfg = compose_model_config(str(ROOT / "conf"), "cyclegan", 32, ["model.generator.ngf=4", "model.generator.n_blocks=1",
                                                                     "model.discriminator.ndf=4"])
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert isinstance(reference_for(model), CycleGANReference)
    model.__class__ = type("CycleGANVariant", (CycleGAN,), {})
    with pytest.raises(ValueError, match="CycleGANVariant has no reference iteration here"):
        reference_for(model)


def test_pairs_compare_neighbouring_iterations():
    # warm-up 0-1, then pairs (on, off); a slow spell starts in the second pair's "off" iteration
    halves = bench_ab.split_times([9.0, 9.0, 1.0, 2.0, 1.0, 10.0, 10.0, 11.0], 2, "fast_conv")
    assert halves["on_times_s"] == [1.0, 1.0, 10.0] and halves["off_times_s"] == [2.0, 10.0, 11.0]
    assert halves["off_s_per_iter"] / halves["on_s_per_iter"] == 10.0   # the medians see the spell
    assert halves["pair_speedup"] == 2.0                                 # the pairs: 2, 10, 1.1


def test_fast_conv_toggle_swaps_rewritten_layers_to_torch_and_back():
    net = nn.Sequential(nn.Conv2d(32, 3, 3, padding=1), nn.ConvTranspose2d(3, 4, 4, 2, 1))
    assert use_narrow_output(net) == 1 and use_gemm_conv(net) == {"gemm_conv": 0, "gemm_conv_transpose": 1}
    rewritten = [type(m) for m in net]
    x = torch.randn(1, 32, 6, 6)
    expected = net(x)
    toggle = bench_ab.make_toggle("fast_conv", net)
    toggle(False)
    assert [type(m) for m in net] == [nn.Conv2d, nn.ConvTranspose2d]
    assert torch.allclose(net(x), expected, atol=1e-5)
    toggle(True)
    assert [type(m) for m in net] == rewritten


def test_ab_settings_that_cannot_be_switched_are_refused():
    with pytest.raises(ValueError, match="ab='allocator'.*fast_conv"):
        bench_ab.make_toggle("allocator", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="ab=fast_conv: this model has no rewritten"):
        bench_ab.make_toggle("fast_conv", nn.Sequential(nn.Conv2d(3, 3, 3)))


# ----- torch.compile modes and the GPU check script -------------------------------------------------

def test_an_unknown_compile_mode_is_refused_with_its_key():
    with pytest.raises(ValueError, match=r"tweaks.compile='fastest' must be one of .*reduce-overhead"):
        train_step_specs(bench_cfg("tweaks.compile=fastest"))


def test_the_gpu_check_script_runs_each_step_with_valid_benchmark_commands(tmp_path):
    """A dry run of experiments/bench/gpu_check.sh with a stand-in python
    (tests/scripts/gpu_check_dry_run.py): every step runs and its benchmark command lines compose
    into the GPU rows they are meant to measure; a typo would otherwise cost a GPU machine's time."""
    shim, log, out, wheels = tmp_path / "python3", tmp_path / "commands.jsonl", tmp_path / "out", tmp_path / "wheels"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT}/tests/scripts/gpu_check_dry_run.py" "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PY": str(shim), "OUT": str(out), "WHEELS": str(wheels), "DRY_RUN_LOG": str(log)}
    subprocess.run(["bash", str(ROOT / "experiments/bench/gpu_check.sh")], env=env, check=True, timeout=600,
                   cwd=tmp_path)

    summary = (out / "summary.log").read_text()
    for step in ("install", "gpu_tests", "compile_tests", "cuda_graphs", "rows"):
        assert f"{step}: exit 0 " in summary, summary
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    commands = [entry["args"] for entry in entries]
    assert ["-m", "pytest", "-q", "tests/test_gpu.py"] in commands
    assert ["-m", "pytest", "-q", "-rxX", "tests/test_compile.py", "-k", "eager_ones and cuda"] in commands
    install = next(args for args in commands if args[:3] == ["-m", "pip", "install"])
    assert "--no-index" in install and str(wheels / "packages.txt") in install
    cuda_graphs, rows = [entry["specs"] for entry in entries if "specs" in entry]
    assert {s["device"] for s in rows + cuda_graphs} == {"cuda"}
    measured = {(s["name"], s["batch_size"], s["precision"]) for s in rows}
    assert measured == {("nicegan_full_256", batch, precision) for batch in (1, 8) for precision in ("fp32", "bf16")}
    assert all(s["variant"] == {} for s in rows)
    assert {(s["name"], s["batch_size"], s["precision"]) for s in cuda_graphs} == {("cyclegan_256", 1, "fp32")}
    assert [s["variant"] for s in cuda_graphs] == [{"compile": "reduce-overhead"}]
    assert {p.name for p in out.iterdir()} >= {"results_cuda.json", "results_cuda.md"}


# ----- ours against the reference's iteration, alternating processes (versus_reference) -------------

def versus_specs() -> tuple[dict, dict]:
    """A configuration's spec for ours and for the reference's iteration, as bench_run pairs them."""
    own = {"name": "x", "label": "X", "device": "cpu", "batch_size": 1, "precision": "fp32", "allocator": "thp",
           "variant": {}}
    return own, {**own, "variant": {"iteration": "reference"}}


def test_versus_reference_pairs_ours_with_the_reference_in_alternating_order():
    own, reference = versus_specs()
    times = iter([1.0, 1.5, 2.4, 1.2, 1.0, 2.0])   # pair 0: ours, ref; pair 1: ref, ours; pair 2: ours, ref
    order = []

    def measure(spec):
        side = spec["variant"].get("iteration", "own")
        order.append(side)
        return {"s_per_iter": next(times), "peak_rss_bytes": 2e9 if side == "own" else 3e9,
                "host": {"gemm_gmac_per_s": 80.0 if side == "own" else 60.0},
                "measured_at": "2026-11-23T10:00:00", "revision": "abc"}
    entry = bench_versus.run_pairs(own, reference, 3, measure)
    assert order == ["own", "reference", "reference", "own", "own", "reference"]
    assert [p["speedup"] for p in entry["pairs"]] == [1.5, 2.0, 2.0]   # reference / ours, pair by pair
    assert entry["speedup"] == 2.0 and entry["own_s_per_iter"] == 1.0 and entry["reference_s_per_iter"] == 2.0
    assert entry["own_peak_gb"] == 2.0 and entry["reference_peak_gb"] == 3.0
    md = markdown({"machine": MACHINE, "settings": SETTINGS, "versus_reference": [entry]})
    assert entry["host_gemm_gmac_per_s"] == 70.0   # each pair's two processes, then the median over pairs
    assert ("| X | cpu | 1 | fp32 | 3 | 1.000 | 2.000 | 2.00x (1.50-2.00x) | - | 70-79: 2.00x (3) | 2.00 / 3.00 "
            "| 2026-11-23 abc, host 70 G/s |") in md


def test_versus_reference_groups_the_pairs_by_host_rate():
    own, reference = versus_specs()
    row = {"peak_rss_bytes": 1e9, "measured_at": "2026-11-23T10:00:00", "revision": "r"}

    def pair(index, speedup, rate):
        host = {"host": {"gemm_gmac_per_s": rate}} if rate else {}
        return bench_versus.pair_summary(index, {**row, **host, "s_per_iter": 1.0},
                                         {**row, **host, "s_per_iter": speedup})
    pairs = [pair(0, 1.25, 64.0), pair(1, 1.75, 69.9), pair(2, 1.8, 85.0), pair(3, 1.6, 71.0), pair(4, 1.2, None)]
    entry = bench_versus.summarise(own, pairs)
    assert entry["speedup_by_host_rate"] == [   # slowest band first; the pair without a rate in none
        {"host_gemm_gmac_per_s": [60, 70], "pairs": 2, "speedup": 1.5},
        {"host_gemm_gmac_per_s": [70, 80], "pairs": 1, "speedup": 1.6},
        {"host_gemm_gmac_per_s": [80, 90], "pairs": 1, "speedup": 1.8}]
    assert entry["speedup"] == 1.6   # the overall verdict still counts every pair
    md = markdown({"machine": MACHINE, "settings": SETTINGS, "versus_reference": [entry]})
    assert "| 60-69: 1.50x (2); 70-79: 1.60x (1); 80-89: 1.80x (1) |" in md


def test_versus_reference_drops_a_pair_with_a_skipped_side_and_refuses_no_pairs():
    own, reference = versus_specs()
    results = iter([{"s_per_iter": 1.0, "peak_rss_bytes": 1e9, "measured_at": "t", "revision": "r"}, None])
    entry = bench_versus.run_pairs(own, reference, 1, lambda spec: next(results))
    assert entry["pairs"] == [] and "speedup" not in entry      # the machine stayed busy: no verdict
    with pytest.raises(ValueError, match="versus_reference=0 must be a number of pairs"):
        bench_versus.run_pairs(own, reference, 0, lambda spec: None)


def test_versus_reference_specs_match_each_configuration_with_its_reference_iteration(tmp_path):
    cfg = bench_cfg("configurations=[smoke]", "batch_sizes=[1,2]", "versus_reference=2", f"paths.log_dir={tmp_path}")
    pairs = versus_reference_specs(cfg)
    assert [(o["name"], o["batch_size"], r["batch_size"]) for o, r in pairs] == [("smoke", 1, 1), ("smoke", 2, 2)]
    for own, reference in pairs:
        assert own["variant"] == {} and reference["variant"]["iteration"] == "reference"
        assert reference["allocator"] == "default" and reference["overrides"][-1] == "model.fast_conv=false"
    assert cfg.tweaks.iteration == "own"   # the caller's config is left as it was
    with pytest.raises(ValueError, match="cannot be combined with ab=fast_conv"):
        versus_reference_specs(bench_cfg("configurations=[smoke]", "versus_reference=2", "ab=fast_conv"))
    with pytest.raises(ValueError, match="leave tweaks.iteration=own"):
        versus_reference_specs(bench_cfg("configurations=[smoke]", "versus_reference=2", "tweaks.iteration=reference"))


def test_merge_keeps_versus_entries_per_configuration(tmp_path):
    spec = {"name": "x", "label": "X", "device": "cpu", "batch_size": 1, "precision": "fp32", "allocator": "thp"}
    row = {"s_per_iter": 1.0, "peak_rss_bytes": 1e9, "measured_at": "2026-11-23T10:00:00", "revision": "r"}
    pair = bench_versus.pair_summary(0, row, {**row, "s_per_iter": 1.6})
    path = tmp_path / "r.json"
    first = [bench_versus.summarise(spec, []), bench_versus.summarise({**spec, "name": "y"}, [pair])]
    write_results(path, tmp_path / "r.md", {"versus_reference": first}, MACHINE, SETTINGS)
    write_results(path, tmp_path / "r.md", {"versus_reference": [bench_versus.summarise(spec, [pair, pair])]},
                  MACHINE, SETTINGS)
    saved = json.loads(path.read_text())["versus_reference"]
    assert [(e["name"], len(e["pairs"])) for e in saved] == [("x", 2), ("y", 1)]   # x re-measured, y kept
    assert "| X | cpu | 1 | fp32 | 2 | 1.000 | 1.600 | 1.60x (1.60-1.60x)" in (tmp_path / "r.md").read_text()


def test_median_interval_widens_to_the_order_statistics_the_pairs_can_vouch_for():
    # P(median outside [x_(k), x_(n+1-k)]) = 2 P(Binomial(n, 1/2) < k): five values cannot reach
    # 95% even with [min, max] (1 - 2/32), six can (1 - 2/64); ten reach it with k = 2 (97.9%),
    # not with k = 3 (89.1%).
    assert bench_versus.median_interval([1.4, 1.5, 1.6, 1.3, 1.7]) is None
    assert bench_versus.median_interval([1.4, 1.5, 1.6, 1.3, 1.7, 1.2]) == (1.2, 1.7)
    ten = [1.0, 1.9, 1.1, 1.8, 1.2, 1.7, 1.3, 1.6, 1.4, 1.5]
    assert bench_versus.median_interval(ten) == (1.1, 1.8)
    assert bench_versus.median_interval(ten, confidence=0.85) == (1.2, 1.7)


def test_versus_runs_on_the_same_code_pool_their_pairs(tmp_path):
    spec = {"name": "x", "label": "X", "device": "cpu", "batch_size": 1, "precision": "fp32", "allocator": "thp"}

    def entry(revision, speedups):
        row = {"s_per_iter": 1.0, "peak_rss_bytes": 1e9, "measured_at": "2026-12-02T10:00:00", "revision": revision}
        return bench_versus.summarise(spec, [bench_versus.pair_summary(i, row, {**row, "s_per_iter": s})
                                             for i, s in enumerate(speedups)])
    path, md = tmp_path / "r.json", tmp_path / "r.md"

    def same(a, b):   # "abc" and "abd" differ in prose only
        return {a, b} <= {"abc", "abd"} or a == b

    def run(revision, speedups):
        write_results(path, md, {"versus_reference": [entry(revision, speedups)]}, MACHINE, SETTINGS,
                      combine={"versus_reference": lambda old, new: bench_versus.pool_same_code(old, new, same)})
        (saved,) = json.loads(path.read_text())["versus_reference"]
        return saved

    first = run("abc", [1.3, 1.4, 1.5])
    assert len(first["pairs"]) == 3 and first["speedup_ci95"] is None       # too few pairs for an interval
    pooled = run("abd", [1.6, 1.7, 1.45])
    assert [p["speedup"] for p in pooled["pairs"]] == pytest.approx([1.3, 1.4, 1.5, 1.6, 1.7, 1.45])
    assert [p["pair"] for p in pooled["pairs"]] == [0, 1, 2, 3, 4, 5]
    assert pooled["speedup"] == pytest.approx(1.475) and pooled["speedup_ci95"] == pytest.approx((1.3, 1.7))
    assert "| 6 | 1.000 | 1.475 | 1.48x (1.30-1.70x) | 1.30-1.70x |" in md.read_text()
    assert len(run("def", [1.5])["pairs"]) == 1                              # changed code: the pairs start over
    assert len(run("def+dirty", [1.5])["pairs"]) == 1                        # uncommitted code: never pooled
    assert len(run("def+dirty", [1.5])["pairs"]) == 1
    assert len(run("def (no git)", [1.5])["pairs"]) == 1                     # a copy without git: never pooled
    assert len(run("def (no git)", [1.5])["pairs"]) == 1


def test_the_revision_and_its_code_ignore_the_benchmarks_own_outputs_and_prose(tmp_path):
    repo = tmp_path / "repo"
    (repo / "experiments" / "bench").mkdir(parents=True)
    (repo / "src").mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null",
           "-C", str(repo)]   # (a user's signing or hooks would stop the commits)
    (repo / "src" / "utils").mkdir()
    (repo / "tests").mkdir()
    files = {"src/a.py": "x = 1\n", "experiments/bench/results.json": "{}\n", "README.md": "r\n",
             "tests/test_a.py": "t = 1\n", "src/utils/bench_report.py": "f = 1\n",
             "src/utils/bench_versus.py": "order = 1\n"}
    for name, text in files.items():
        (repo / name).write_text(text)
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    clean = measured_code_revision(repo)
    (repo / "experiments/bench/results.json").write_text('{"x": 1}\n')
    (repo / "README.md").write_text("changed\n")
    (repo / "tests/test_a.py").write_text("t = 2\n")                  # no benchmark process runs it
    (repo / "src/utils/bench_report.py").write_text("f = 2\n")        # formats stored results only
    assert measured_code_revision(repo) == clean and not clean.endswith("+dirty")
    subprocess.run([*git, "commit", "-qam", "results and prose"], check=True)
    prose = measured_code_revision(repo)
    (repo / "src/a.py").write_text("x = 2\n")
    assert measured_code_revision(repo) == prose + "+dirty"
    subprocess.run([*git, "commit", "-qam", "code"], check=True)
    code = measured_code_revision(repo)
    assert same_measured_code(clean, prose, repo) and same_measured_code(code, code, repo)
    assert not same_measured_code(prose, code, repo) and not same_measured_code(clean, "0000000", repo)
    (repo / "src/utils/bench_versus.py").write_text("order = 2\n")    # the pairs' order is measured code
    assert measured_code_revision(repo) == code + "+dirty"
    subprocess.run([*git, "commit", "-qam", "order"], check=True)
    order = measured_code_revision(repo)
    (repo / "notes.txt").write_text("n\n")            # not added, and outside the code: no run reads it
    assert measured_code_revision(repo) == order
    (repo / "src/new_model.py").write_text("y = 1\n")  # not added yet, and a run can import it
    assert measured_code_revision(repo) == order + "+dirty"


def test_a_copy_without_git_is_labelled_with_the_revision_its_caller_names(tmp_path, monkeypatch):
    copy = tmp_path / "copy"   # a working tree copied to another machine, without .git
    copy.mkdir()
    monkeypatch.delenv("BENCH_REVISION", raising=False)
    assert measured_code_revision(copy) == "unknown"
    monkeypatch.setenv("BENCH_REVISION", "877e4df")
    assert measured_code_revision(copy) == "877e4df (no git)"
    # a claim git cannot check: never pooled with the revision it names
    assert not same_measured_code("877e4df (no git)", measured_code_revision(ROOT).removesuffix("+dirty"))


def test_a_noise_model_is_timed_on_labelled_batches_of_its_critic_steps(tmp_path):
    """The classic family's rows: random labelled batches holding one real batch per critic
    step, every optimizer step of the iteration timed."""
    # (batch 3, 2 critic steps: a loader batch of 3 would not split into the two real batches)
    (spec,) = train_step_specs(bench_cfg("configurations=[noise_smoke]", "batch_sizes=[3]", "precision=fp32",
                                         "warmup=1", "repeats=2", f"paths.log_dir={tmp_path}"))
    result = measure_training_step({**spec, "work_dir": str(tmp_path)})
    assert len(result["iteration_times_s"]) == 3 and result["s_per_iter"] > 0
    assert result["images_per_s"] == pytest.approx(3 / result["s_per_iter"])


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma {flags}

processor\t: 1
model name\t: something else
"""


def test_cpu_kind_tells_apart_hosts_of_one_model_name():
    zen2 = bench_machine.cpu_kind(CPUINFO.format(family=23, model=49, flags="avx2"))
    zen4 = bench_machine.cpu_kind(CPUINFO.format(family=25, model=17, flags="avx2 avx512f avx512_bf16"))
    assert zen2 == "AMD EPYC (family 23 model 49, AVX2)"          # the first processor's block
    assert zen4 == "AMD EPYC (family 25 model 17, AVX-512 with BF16)"
    arm = bench_machine.cpu_kind("Features\t: fp asimd\nCPU part\t: 0xd0c\n")   # no x86 fields: the name alone
    assert arm and "family" not in arm


@pytest.mark.parametrize("files, expected", [
    ({"page_reporting_order": "9\n", "reported_kib": "338025840\n"}, 9),   # a Firecracker guest
    ({"page_reporting_order": "9\n"}, 9),                                 # a kernel that counts nothing
    ({"page_reporting_order": "9\n", "reported_kib": "0\n"}, None),      # no device reports
    ({"page_reporting_order": "11\n", "reported_kib": "5\n"}, None),     # above any block's order: off
    ({}, None),                                                          # no page reporting at all
])
def test_free_page_reporting_is_read_from_the_guest_kernel(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    params = tmp_path if files else tmp_path / "absent"
    assert bench_machine.free_page_reporting_order(params) == expected


def test_pairs_keep_both_sides_warm_ups_and_the_page_reporting():
    row = {"s_per_iter": 1.0, "peak_rss_bytes": 1e9, "measured_at": "2026-12-04T23:00:00", "revision": "r",
           "warmup_times_s": [4.8, 0.8], "host": {"cpu_kind": "Xeon", "free_page_reporting_order": 9}}
    pair = bench_versus.pair_summary(0, row, {**row, "s_per_iter": 1.5, "warmup_times_s": [0.65, 0.4]})
    assert pair["own_warmup_s"] == [4.8, 0.8] and pair["reference_warmup_s"] == [0.65, 0.4]
    assert pair["free_page_reporting_order"] == 9 and pair["speedup"] == 1.5


VERSUS_SPEC = {"name": "x", "label": "X", "device": "cpu", "batch_size": 1, "precision": "fp32", "allocator": "thp"}


def versus_entry(spec: dict, speedups: list[float], kind: str = "AVX2 part", conv: float = 80.0) -> dict:
    """A versus_reference entry of `spec` with one pair per speed-up, measured on CPU `kind`."""
    row = {"s_per_iter": 1.0, "peak_rss_bytes": 1e9, "measured_at": "2026-12-03T10:00:00", "revision": "abc",
           "host": {"gemm_gmac_per_s": 50.0, "conv_gmac_per_s": conv, "cpu_kind": kind}}
    return bench_versus.summarise(spec, [bench_versus.pair_summary(i, row, {**row, "s_per_iter": s})
                                         for i, s in enumerate(speedups)])


def stored_after(path: Path, md: Path, new: dict) -> list[dict]:
    """results.json's versus entries once `new` is saved, as a run on the same code saves it."""
    write_results(path, md, {"versus_reference": [new]}, MACHINE, SETTINGS,
                  combine={"versus_reference": lambda old, new: bench_versus.pool_same_code(old, new,
                                                                                             lambda a, b: True)})
    return json.loads(path.read_text())["versus_reference"]


def test_versus_reference_keeps_one_verdict_per_kind_of_cpu(tmp_path):
    path, md = tmp_path / "r.json", tmp_path / "r.md"
    stored_after(path, md, versus_entry(VERSUS_SPEC, [1.4, 1.5], "AVX2 part"))
    saved = stored_after(path, md, versus_entry(VERSUS_SPEC, [1.7, 1.8], "AVX-512 part", conv=100.0))
    # the second kind is a verdict of its own, not pooled with the first
    assert [(e["cpu_kind"], len(e["pairs"]), e["speedup"]) for e in saved] == [
        ("AVX2 part", 2, pytest.approx(1.45)), ("AVX-512 part", 2, pytest.approx(1.75))]
    saved = stored_after(path, md, versus_entry(VERSUS_SPEC, [1.6], "AVX2 part"))   # the same kind again: pooled
    assert [len(e["pairs"]) for e in saved] == [3, 2] and saved[0]["host_conv_gmac_per_s"] == 80.0
    text = md.read_text()
    assert "| X | cpu AVX2 part | 1 | fp32 | 3 |" in text and "| X | cpu AVX-512 part | 1 | fp32 | 2 |" in text
    assert "| 2026-12-03 abc, host 50 G/s (oneDNN conv 80) |" in text
    with pytest.raises(ValueError, match="different kinds of CPU"):
        bench_versus.summarise(VERSUS_SPEC, versus_entry(VERSUS_SPEC, [1.5], "a")["pairs"]
                               + versus_entry(VERSUS_SPEC, [1.5], "b")["pairs"])


def test_versus_reference_keeps_one_verdict_per_gpu(tmp_path):
    """H100 and H200 pairs are verdicts of their own (they pooled under "cuda")."""
    path, md = tmp_path / "r.json", tmp_path / "r.md"
    spec = {**VERSUS_SPEC, "device": "cuda"}

    def on(gpu, speedups):
        row = {"s_per_iter": 0.01, "peak_rss_bytes": 1e9, "peak_cuda_allocated_bytes": 2e9, "gpu_name": gpu,
               "measured_at": "2026-12-03T10:00:00", "revision": "abc"}
        return bench_versus.summarise(spec, [bench_versus.pair_summary(i, row, {**row, "s_per_iter": 0.01 * s})
                                             for i, s in enumerate(speedups)])
    stored_after(path, md, on("NVIDIA H100 80GB HBM3", [1.4, 1.5]))
    saved = stored_after(path, md, on("NVIDIA H200", [1.9]))
    assert [(e["gpu_name"], len(e["pairs"])) for e in saved] == [("NVIDIA H100 80GB HBM3", 2), ("NVIDIA H200", 1)]
    assert "| X | cuda H200 | 1 | fp32 | 1 |" in md.read_text()
    with pytest.raises(ValueError, match="different GPUs"):
        bench_versus.summarise(spec, on("a", [1.5])["pairs"] + on("b", [1.5])["pairs"])


def test_a_versus_run_whose_pairs_were_all_skipped_leaves_the_stored_verdict(tmp_path, monkeypatch):
    """A busy machine (`quiet.on_busy=skip`) skipped every pair: nothing is stored for the run,
    and pooling keeps the stored pairs (an entry without pairs used to replace them)."""
    stored = versus_entry(VERSUS_SPEC, [1.4, 1.5])
    assert bench_versus.pool_same_code(stored, bench_versus.summarise(VERSUS_SPEC, []), lambda a, b: True) is stored
    out = tmp_path / "bench"
    write_results(out / "results.json", out / "results.md", {"versus_reference": [stored]}, MACHINE, SETTINGS)
    monkeypatch.setattr(bench_run, "measure", lambda cfg, spec, first, revision: None)
    results = bench_run.run_benchmark(bench_cfg("versus_reference=2", "configurations=[pix2pix_unet128]",
                                                f"output_dir={out}", "data_throughput=null"))
    assert [len(e["pairs"]) for e in results["versus_reference"]] == [2]


def test_the_goal_is_judged_by_the_interval_of_the_median_per_kind_of_cpu():
    """Met only when the 95% interval lies at or above 1.5x, not met when below, open across it;
    too few pairs for an interval are judged by the median and say so; more peak memory than the
    reference in any pair is named; trials are not verdicts on the goal."""
    met = versus_entry(VERSUS_SPEC, [1.6, 1.55, 1.7, 1.65, 1.58, 1.62], "Xeon")
    below = versus_entry(VERSUS_SPEC, [1.3, 1.4, 1.45, 1.35, 1.42, 1.38], "EPYC")
    spans = versus_entry({**VERSUS_SPEC, "name": "y", "label": "Y"}, [1.3, 1.6, 1.7, 1.45, 1.8, 1.55], "Xeon")
    few = versus_entry({**VERSUS_SPEC, "name": "z", "label": "Z"}, [1.6, 1.7], "Xeon")
    heavier = {**few, "pairs": [{**p, "own_peak_gb": 2.0, "reference_peak_gb": 1.5} for p in few["pairs"]]}
    trial = versus_entry({**VERSUS_SPEC, "variant": {"allocator": "default"}}, [2.0], "Xeon")
    assert bench_report.goal_verdict(met) == "met"
    assert bench_report.goal_verdict(below) == "not met"
    assert bench_report.goal_verdict(spans) == "open (the interval spans 1.5x)"
    assert bench_report.goal_verdict(few) == "met by the median (2 pairs: too few for an interval)"
    assert bench_report.goal_verdict(heavier).endswith("; more peak memory than the reference in some pair")
    rows = bench_report.goal_table([met, spans, below, trial, few])[2:]
    assert [row.split(" | ")[:5] for row in rows] == [["| X", "cpu EPYC", "1", "fp32", "6"],
                                                      ["| X", "cpu Xeon", "1", "fp32", "6"],
                                                      ["| Y", "cpu Xeon", "1", "fp32", "6"],
                                                      ["| Z", "cpu Xeon", "1", "fp32", "2"]]


def test_versus_reference_keeps_a_trials_pairs_apart_from_ours_as_configured(tmp_path):
    """`versus_reference=N tweaks.allocator=default` (or `warmup=8`): the trial's pairs are a
    verdict of their own, labelled with the trial in results.md, and ours as configured keeps
    its verdict (the trial used to replace it, or be pooled with it on the same code)."""
    path, md = tmp_path / "r.json", tmp_path / "r.md"
    stored_after(path, md, versus_entry(VERSUS_SPEC, [1.3, 1.4]))
    trial = {**VERSUS_SPEC, "allocator": "default", "variant": {"allocator": "default"}}
    saved = stored_after(path, md, versus_entry(trial, [1.8, 1.9]))
    assert [(e.get("variant"), len(e["pairs"]), e["speedup"]) for e in saved] == [
        (None, 2, pytest.approx(1.35)), ({"allocator": "default"}, 2, pytest.approx(1.85))]
    saved = stored_after(path, md, versus_entry(trial, [2.0]))   # the same trial again: pooled with its own
    assert [len(e["pairs"]) for e in saved] == [2, 3]
    longer_warmup = {**VERSUS_SPEC, "warmup": 8, "repeats": 5, "threads": 2}   # the protocol is part of the verdict
    saved = stored_after(path, md, versus_entry(longer_warmup, [1.6]))
    assert [(e.get("variant"), len(e["pairs"])) for e in saved] == [
        (None, 2), ({"allocator": "default"}, 3), ({"warmup": 8}, 1)]
    pairs_table = md.read_text().split("## Against the reference's iteration")[1]
    rows = [line for line in pairs_table.splitlines() if line.startswith("| X")]
    assert [line.split(" | ")[0] for line in rows] == ["| X", "| X (allocator=default)", "| X (warmup=8)"]


def test_data_throughput_of_stand_in_photos_decoded_at_reduced_scale_and_whole():
    """The photo rows: JPEGs written into the DataModule's folders, the items of the configured
    size either way (reduced decode changes the time, not the output's shape)."""
    from src.utils.bench_data import measure_data_throughput
    node = {"_target_": "src.data.unpaired.UnpairedDataModule", "name": "photos", "batch_size": 1, "num_workers": 0,
            "photos": {"count": 3, "width": 640, "height": 480}, "preprocess": "resize_and_crop", "load_size": 72,
            "crop_size": 64}
    for reduced in (True, False):
        row = measure_data_throughput({"threads": 1, "epochs": 2, "datamodule": {**node, "reduced_jpeg_decode": reduced}})
        assert row["items_per_epoch"] == 3 and row["image_shape"] == [3, 64, 64] and row["items_per_s"] > 0


def test_the_benchmark_outside_linux_stops_at_once_naming_what_to_time_instead():
    """It reads /proc (and imports `resource`): on macOS it failed at its first machine reading,
    on Windows at import, with errors that named neither."""
    from src.bench import require_linux
    require_linux("linux")
    for platform in ("darwin", "win32"):
        with pytest.raises(SystemExit, match=f"src/bench.py measures on Linux only .*this is {platform}.*"
                                             "time/it_per_s"):
            require_linux(platform)


def test_a_workers_peak_memory_is_its_own_not_that_of_the_process_that_started_it(tmp_path):
    """Linux carries ru_maxrss over an exec from the parent: a worker started by a process that
    holds 300 MB read 300 MB as its own peak. peak_rss_bytes reads the worker's own high-water mark."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import subprocess, sys\n"
        "held = bytearray(300 * 2**20)\n"
        "held[::4096] = b'x' * len(held[::4096])\n"   # touched: resident
        "child = 'from src.utils.bench_machine import peak_rss_bytes; print(peak_rss_bytes())'\n"
        "print(subprocess.run([sys.executable, '-c', child], capture_output=True, text=True, check=True).stdout)\n")
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert 0 < int(result.stdout) < 200 * 2**20


def test_the_image_pools_are_full_when_the_timed_iterations_start(train_cfg):
    """A few iterations leave CycleGAN's pools of 50 fakes nearly empty: the peak memory of a run
    past its first iterations holds them full."""
    from src.utils.bench_step import fill_image_pools, random_batches

    cfg = train_cfg("model=cyclegan", "model.pool_size=5", "data.input_nc=1", "loss.weights.identity=0")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    batch = random_batches(1, 2, cfg.data, 32, 0, False)[0]
    fill_image_pools(model, batch, "cpu")
    assert {name: [tuple(image.shape) for image in pool.images] for name, pool in model.pools.items()} == {
        "fake_A": [(1, 1, 32, 32)] * 5, "fake_B": [(1, 3, 32, 32)] * 5}
    pix2pix = hydra.utils.instantiate(train_cfg("model=pix2pix", "data=shapes_paired", "model.pool_size=2").model,
                                      _recursive_=False)
    fill_image_pools(pix2pix, batch, "cpu")
    assert [tuple(image.shape) for image in pix2pix.pools["fake_AB"].images] == [(1, 4, 32, 32)] * 2
