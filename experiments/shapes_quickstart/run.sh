#!/usr/bin/env bash
# Reproduces experiments/shapes_quickstart: each translation model trained with
# `experiment=quickstart` on the embedded shapes data, then scored by src/eval.py
# (experiments/run_quickstart.sh).
# Usage (from the repository root, after `make install`): bash experiments/shapes_quickstart/run.sh [model ...]
set -euo pipefail
if [ $# -eq 0 ]; then set -- cyclegan pix2pix ugatit nicegan; fi
bash experiments/run_quickstart.sh experiments/shapes_quickstart "$@"
