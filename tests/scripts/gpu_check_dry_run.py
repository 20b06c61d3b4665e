"""Test-only stand-in for python3 in a dry run of experiments/bench/gpu_check.sh.

Every command line the script gives python is appended to $DRY_RUN_LOG as JSON. A benchmark
command (`src/bench.py ...`) is also composed and turned into its row specs, as the real run
would before measuring, so a wrong key, configuration name or value fails here as it would on
the GPU machine; the specs' configurations, batch sizes, precisions and variants are logged.
Nothing is measured, installed or tested.
"""
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench_specs(overrides: list[str]) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir

    from src.utils.bench_run import data_specs, train_step_specs
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="bench", overrides=overrides)
    if data_specs(cfg):
        raise SystemExit("the GPU check must not time the data pipeline (data_throughput=null)")
    return [{"name": s["name"], "device": s["device"], "batch_size": s["batch_size"], "precision": s["precision"],
             "variant": s["variant"]} for s in train_step_specs(cfg)]


def main(args: list[str]) -> None:
    entry = {"args": args}
    if args[:1] == ["src/bench.py"]:
        entry["specs"] = bench_specs(args[1:])
    with open(os.environ["DRY_RUN_LOG"], "a") as log:
        log.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
