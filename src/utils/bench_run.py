"""The body of `src/bench.py`: expand the config into measurements, run each in a fresh process
once the machine is quiet, and write the results (see conf/bench.yaml)."""
from __future__ import annotations

import copy
import datetime
import functools
import itertools
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.callbacks.compile_networks import check_compile_mode
from src.utils import code_version
from src.utils.bench_ab import TOGGLES
from src.utils.bench_machine import cpu_kind, load_average, wait_until_quiet
from src.utils.bench_report import (interval_text, is_reference_iteration, memory_gb, memory_kind, versus_key,
                                    write_results)
from src.utils.bench_step import compose_model_config
from src.utils.bench_versus import pool_same_code, run_pairs
from src.utils.bench_worker import run_in_subprocess
from src.utils.config_checks import check_seed, require_int
from src.utils.training_config import CONF_DIR, ROOT_DIR, compose_training_config

log = logging.getLogger(__name__)


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def active_tweaks(tweaks: dict[str, Any], device: str) -> dict[str, Any]:
    """The tweaks that differ from the defaults (what makes a row a variant)."""
    defaults = {"channels_last": False, "adam": None, "compile": False, "cudnn_benchmark": True, "allocator": None,
                "spectral_norm": None, "step_in_backward": None, "fast_conv": None, "iteration": "own"}
    relevant = {k: v for k, v in tweaks.items() if device == "cuda" or k != "cudnn_benchmark"}
    return {k: v for k, v in relevant.items() if v != defaults.get(k)}


def train_step_specs(cfg: DictConfig) -> list[dict[str, Any]]:
    """One spec per configuration x batch size x precision, in the configured order."""
    tweaks = OmegaConf.to_container(cfg.tweaks, resolve=True)
    iteration = tweaks.get("iteration", "own")
    if iteration not in ("own", "reference"):
        raise ValueError(f"tweaks.iteration={iteration!r} must be own or reference (conf/bench.yaml)")
    check_compile_mode("tweaks.compile", tweaks.get("compile", False))
    if iteration == "reference" and cfg.ab:
        raise ValueError(f"tweaks.iteration=reference runs only the reference's iteration, so it cannot be combined "
                         f"with ab={cfg.ab}: compare separate runs (experiments/bench/README.md says why)")
    if iteration == "reference":
        # torch's layers and spectral norm, and glibc's allocator unless a trial names one: the
        # reference scripts set no allocator (the row lists all three)
        tweaks.update(fast_conv=False, spectral_norm="torch", allocator=tweaks.get("allocator") or "default")
    specs = []
    for name in as_list(cfg.configurations):
        if name not in cfg.catalog:
            raise KeyError(f"configuration '{name}' is not in the catalog of conf/bench.yaml; "
                           f"known: {sorted(cfg.catalog)}")
        entry = OmegaConf.to_container(cfg.catalog[name], resolve=True)
        training_cfg = compose_model_config(str(CONF_DIR), entry["model"], int(entry["size"]),
                                            entry.get("overrides", []))
        if tweaks.get("fast_conv") is not None:   # a model setting: composed like the row's overrides
            if "fast_conv" in training_cfg.model:
                entry["overrides"] = [*entry.get("overrides", []),
                                      f"model.fast_conv={str(tweaks['fast_conv']).lower()}"]
            elif iteration != "reference":   # (which names the models it has an iteration for)
                raise ValueError(f"tweaks.fast_conv={tweaks['fast_conv']}: configuration '{name}' (model="
                                 f"{entry['model']}) has no model.fast_conv, a setting of the translation models; "
                                 f"leave it out of configurations")
        # As src/train.py runs this model (its config may choose the allocator), unless a trial sets one.
        allocator = tweaks.get("allocator") or training_cfg.get("allocator", "default")
        for batch_size in as_list(cfg.batch_sizes):
            for precision in as_list(cfg.precision):
                if precision not in ("fp32", "bf16"):
                    raise ValueError(f"precision must be fp32 or bf16, got '{precision}'")
                specs.append({
                    "kind": "train_step", "name": name, "label": entry.get("label", name),
                    "model": entry["model"], "size": int(entry["size"]), "overrides": entry.get("overrides", []),
                    "reference": entry.get("reference"), "batch_size": int(batch_size), "precision": precision,
                    "device": cfg.device, "threads": int(cfg.threads), "warmup": int(cfg.warmup),
                    "repeats": int(cfg.repeats), "seed": int(cfg.seed), "tweaks": tweaks,
                    "variant": {**active_tweaks(tweaks, cfg.device), **({"ab": cfg.ab} if cfg.ab else {})},
                    "ab": cfg.ab, "allocator": allocator,
                    "conf_dir": str(CONF_DIR),
                    "profile": {"dir": str(cfg.profile_dir), "row_limit": int(cfg.profile_rows)} if cfg.profile else None,
                })
    return specs


