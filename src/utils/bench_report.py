"""Benchmark results: one JSON file (every number) and one markdown table beside the references.

Rows of earlier runs are kept unless this run measured the same row again (`merge`), so a
table can be filled one configuration at a time when the machine is only briefly idle. Each
row records when it was measured and at which code revision.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from src.utils.folder_lock import FolderLock
from src.utils.whole_files import write_text_whole

#: how long a benchmark waits for another's save of the same results file (a save takes well
#: under a second; a longer hold is a benchmark stuck, or a lock the filesystem never gives up)
RESULTS_LOCK_WAIT_S = 60.0

GB = 1e9

#: how the issue's reference table was measured: 2 warm-ups, the median of 5 iterations, 2 threads
#: (on a CPU, batch 1, fp32)
REFERENCE_PROTOCOL = {"warmup": 2, "repeats": 5, "threads": 2}


def device_of(row: dict[str, Any]) -> str:
    """The row's device with the hardware it ran on: the GPU on CUDA ("cuda H200"), the kind of
    CPU on a CPU ("cpu AMD EPYC (family 23 model 49, AVX2)"). One configuration runs at
    different speeds on different GPUs and CPU generations, so their rows are different
    measurements. Rows from before the hardware was recorded say "cuda" or "cpu" (data rows from
    before their device was recorded ran on the CPU). A row keeps the CPU's kind in `host`
    (measured beside it), a `versus_reference` entry at its top level."""
    device = row.get("device", "cpu")
    if device == "cuda":
        gpu = row.get("gpu_name")
        return f"cuda {gpu.removeprefix('NVIDIA ')}" if gpu else "cuda"
    kind = row.get("host", {}).get("cpu_kind") or row.get("cpu_kind")
    return f"{device} {kind}" if kind else device


def row_key(row: dict[str, Any]) -> str:
    """What makes two rows the same measurement: configuration, hardware, threads, batch,
    precision and tweaks (a run on another CPU or thread count adds rows, never replaces)."""
    threads = f"t{row.get('threads')}"
    if row["kind"] == "data":   # the allocator too: a trial's rows are not training's
        return f"data/{row['name']}/{device_of(row)}/{threads}/{allocator_of(row)}"
    variant = json.dumps(row.get("variant", {}), sort_keys=True)
    return (f"train_step/{row['name']}/{device_of(row)}/{threads}/b{row['batch_size']}/{row['precision']}"
            f"/{variant}")


def versus_key(entry: dict[str, Any]) -> str:
    """One verdict per configuration, hardware (kind of CPU, GPU) and trial: pairs run with
    tweaks (an allocator trial, say) are a verdict of their own, never pooled with ours as
    configured (entries from before the hardware was recorded keep a key of their own)."""
    variant = f"/{json.dumps(entry['variant'], sort_keys=True)}" if entry.get("variant") else ""
    return f"versus/{entry['name']}/{device_of(entry)}/b{entry['batch_size']}/{entry['precision']}{variant}"


def variant_text(variant: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(variant.items()))


#: results.json's lists, and what makes two of their entries the same measurement
KINDS: dict[str, Callable[[dict], str]] = {"train_step": row_key, "data": row_key, "versus_reference": versus_key}


Combine = Callable[[dict, dict], dict]


def _replace(old: dict, new: dict) -> dict:
    return new


def merge_rows(old: list[dict], new: list[dict], key: Callable[[dict], str] = row_key,
               combine: Combine = _replace) -> list[dict]:
    """Old rows in their order, each with a new row of the same key combined into it (by default:
    replaced by it); new keys appended."""
    fresh = {key(r): r for r in new}
    merged = [combine(r, fresh.pop(key(r))) if key(r) in fresh else r for r in old]
    return merged + [r for r in new if key(r) in fresh]


def write_results(json_path: Path, md_path: Path, rows: dict[str, list], machine: dict, settings: dict,
                  merge: bool = True, combine: dict[str, Combine] | None = None) -> dict[str, Any]:
    """Write results.json and its markdown. With `merge`, rows of the file that this run did not
    measure are kept, and a re-measured one is replaced, or combined with the new one by
    `combine[kind]`."""
    # Whole files (a run killed mid-write leaves the earlier one), and one writer at a time: two
    # benchmarks into one file (two GPUs of a node, a checkout shared over NFS) save after every
    # row, and a merge that read the file before the other's save would drop its rows.
    with FolderLock(json_path.parent, str(json_path), "Wait for the other benchmark, or pass results_name=NAME "
                    "for a file of this run's own.", name=f".{json_path.name}.lock", wait_s=RESULTS_LOCK_WAIT_S):
        if merge and json_path.exists():
            old = read_results(json_path)
            combine = combine or {}
            rows = {kind: merge_rows(old.get(kind, []), rows.get(kind, []), key, combine.get(kind, _replace))
                    for kind, key in KINDS.items()}
        freeze_trial_baselines(rows.get("train_step", []))
        results = {"machine": machine, "settings": settings, **rows}
        write_text_whole(json_path, json.dumps(results, indent=2) + "\n")
        write_text_whole(md_path, markdown(results))
    return results


def read_results(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a results file this benchmark can merge into ({error}): move it aside, "
                         f"or pass merge_results=false to write over it") from error


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def memory_gb(row: dict) -> float:
    """The peak memory the row is judged by: CUDA peak allocated on a GPU, else peak RSS."""
    return row.get("peak_cuda_allocated_bytes", row["peak_rss_bytes"]) / GB


def memory_kind(row: dict) -> str:
    """Which peak `memory_gb` gives: "alloc" (CUDA peak allocated) or "RSS"."""
    return "alloc" if "peak_cuda_allocated_bytes" in row else "RSS"


def host_rate(row: dict, rate: str = "gemm_gmac_per_s") -> float | None:
    """A rate of the host measured right after the row, if it was (`bench_machine.host_speed`):
    by default its fp32 product rate (G multiply-adds/s)."""
    return row.get("host", {}).get(rate)


def measured_cell(row: dict, gemm_rate: float | None, conv_rate: float | None = None) -> str:
    host = f", host {gemm_rate:.0f} G/s" if gemm_rate else ""
    conv = f" (oneDNN conv {conv_rate:.0f})" if conv_rate else ""
    return f"{row['measured_at'][:10]} {row['revision']}{host}{conv}"


def is_reference_iteration(row: dict) -> bool:
    """A row that ran the reference code's iteration (`tweaks.iteration=reference`)."""
    return row.get("variant", {}).get("iteration") == "reference"


