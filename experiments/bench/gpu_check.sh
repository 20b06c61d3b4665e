#!/usr/bin/env bash
# The GPU checks of the benchmark in one call, for a CUDA machine whose python3 already holds
# torch, Lightning and torchmetrics but not this project's other packages: those come as wheels,
# made here by `make gpu-wheels` and carried there in .gpu-wheels/ (nothing can be downloaded on
# such a machine). Each step runs under its own time limit, so one that hangs or fails leaves the
# later ones their time; the limits add up to about 9.5 minutes. Logs, a summary and the merged
# results_cuda.{json,md} go to $OUT (8 files).
#
#   make gpu-wheels                                    # here, once
#   OUT=/some/dir bash experiments/bench/gpu_check.sh  # there, from any directory
#
# A copy without .git labels its rows "unknown" unless BENCH_REVISION names the revision it is
# a copy of (the rows then say "<revision> (no git)").
#
# The steps, most needed first:
#   gpu_tests         tests/test_gpu.py: every model in every precision, resume, FID/KID on CUDA
#   compile_tests     tests/test_compile.py's GPU variant: CUDA graphs train CycleGAN and pix2pix
#                     as eager mode does, and the default mode U-GAT-IT and NICE-GAN; those two
#                     under CUDA graphs too, expected to fail (why they are refused them: an
#                     XPASS says the refusal can go); the CPU variant belongs to the CPU suite
#   cuda_graphs       torch.compile(mode="reduce-overhead") for CycleGAN's launch-bound batch-1
#                     iteration (pix2pix: 1.79x on the H200)
#   rows              the GPU grid's rows that the H200 still lacks: NICE-GAN full, as many of its
#                     four as fit (each is saved as measured; CycleGAN 256 px batch 8 bf16 is left
#                     out for time)
# (Steps inside backward on CUDA were measured on the H200, 0.79-0.90x: no longer a step.)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-logs/gpu_check}
PY=${PY:-python3}
WHEELS=${WHEELS:-.gpu-wheels}
mkdir -p "$OUT"
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1

# A 16-core machine right after the previous step still has a load average above the CPU
# table's quiet threshold; its wait would eat the step's time. The rows stay flagged if another
# process was busy while they were measured.
BENCH=("$PY" src/bench.py device=cuda data_throughput=null quiet.max_load=null quiet.checks=1 quiet.wait_s=5)
ONE_ROW=(batch_sizes=[1] precision=fp32)

# step NAME SECONDS COMMAND...: COMMAND's output goes to $OUT/NAME.log, its exit status and time
# to $OUT/summary.log (124: stopped at the limit).
step() {
    local name=$1 limit=$2 start=$SECONDS status
    shift 2
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    status=$?
    echo "$name: exit $status after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/summary.log"
}

"$PY" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" \
    | tee "$OUT/summary.log"
step install 30 "$PY" -m pip install --no-index --find-links "$WHEELS" -r "$WHEELS/packages.txt"
step gpu_tests 120 "$PY" -m pytest -q tests/test_gpu.py
step compile_tests 240 "$PY" -m pytest -q -rxX tests/test_compile.py -k "eager_ones and cuda"
step cuda_graphs 90 "${BENCH[@]}" tweaks.compile=reduce-overhead "configurations=[cyclegan_256]" "${ONE_ROW[@]}"
step rows 80 "${BENCH[@]}" "configurations=[nicegan_full_256]"
cp experiments/bench/results_cuda.json experiments/bench/results_cuda.md "$OUT"/
