#!/usr/bin/env bash
# Reproduces experiments/noise_quickstart: noise-to-image GANs trained with `experiment=quickstart`
# on the embedded shapes data, then scored by src/eval.py (experiments/run_quickstart.sh).
# Usage (from the repository root, after `make install`): bash experiments/noise_quickstart/run.sh [model ...]
set -euo pipefail
if [ $# -eq 0 ]; then set -- dcgan lsgan wgangp; fi
bash experiments/run_quickstart.sh experiments/noise_quickstart "$@"