def data_specs(cfg: DictConfig) -> list[dict[str, Any]]:
    """One spec per DataModule, its loader run on the CPU under the allocator training uses
    (conf/train.yaml's `allocator`, unless a trial sets one)."""
    if not cfg.get("data_throughput"):
        return []
    require_int("data_throughput.epochs", cfg.data_throughput.get("epochs"), why=" (passes over each dataset)")
    allocator = cfg.tweaks.get("allocator") or compose_training_config([], str(CONF_DIR)).get("allocator", "default")
    return [{"kind": "data", "name": name, "device": "cpu", "threads": int(cfg.threads),
             "epochs": int(cfg.data_throughput.epochs), "allocator": allocator,
             "datamodule": OmegaConf.to_container(node, resolve=True)}
            for name, node in cfg.data_throughput.datamodules.items()]


#: paths whose changes leave the measured code as it was (git pathspecs): the benchmark's outputs
#: and the other experiment records, prose, the tests and CI (no benchmark process runs them), and
#: the module that only formats stored results. Everything a timed process imports or is configured
#: by stays measured, the benchmark's own timing and pairing code included.
UNMEASURED_PATHS = (":(exclude)experiments", ":(exclude)*.md", ":(exclude)tests", ":(exclude).ci",
                    ":(exclude)src/utils/bench_report.py")


def measured_code_revision(root: Path = ROOT_DIR) -> str:
    """Short commit hash, with '+dirty' when the working tree has changes (results depend on the code).

    The benchmark's own outputs, the prose, the tests and the results' formatting
    (UNMEASURED_PATHS) do not count: they change nothing that is measured, and a run that follows an uncommitted run's results
    must still count as measured at the clean revision (`versus_reference` pools the pairs of
    runs on the same code).

    Without git (a copy of the working tree on another machine) the rows carry $BENCH_REVISION,
    the revision the caller says the copy is, marked as such; its pairs never pool
    (`bench_versus.COMMIT`: git cannot check the claim)."""
    revision = code_version.git_revision(root, UNMEASURED_PATHS)
    if revision is not None:
        return revision
    given = os.environ.get("BENCH_REVISION")
    return f"{given} (no git)" if given else "unknown"


def same_measured_code(a: str, b: str, root: Path = ROOT_DIR) -> bool:
    """Whether revisions `a` and `b` differ only outside what is measured (UNMEASURED_PATHS); False
    when git cannot tell (a revision it does not know, no git)."""
    if a == b:
        return True
    try:
        return subprocess.run(["git", "diff", "--quiet", a, b, "--", ".", *UNMEASURED_PATHS], cwd=root,
                              capture_output=True).returncode == 0
    except OSError:
        return False


def machine_info(cfg: DictConfig) -> dict[str, Any]:
    import pytorch_lightning as pl
    info = {"cpu": cpu_kind(), "cpu_count": torch.multiprocessing.cpu_count(), "threads": int(cfg.threads),
            "python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__,
            "device": cfg.device}
    if cfg.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def wait_for_quiet(cfg: DictConfig, name: str, first: bool) -> bool:
    """True when the machine is quiet (or checks are off); applies `quiet.on_busy` otherwise.

    The load average only gates the first measurement: later it still carries our own previous
    configuration for minutes, so from then on only the CPU in use right now counts.
    """
    q = cfg.quiet
    if wait_until_quiet(q.max_load if first else None, q.max_busy_cores, q.wait_s, q.checks, log.info):
        return True
    if q.on_busy == "fail":
        raise RuntimeError(f"machine still busy before '{name}' (load {load_average():.2f}); nothing measured")
    log.warning("machine still busy before '%s': %s", name, "skipped" if q.on_busy == "skip" else "measuring anyway")
    return q.on_busy != "skip"


def measure(cfg: DictConfig, spec: dict[str, Any], first: bool, revision: str) -> dict[str, Any] | None:
    """Run one spec in a fresh process once the machine is quiet; its result row (None: skipped)."""
    title = f"{spec['name']}" + (f" batch {spec['batch_size']} {spec['precision']}" if spec["kind"] == "train_step" else "")
    if is_reference_iteration(spec):
        title += " (the reference's iteration)"
    if not wait_for_quiet(cfg, title, first=first):
        return None
    load_before = load_average()
    log.info("measuring %s ...", title)
    result = run_in_subprocess(spec)
    row = {**{k: v for k, v in spec.items() if k not in ("conf_dir", "tweaks", "profile")}, **result,
           "load_before": load_before, "measured_at": datetime.datetime.now().isoformat(timespec="seconds"),
           "revision": revision}
    if spec["kind"] == "train_step":
        foreign = result.get("foreign_cpu_cores")
        row["disturbed"] = foreign is not None and foreign > cfg.quiet.max_foreign_cores
        ab = result.get("ab")
        log.info("%s: %.3f s/iter, %.2f images/s, peak memory %.2f GB %s%s%s", title, result["s_per_iter"],
                 result["images_per_s"], memory_gb(result), memory_kind(result),
                 f"; with {ab['setting']} off in the same run: {ab['off_s_per_iter']:.3f} s/iter "
                 f"({ab['off_s_per_iter'] / result['s_per_iter']:.2f}x; by pairs {ab['pair_speedup']:.2f}x)"
                 if ab else "",
                 f" (other processes used {foreign:.2f} cores: disturbed)" if row["disturbed"] else "")
    else:
        log.info("%s: %.1f items/s (steady %.1f)", title, result["items_per_s"], result["steady_items_per_s"])
    return row


