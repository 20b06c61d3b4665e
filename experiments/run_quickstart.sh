#!/usr/bin/env bash
# Trains each model with `experiment=quickstart` on its default (embedded) data, scores it with
# src/eval.py and copies into <record dir>/<model>/: metrics.json, the training log
# (training_metrics.csv), the last sample grid and the run's Hydra config; then runs the
# record's table.py. Used by experiments/*_quickstart/run.sh.
# Usage (from the repository root, after `make install`): bash experiments/run_quickstart.sh <record dir> model ...
set -euo pipefail
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled PROJECT_ROOT="$PWD"
here="$1"; shift
for model in "$@"; do
  run_dir="logs/$here/$model"
  rm -rf "$run_dir"
  .venv/bin/python src/train.py experiment=quickstart model="$model" hydra.run.dir="$run_dir"
  .venv/bin/python src/eval.py ckpt_path="$run_dir/checkpoints/last.ckpt" output_dir="$run_dir/eval" \
    name="$model" hydra.run.dir="$run_dir/eval" | grep '^|'
  mkdir -p "$here/$model"
  cp "$run_dir/eval/metrics.json" "$here/$model/metrics.json"
  cp "$(ls "$run_dir"/csv/*/metrics.csv | tail -n 1)" "$here/$model/training_metrics.csv"
  cp "$(ls "$run_dir"/samples/iter_*.png | tail -n 1)" "$here/$model/samples_final.png"
  rm -rf "$here/$model/hydra_config" && cp -r "$run_dir/.hydra" "$here/$model/hydra_config"
done
.venv/bin/python "$here/table.py" "$@"