def row_note(row: dict, usual: dict | None = None) -> str:
    notes = []
    if usual and (row.get("warmup"), row.get("repeats")) != (usual["warmup"], usual["repeats"]):
        notes.append(f"median of {row.get('repeats')} after {row.get('warmup')} warm-ups")
    if row["device"] == "cuda" and "warmup_peak_cuda_allocated_bytes" not in row:
        notes.append("peak memory includes cuDNN's warm-up algorithm search")
    if row.get("disturbed"):
        notes.append(f"disturbed: other processes used {row['foreign_cpu_cores']:.2f} cores")
    if is_reference_iteration(row):
        notes.append("the reference's iteration; baseline: ours, as it runs")
    return f" ({'; '.join(notes)})" if notes else ""


def train_step_table(rows: list[dict], usual: dict | None = None) -> list[str]:
    lines = ["| configuration | device | batch | precision | allocator | s/iter | images/s | peak memory (GB) | reference "
             "| ref s/iter | ref peak RSS (GB) | speed-up | memory vs ref | measured |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        # The references were measured on a CPU at batch 1 in fp32 with 2 threads: other rows have none.
        comparable = (bool(r.get("reference")) and r["device"] == "cpu" and r["batch_size"] == 1
                      and r["precision"] == "fp32" and r.get("threads") == REFERENCE_PROTOCOL["threads"])
        ref = r["reference"] if comparable else {}
        speedup = ref["s_per_iter"] / r["s_per_iter"] if comparable else None
        memory = memory_gb(r)
        memory_ratio = memory / ref["peak_rss_gb"] if comparable else None
        note = row_note(r, usual)
        lines.append(
            f"| {r['label']} | {device_of(r)} | {r['batch_size']} | {r['precision']} | {allocator_of(r)} | {r['s_per_iter']:.3f} "
            f"| {r['images_per_s']:.2f} | {memory:.2f} {memory_kind(r)} | {ref.get('code', '-')} "
            f"| {_fmt(ref.get('s_per_iter'))} | {_fmt(ref.get('peak_rss_gb'))} "
            f"| {_fmt(speedup) + 'x' if speedup else '-'} | {_fmt(memory_ratio) + 'x' if memory_ratio else '-'} "
            f"| {measured_cell(r, host_rate(r))}{note} |")
    return lines


def is_variant(row: dict) -> bool:
    """A trial rather than a table row: tweaks, or reduced precision on a CPU (not the default there)."""
    return bool(row.get("variant")) or (row["device"] == "cpu" and row["precision"] != "fp32")


def allocator_of(row: dict) -> str:
    return row.get("allocator") or "default"  # rows from before the allocator setting existed


def baseline_row(row: dict, rows: list[dict]) -> dict | None:
    """What a trial is compared with: the same configuration without the trial's tweaks, on the
    same device (the same GPU or kind of CPU) and threads, under the same allocator (a default row, or an allocator-only
    trial), in fp32 on a CPU. An allocator trial is compared with the default row, and the
    reference's iteration (`iteration=reference`, run with the reference's allocator) with ours
    as it runs."""
    precision = "fp32" if row["device"] == "cpu" else row["precision"]
    same = [r for r in rows if (r["name"], device_of(r), r.get("threads"), r["batch_size"], r["precision"]) ==
            (row["name"], device_of(row), row.get("threads"), row["batch_size"], precision)]
    tweaks = set(row.get("variant", {})) - {"allocator"}
    if (not tweaks and row["precision"] == precision) or is_reference_iteration(row):
        return next((r for r in same if not r.get("variant")), None)
    return next((r for r in same if set(r.get("variant", {})) <= {"allocator"}
                 and allocator_of(r) == allocator_of(row)), None)


def freeze_trial_baselines(rows: list[dict]) -> None:
    """Give each trial row that has none the s/iter of its baseline as it stands when the trial
    is saved (`baseline_s_per_iter`): a later run of the plain configuration, at another hour,
    replaces the baseline row, and would otherwise change every trial's comparison with it."""
    for row in rows:
        if is_variant(row) and not row.get("ab") and "baseline_s_per_iter" not in row:
            base = baseline_row(row, rows)
            if base is not None:
                row["baseline_s_per_iter"] = base["s_per_iter"]


def trial_baseline(row: dict, all_rows: list[dict]) -> float | None:
    """The s/iter a trial is compared with: an interleaved A/B's own iterations with the setting
    off, the baseline recorded when the trial was saved, or (rows from before that was recorded,
    tables built in memory) the baseline row there is now."""
    if row.get("ab"):
        return row["ab"]["off_s_per_iter"]
    if "baseline_s_per_iter" in row:
        return row["baseline_s_per_iter"]
    base = baseline_row(row, all_rows)
    return base["s_per_iter"] if base else None


def variant_table(rows: list[dict], all_rows: list[dict], usual: dict | None = None) -> list[str]:
    lines = ["| configuration | variant | allocator | s/iter | baseline s/iter | speed-up vs baseline | peak memory (GB) "
             "| measured |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = trial_baseline(r, all_rows)
        ratio = base / r["s_per_iter"] if base else None
        changes = {**r["variant"], **({"precision": r["precision"]} if r["precision"] != "fp32" else {})}
        variant = variant_text(changes)
        lines.append(f"| {r['label']} ({device_of(r)}, batch {r['batch_size']}, {r['precision']}) | {variant}{row_note(r, usual)} "
                     f"| {allocator_of(r)} | {r['s_per_iter']:.3f} | {_fmt(base, 3) if base else '-'} "
                     f"| {_fmt(ratio) + 'x' if ratio else '-'} | {memory_gb(r):.2f} "
                     f"| {measured_cell(r, host_rate(r))} |")
    return lines


def data_table(rows: list[dict]) -> list[str]:
    lines = ["| DataModule | device | allocator | image | workers | persistent | items/s, all epochs "
             "| items/s after the first epoch |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dm = r["datamodule"]
        pipeline = f"{dm.get('preprocess', 'none')}" + (f" {dm['load_size']}->{dm['crop_size']}" if dm.get("load_size") else "")
        lines.append(f"| {r['name']} ({pipeline}) | {device_of(r)} | {allocator_of(r)} | {'x'.join(map(str, r['image_shape']))} | {dm.get('num_workers', 0)} "
                     f"| {'yes' if dm.get('persistent_workers') else 'no'} "
                     f"| {r['items_per_s']:.1f} | {r['steady_items_per_s']:.1f} |")
    return lines


def versus_table(entries: list[dict]) -> list[str]:
    lines = ["| configuration | device | batch | precision | pairs | ours s/iter | reference's iteration s/iter "
             "| speed-up, median of pairs (range) | 95% CI of the median | by host rate, G/s: speed-up (pairs) "
             "| peak memory ours / reference (GB) | measured |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        if not e["pairs"]:
            continue
        disturbed = sum(p["disturbed"] for p in e["pairs"])
        note = f" ({disturbed} disturbed)" if disturbed else ""
        last = e["pairs"][-1]
        low, high = e["speedup_range"]
        trial = f" ({variant_text(e['variant'])})" if e.get("variant") else ""
        lines.append(f"| {e['label']}{trial} | {device_of(e)} | {e['batch_size']} | {e['precision']} | {len(e['pairs'])}{note} "
                     f"| {e['own_s_per_iter']:.3f} | {e['reference_s_per_iter']:.3f} "
                     f"| {e['speedup']:.2f}x ({low:.2f}-{high:.2f}x) | {interval_text(e) or '-'} | {_by_host_rate_cell(e)} "
                     f"| {e['own_peak_gb']:.2f} / {e['reference_peak_gb']:.2f} "
                     f"| {measured_cell(last, e.get('host_gemm_gmac_per_s'), e.get('host_conv_gmac_per_s'))} |")
    return lines


#: the issue's goal: ours at least this many times faster than the reference's iteration
GOAL_SPEEDUP = 1.5


def goal_verdict(entry: dict, goal: float = GOAL_SPEEDUP) -> str:
    """Whether an entry's pairs show ours `goal` times faster with no more peak memory: decided by
    the 95% interval of the median where the pairs give one (met above it, not met below it,
    open across it), else by the median alone, which says so."""
    memory = "" if all(p["own_peak_gb"] <= p["reference_peak_gb"] for p in entry["pairs"]) else \
        "; more peak memory than the reference in some pair"
    interval = entry.get("speedup_ci95")
    if interval:
        low, high = interval
        speed = "met" if low >= goal else "not met" if high < goal else f"open (the interval spans {goal}x)"
    else:
        speed = (f"{'met' if entry['speedup'] >= goal else 'not met'} by the median "
                 f"({len(entry['pairs'])} pairs: too few for an interval)")
    return speed + memory


def goal_table(entries: list[dict], goal: float = GOAL_SPEEDUP) -> list[str]:
    """Each configuration's verdict per device (kind of CPU, GPU), as configured (trials left out),
    in the order the configurations were first measured."""
    plain = [e for e in entries if e["pairs"] and not e.get("variant")]
    order = {name: i for i, name in enumerate(dict.fromkeys(e["name"] for e in plain))}
    lines = [f"| configuration | device | batch | precision | pairs | speed-up (median of pairs) | 95% CI of the median "
             f"| peak memory ours / reference, worst pair (GB) | goal: {goal}x, no more memory |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(plain, key=lambda e: (order[e["name"]], device_of(e), e["batch_size"], e["precision"])):
        worst = max(e["pairs"], key=lambda p: p["own_peak_gb"] / p["reference_peak_gb"])
        lines.append(f"| {e['label']} | {device_of(e)} | {e['batch_size']} | {e['precision']} | {len(e['pairs'])} "
                     f"| {e['speedup']:.2f}x "
                     f"| {interval_text(e) or '-'} | {worst['own_peak_gb']:.2f} / {worst['reference_peak_gb']:.2f} "
                     f"| {goal_verdict(e, goal)} |")
    return lines


def interval_text(entry: dict) -> str | None:
    """The entry's 95% confidence interval of the median speed-up as text; None without one."""
    interval = entry.get("speedup_ci95")
    return f"{interval[0]:.2f}-{interval[1]:.2f}x" if interval else None


def _by_host_rate_cell(entry: dict) -> str:
    bands = entry.get("speedup_by_host_rate") or []
    return "; ".join(f"{b['host_gemm_gmac_per_s'][0]}-{b['host_gemm_gmac_per_s'][1] - 1}: "
                     f"{b['speedup']:.2f}x ({b['pairs']})" for b in bands) or "-"


def usual_settings(rows: list[dict], fallback: dict) -> dict:
    """Warm-up and repeat counts most rows were measured with (rows keep their own)."""
    counts = Counter((r.get("warmup", fallback.get("warmup")), r.get("repeats", fallback.get("repeats"))) for r in rows)
    warmup, repeats = counts.most_common(1)[0][0] if counts else (fallback.get("warmup"), fallback.get("repeats"))
    return {**fallback, "warmup": warmup, "repeats": repeats}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    rows = results.get("train_step", [])
    s = usual_settings(rows, results["settings"])
    plain = [r for r in rows if not is_variant(r)]
    variants = [r for r in rows if is_variant(r)]
    before = sorted(r["rss_before_model_bytes"] for r in rows if r.get("rss_before_model_bytes"))
    baseline_gb = before[len(before) // 2] / GB if before else 0.0
    out = ["# Training-speed benchmark", "",
           f"`python src/bench.py` (`make bench`), last run on {m['cpu']} ({m['cpu_count']} cores"
           + (f", {m['gpu']}" if m.get("gpu") else "") + f"), torch {m['torch']}, Lightning {m['lightning']}, "
           f"{s['threads']} threads. One row = one full training iteration (every optimizer step) through "
           f"`pl.Trainer` on pre-generated random batches, median of {s['repeats']} after {s['warmup']} warm-ups, "
           "each configuration in a fresh process. Peak memory: the process's peak RSS on CPU (imports "
           f"included, as for the references; ours holds {baseline_gb:.2f} GB before the model is built), "
           "peak allocated CUDA memory over the timed iterations on a GPU. The device column names the "
           "GPU or the kind of CPU a row ran on (a bare \"cpu\": a row from before the kind was recorded); "
           "rows of different kinds or thread counts are different rows. Speed-up = the issue's fixed "
           "reference s/iter / ours (CPU, batch 1, fp32, 2-thread rows only); those reference times were "
           "measured on a CPU whose kind was not recorded, so this column can compare across kinds: the "
           "same-host verdict is `versus_reference`'s, below. Host: the rate of a 2048^3 fp32 matrix "
           "product in G multiply-adds/s, taken in the row's process right after it (the same code "
           "measures 10-20% apart on different days here). Method and findings: README.md.", "",
           "## Training iterations", "", *train_step_table(plain, s), ""]
    if variants:
        out += ["## Variants (trials against the default)", "",
                "Each trial is compared with the same configuration without it on the same device and "
                "threads under the same allocator, "
                "as that row stood when the trial was saved (an allocator trial: with the default row; an `ab` "
                "row, with the same run's iterations that had the setting off, interleaved with the ones it had "
                "on); a trial saved before 2026-12-03, when trials began to keep their baseline, has its baseline "
                "row as it stood when its table was next saved (the CPU table: on 2026-12-03), not necessarily one "
                "measured beside it.", "", *variant_table(variants, rows, s), ""]
    if any(e["pairs"] for e in results.get("versus_reference", [])):
        out += ["## Where the goal stands", "",
                f"Per configuration and device, ours as configured against the reference's iteration in "
                f"alternating fresh processes (the pairs of the table below): met where the 95% interval of the "
                f"median speed-up lies at or above {GOAL_SPEEDUP}x, not met where it lies below, open where it "
                "spans the line; entries with fewer than 6 pairs are judged by the median alone. A bare \"cpu\": "
                "pairs from before the kind of CPU was recorded.", "",
                *goal_table(results["versus_reference"]), ""]
        out += ["## Against the reference's iteration, alternating processes (`versus_reference`)", "",
                "Each pair: ours and the reference's iteration (`tweaks.iteration=reference`) in fresh processes "
                "back to back, the order swapped every pair; s/iter and peak memory are medians over the pairs, "
                "the speed-up the median of the pairs' own ratios, overall and by band of the host's product "
                "rate measured beside each pair (the ratio can follow that rate: compare runs of different hours "
                "band by band). The 95% confidence interval of the median speed-up comes from the pairs' order "
                "statistics (distribution-free; from 6 pairs on). Runs on the same committed code and the same "
                "kind of CPU pool their pairs; each kind of CPU keeps its own verdict (the hosts differ in "
                "generation under one model name, and the ratio with it). Measured: the host's MKL product rate, "
                "and oneDNN's 3x3 convolution rate in brackets, G multiply-adds/s.", "",
                *versus_table(results["versus_reference"]), ""]
    if results.get("data"):
        out += ["## Data pipeline (training loader, batch 1)", "", *data_table(results["data"]), ""]
    return "\n".join(out)
