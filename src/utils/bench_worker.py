"""One benchmark measurement in a process of its own: `python -m src.utils.bench_worker SPEC OUT`.

SPEC is a JSON file describing the measurement ("kind": "train_step" or "data"); the result is
written as JSON to OUT. A fresh process per measurement keeps each configuration's peak RSS its
own and stops one configuration's allocator state or thread pools from leaking into the next.
`run_in_subprocess` is the parent's side.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from src.utils.allocator import ALLOCATORS, allocator_environment, configure_allocator
from src.utils.training_config import ROOT_DIR



def run_in_subprocess(spec: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    """Run `spec` in a fresh Python process and return its result (or raise with its stderr)."""
    # The allocator src/train.py would run this model with, or a trial's (every spec of bench_run
    # carries the one it resolved).
    allocator = spec.get("allocator") or "default"
    # Only the chosen allocator's variables: none leak in from the caller's shell. They are in
    # the worker's environment from its start, where glibc and torch read them.
    every_allocator_key = {key for name in ALLOCATORS for key in allocator_environment(name)}
    inherited = {k: v for k, v in os.environ.items() if k not in every_allocator_key}
    # ROOT_DIR first so `src` resolves; the caller's own entries (extra site dirs) stay after it.
    python_path = os.pathsep.join(p for p in (str(ROOT_DIR), os.environ.get("PYTHONPATH", "")) if p)
    env = {**inherited, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": python_path,
           # OpenMP and MKL read these at start-up, before torch.set_num_threads can act.
           "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           **allocator_environment(allocator)}
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({**spec, "work_dir": tmp, "allocator": allocator}))
        proc = subprocess.run([sys.executable, "-m", "src.utils.bench_worker", str(spec_path), str(out_path)],
                              cwd=ROOT_DIR, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"benchmark '{spec.get('name')}' failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return {**json.loads(out_path.read_text()), "allocator": allocator}


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    # As src/train.py applies it (its variables are already in this process's environment): a
    # glibc that caps the mmap threshold gets the same fallback as in training.
    configure_allocator(spec.get("allocator", "default"))
    if spec["kind"] == "train_step":
        from src.utils.bench_step import measure_training_step
        result = measure_training_step(spec)
    elif spec["kind"] == "data":
        from src.utils.bench_data import measure_data_throughput
        result = measure_data_throughput(spec)
    else:
        raise ValueError(f"unknown benchmark kind '{spec['kind']}'")
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
