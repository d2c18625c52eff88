#!/usr/bin/env bash
# Every GPU check and benchmark in one prepared run, sized to end in <= 9 minutes on an
# H100/H200 (each step has its own time limit, so one slow step cannot eat the others' time).
#
#   benchmarks/gpu_suite.sh                 # on a CUDA machine: results/<device>/ + summary
#   benchmarks/gpu_suite.sh --dry-run       # the same steps on the CPU at toy sizes (CI runs it)
#   benchmarks/gpu_suite.sh --out DIR       # write results to DIR instead
#
# Steps: what the machine has (versions, GPU, missing packages) -> install carried wheels
# (.whl/*.whl, for what the GPU image lacks: diffusers, peft, a newer transformers) ->
# pytest -m gpu -> attention tuning (writes leanvision/kernels/tuned/<gpu>.json) -> kernel
# benchmarks -> VLM, diffusion and segmentation benchmarks at GPU shapes. Every table, JSON and
# log lands in one folder named after the device; where the device tool's $OUT is set, a
# tarball of it and the summary are copied there too. A failed step is recorded and the run
# goes on; the exit code is the number of failed steps (0 = all passed).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
OUT_DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT_DIR="$2"; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "gpu_suite.sh: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
    esac
    shift
done

PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi

# Carried wheels (the GPU machine reaches no registry): install them beside the image's packages.
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/leanvision-site .whl/*.whl && export PYTHONPATH="/tmp/leanvision-site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False

if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
    LABEL=cpu-dry-run
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_suite.sh: no CUDA device here; use --dry-run to rehearse on the CPU" >&2
        exit 2
    fi
    DEVICE=cuda
    LABEL=$("$PY" -c "from leanvision.bench.script import device_label; print(device_label('cuda'))")
fi
RESULTS="${OUT_DIR:-benchmarks/results/$LABEL}"
mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
FAILED=0
START=$SECONDS

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to RESULTS/NAME.log
step() {
    local name=$1 limit=$2
    shift 2
    local begin=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    local line="$name: rc=$rc in $((SECONDS - begin)) s"
    [ "$rc" = 124 ] && line="$line (stopped at its ${limit} s limit)"
    [ "$rc" != 0 ] && FAILED=$((FAILED + 1))
    echo "$line" | tee -a "$SUMMARY"
    tail -n 3 "$RESULTS/$name.log"
}

# What the machine has: versions, GPU, and which packages the benchmarks need but lack.
step environment 20 "$PY" -c "
import importlib.util, json, subprocess
from leanvision.core.env import environment_info, format_info
print(format_info(environment_info()))
missing = [m for m in ('transformers', 'diffusers', 'timm', 'peft', 'triton', 'pytest')
           if importlib.util.find_spec(m) is None]
print('missing packages (carry them as wheels in .whl/):', missing or 'none')
try:
    print(subprocess.run(['nvidia-smi'], capture_output=True, text=True).stdout)
except FileNotFoundError:
    print('nvidia-smi: not found')
"

if [ "$DRY_RUN" = 1 ]; then
    # toy sizes on the CPU: every script and flag is exercised, nothing meaningful is measured
    step pytest-gpu 120 "$PY" -m pytest -m gpu tests/kernels -q -p no:cacheprovider -x
    step tune-attention 60 "$PY" benchmarks/tune_attention.py --lengths 128 --head-dims 64 \
        --tokens 256 --quick --dry-run
    step kernels-attention 60 "$PY" benchmarks/kernels_attention.py \
        --out "$RESULTS/kernels-attention.txt"
    step vlm 300 "$PY" benchmarks/vlm.py --device cpu --quick --warmup 0 --repeat 1 \
        --out "$RESULTS/vlm.txt"
    step diffusion 300 "$PY" benchmarks/diffusion.py --device cpu --quick --warmup 0 \
        --repeat 1 --out "$RESULTS/diffusion.txt"
    step seg 300 "$PY" benchmarks/seg.py --device cpu --quick --warmup 0 --repeat 1 \
        --out "$RESULTS/seg.txt"
else
    # limits add up to 540 s (9 min); a step cut short by its limit is recorded as rc=124
    step pytest-gpu 80 "$PY" -m pytest -m gpu tests/kernels -q -p no:cacheprovider
    step tune-attention 60 "$PY" benchmarks/tune_attention.py --quick
    cp leanvision/kernels/tuned/*.json "$RESULTS/" 2> /dev/null
    step kernels-attention 80 "$PY" benchmarks/kernels_attention.py \
        --out "$RESULTS/kernels-attention.txt"
    step vlm 130 "$PY" benchmarks/vlm.py --device cuda --warmup 1 --repeat 3 \
        --out "$RESULTS/vlm.txt"
    step diffusion 130 "$PY" benchmarks/diffusion.py --device cuda --dtype fp16 --warmup 1 \
        --repeat 3 --out "$RESULTS/diffusion.txt"
    step seg 40 "$PY" benchmarks/seg.py --device cuda --warmup 2 --repeat 10 \
        --out "$RESULTS/seg.txt"
fi

echo "gpu_suite: $FAILED failed step(s), $((SECONDS - START)) s in all, results in $RESULTS" \
    | tee -a "$SUMMARY"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    tar czf "$OUT/gpu-suite-$LABEL.tgz" -C "$RESULTS" . && cp "$SUMMARY" "$OUT/summary.txt"
fi
exit "$FAILED"
