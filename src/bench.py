"""Benchmark training speed: `python src/bench.py ['configurations=[cyclegan_128]'] [device=cuda]`.

Composes conf/bench.yaml, times full training iterations of each configured model in a fresh
process, and writes experiments/bench/results.json and results.md (see src/utils/bench_run.py).
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python src/bench.py` from the root


def require_linux(platform: str = sys.platform) -> None:
    """The benchmark reads how busy the machine is and how much memory a process holds from
    Linux's /proc (src/utils/bench_machine.py): elsewhere it would fail at its first reading."""
    if not platform.startswith("linux"):
        raise SystemExit(f"src/bench.py measures on Linux only (it reads /proc; this is {platform}). Elsewhere, "
                         "time a training run instead: its log and loggers give time/it_per_s and "
                         "time/data_wait (the throughput callback).")


if __name__ == "__main__":
    require_linux()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.utils.bench_run import run_benchmark  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench.yaml")
def main(cfg: DictConfig) -> None:
    run_benchmark(cfg)


if __name__ == "__main__":
    main()
