#!/usr/bin/env bash
# Reproduces experiments/noise_quickstart: noise-to-image GANs trained with `experiment=quickstart`
# on the embedded shapes data, then scored by src/eval.py.
# Usage (from the repository root, after `make install`): bash experiments/noise_quickstart/run.sh [model ...]
set -euo pipefail
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled PROJECT_ROOT="$PWD"
here=experiments/noise_quickstart
models=("${@:-dcgan lsgan wgangp}")
for model in ${models[@]}; do
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
.venv/bin/python "$here/table.py"