def versus_reference_specs(cfg: DictConfig) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(ours, the reference's iteration) for every configuration x batch size x precision."""
    if cfg.ab:
        raise ValueError(f"versus_reference compares whole runs, so it cannot be combined with ab={cfg.ab}")
    if cfg.tweaks.iteration != "own":
        raise ValueError("versus_reference runs the reference's iteration itself: leave tweaks.iteration=own")
    reference_cfg = copy.deepcopy(cfg)
    reference_cfg.tweaks.iteration = "reference"
    return list(zip(train_step_specs(cfg), train_step_specs(reference_cfg)))


def _interval_clause(entry: dict[str, Any]) -> str:
    interval = interval_text(entry)
    return f"; 95% CI of the median {interval}" if interval else ""


def check_settings(cfg: DictConfig) -> None:
    """Refuse, before any process starts, settings a worker would fail on after minutes."""
    if cfg.device not in ("cpu", "cuda"):
        raise ValueError(f"device={cfg.device!r} must be cpu or cuda (conf/bench.yaml: suites)")
    for key, least in (("threads", 1), ("repeats", 1), ("warmup", 0)):
        require_int(key, cfg[key], least=least, why=" (conf/bench.yaml)")
    check_seed("seed", cfg.seed, allow_none=False)
    if cfg.get("ab") is not None and cfg.ab not in TOGGLES:
        raise ValueError(f"ab={cfg.ab!r} must be one of {', '.join(TOGGLES)}, or null (conf/bench.yaml)")
    if cfg.device != "cpu" and (cfg.get("ab") == "fast_conv" or (cfg.get("tweaks") or {}).get("fast_conv")):
        # (a model built for a GPU has none of its rewrites, CPU convolutions: the row would time the default)
        raise ValueError(f"{'ab=fast_conv' if cfg.get('ab') == 'fast_conv' else 'tweaks.fast_conv=true'} measures "
                         f"CPU convolutions, and device={cfg.device} builds none: use device=cpu")


def run_benchmark(cfg: DictConfig) -> dict[str, Any]:
    check_settings(cfg)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device")
    revision = measured_code_revision()
    rows: dict[str, list] = {"train_step": [], "data": [], "versus_reference": []}
    settings = {"warmup": int(cfg.warmup), "repeats": int(cfg.repeats), "threads": int(cfg.threads),
                "device": cfg.device, "seed": int(cfg.seed)}
    machine = machine_info(cfg)
    out_dir = Path(cfg.output_dir)

    def save() -> dict[str, Any]:
        return write_results(out_dir / f"{cfg.results_name}.json", out_dir / f"{cfg.results_name}.md", rows,
                             machine, settings, merge=bool(cfg.merge_results),
                             combine={"versus_reference": functools.partial(pool_same_code,
                                                                            same_code=same_measured_code)})
    if cfg.get("versus_reference") is not None:
        calls = itertools.count()   # only the run's first measurement waits for the load average
        for own, reference in versus_reference_specs(cfg):
            entry = run_pairs(own, reference, int(cfg.versus_reference),
                              lambda spec: measure(cfg, spec, next(calls) == 0, revision))
            if not entry["pairs"]:   # every pair skipped (a busy machine): nothing to store
                log.warning("%s: no pair measured", entry["name"])
                continue
            log.info("%s against the reference's iteration: %.2fx (median of %d pairs, %.2f-%.2fx%s)",
                     entry["name"], entry["speedup"], len(entry["pairs"]), *entry["speedup_range"],
                     _interval_clause(entry))
            rows["versus_reference"].append(entry)
    else:
        for index, spec in enumerate(train_step_specs(cfg) + data_specs(cfg)):
            row = measure(cfg, spec, index == 0, revision)
            if row is not None:
                rows[spec["kind"]].append(row)
                # After every row, so a run stopped part-way (a time limit, Ctrl-C) keeps what it
                # measured. Rows merge by key: saving the same rows again changes nothing. (Not
                # the pairs above: a save adds them to the stored entry of the same code.)
                save()
    results = save()
    stored = {versus_key(e): e for e in results.get("versus_reference", [])}
    for entry in rows["versus_reference"]:
        pooled = stored.get(versus_key(entry))
        if pooled is not None and len(pooled["pairs"]) > len(entry["pairs"]):
            log.info("%s, with the earlier runs' pairs on the same code: %.2fx (median of %d pairs%s)",
                     pooled["name"], pooled["speedup"], len(pooled["pairs"]), _interval_clause(pooled))
    log.info("results: %s", out_dir / f"{cfg.results_name}.md")
    return results
