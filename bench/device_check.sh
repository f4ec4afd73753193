#!/usr/bin/env bash
# The GPU check of issue 26 in one script: everything that must run on a CUDA GPU, on a
# machine that has only this checkout and pip, in under 8 minutes on one H200.
#
#   OUT=/path/for/results bash bench/device_check.sh
#
# Steps, each with its own time limit (and all within DEVICE_CHECK_BUDGET_S, default 465 s),
# so that one failure or hang costs only its own result:
#   machine      python, torch, the GPUs nvidia-smi and torch see
#   install      pip install -e .[test] (offline when every requirement is already there; on a
#                machine without a registry, from the wheels in .whl/: bench/device_wheels.sh)
#   cuda-torch   only when nvidia-smi sees a GPU and torch does not: the CUDA build of torch
#                and torchvision for the driver's CUDA version, as one matching pair, from
#                the PyTorch wheel index (never torch 2.13.0)
#   pytest-cuda  pytest -m cuda: every CUDA-marked test (tests/test_training_cuda.py, ...)
#   model        bench/bench_model.py --device cuda --batch 64,256 (MFU)
#   pretrain     bench/bench_pretrain.py --mode loop: the real training loop and input pipeline
#                on a generated world and store, base preset, batch 256, 20 steps, bf16, 0 and
#                4 loader workers: examples/s and the share of time waiting for data
#   extract      bench/bench_extract.py --device cuda: vg-r101-c4 (random weights), batch 1/8/32,
#                fp32/bf16
# Results: OUT/device_check.json (every step: status, exit code, seconds, limit, output tails,
# the benchmark's own JSON rows or the pytest counts), OUT/device_check.md (the same as tables),
# OUT/logs/STEP.out|err. Without a GPU it runs the CPU fallback end to end: the same steps at
# small sizes (a few minutes on 2 cores), the CUDA tests reported as skipped.
set -u

cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_check}
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-465}
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
export PYTHON PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=30
mkdir -p "$OUT/logs" "$OUT/steps"
rm -f "$OUT"/steps/*.json
START=$(date +%s)
HELPER="$PWD/bench/device_check.py"

# step NAME MAX_SECONDS [--result FILE] [--junit FILE] COMMAND...: run COMMAND with its limit
# (at most what is left of the budget), record what happened, never stop the script
step() {
    local name=$1 max=$2 result="" junit=""
    shift 2
    while [[ $# -gt 0 && $1 == --* ]]; do
        case $1 in
            --result) result=$2; shift 2 ;;
            --junit) junit=$2; shift 2 ;;
            *) break ;;
        esac
    done
    local left=$(( BUDGET_S - ($(date +%s) - START) - 10 ))
    local limit=$(( max < left ? max : left ))
    if (( limit < 15 )); then
        echo "no time left in the ${BUDGET_S} s budget" > "$OUT/logs/$name.err"
        : > "$OUT/logs/$name.out"
        "$PYTHON" "$HELPER" record "$OUT" "$name" skipped "" 0 "$limit"
        return
    fi
    rm -f ${result:+"$result"} ${junit:+"$junit"}
    echo "== $name (limit ${limit} s)" >&2
    local t0 rc status
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.out" 2> "$OUT/logs/$name.err"
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    local seconds
    seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    echo "   $status in ${seconds} s" >&2
    "$PYTHON" "$HELPER" record "$OUT" "$name" "$status" "$rc" "$seconds" "$limit" "$result" "$junit"
}

install_project() {
    # a machine without a package registry: the wheels bench/device_wheels.sh put in .whl/
    # (what such a machine's image lacks), the test tools taken from the image
    if [[ -d .whl ]]; then
        "$PYTHON" -m pip install --no-index --find-links .whl --no-build-isolation -e . && return 0
        echo "--- .whl/ did not complete the requirements; trying the registry" >&2
    fi
    # without build isolation pip needs no network when every requirement is installed already
    "$PYTHON" -m pip install --no-build-isolation -e ".[test]" && return 0
    echo "--- retrying with build isolation" >&2
    "$PYTHON" -m pip install -e ".[test]"
}

cuda_torch() {
    if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') sees the GPU: nothing to install"
        return 0
    fi
    if ! nvidia-smi -L > /dev/null 2>&1; then
        echo "no GPU (nvidia-smi finds none): the CPU fallback runs"
        return 0
    fi
    local cuda tag
    cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -1)
    # the newest wheel build the driver runs (a driver runs builds of its CUDA version and older)
    case $cuda in
        1[3-9].*) tag=cu130 ;;
        12.[89]) tag=cu128 ;;
        12.[67]) tag=cu126 ;;
        12.[45]) tag=cu124 ;;
        12.[0-3]) tag=cu121 ;;
        *) echo "driver CUDA version '$cuda' is older than any torch>=2.4 wheel" >&2; return 1 ;;
    esac
    echo "driver CUDA $cuda: torch and torchvision from https://download.pytorch.org/whl/$tag"
    local index="https://download.pytorch.org/whl/$tag" version vision
    version=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null)
    vision=$("$PYTHON" -c "import torchvision; print(torchvision.__version__.split('+')[0])" 2>/dev/null)
    # first the installed pair rebuilt for this CUDA, else the newest pair the index has
    if [[ -n $version && -n $vision && $version != 2.13.0 ]] && "$PYTHON" -m pip install --index-url "$index" \
            --extra-index-url https://pypi.org/simple "torch==$version+$tag" "torchvision==$vision+$tag"; then
        :
    else
        "$PYTHON" -m pip install --upgrade --index-url "$index" --extra-index-url https://pypi.org/simple \
            "torch>=2.4,!=2.13.0" torchvision || return 1
    fi
    "$PYTHON" -c "import sys, torch; print(torch.__version__, 'cuda', torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)"
}
export -f install_project cuda_torch

step install 180 bash -c install_project
step cuda-torch 240 bash -c cuda_torch
"$PYTHON" "$HELPER" machine > "$OUT/machine.json" 2> "$OUT/logs/machine.err"
GPU=$("$PYTHON" -c "import json, sys; print(int(bool(json.load(open(sys.argv[1])).get('cuda_available'))))" \
      "$OUT/machine.json" 2>/dev/null || echo 0)

if [[ $GPU == 1 ]]; then
    echo "== CUDA GPU: $(nvidia-smi -L 2>/dev/null | head -1)" >&2
    step pytest-cuda 180 --junit "$OUT/pytest-cuda.xml" \
        "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider --junitxml="$OUT/pytest-cuda.xml" tests
    step model 90 --result "$OUT/model.json" \
        "$PYTHON" bench/bench_model.py --device cuda --batch 64,256 --json "$OUT/model.json"
    step pretrain 110 --result "$OUT/pretrain.json" \
        "$PYTHON" bench/bench_pretrain.py --mode loop --device cuda --presets base --base-batch 256 --steps 20 \
        --log-every 5 --precisions bf16 --loader-workers 0,4 --world-workers 8 --json "$OUT/pretrain.json"
    step extract 120 --result "$OUT/extract.json" \
        "$PYTHON" bench/bench_extract.py --device cuda --presets vg-r101-c4 --images 32 --batch-sizes 1,8,32 \
        --precisions fp32,bf16 --json "$OUT/extract.json"
else
    echo "== no CUDA GPU: the CPU fallback (small sizes)" >&2
    step pytest-cuda 200 --junit "$OUT/pytest-cuda.xml" \
        "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider --junitxml="$OUT/pytest-cuda.xml" tests
    # the base-size model on 2 loaded cores: one batch of one, our pretraining step only
    step model 200 --result "$OUT/model.json" \
        "$PYTHON" bench/bench_model.py --device cpu --batch 1 --rounds 1 --skip transformers qa --json "$OUT/model.json"
    step pretrain 120 --result "$OUT/pretrain.json" \
        "$PYTHON" bench/bench_pretrain.py --mode loop --device cpu --presets tiny --batch 16 --steps 12 \
        --log-every 3 --precisions fp32 --loader-workers 0,1 --images 100 --json "$OUT/pretrain.json"
    step extract 120 --result "$OUT/extract.json" \
        "$PYTHON" bench/bench_extract.py --device cpu --presets tiny --images 2 --batch-sizes 1,2 \
        --precisions fp32 --json "$OUT/extract.json"
fi

"$PYTHON" "$HELPER" report "$OUT"
echo "results: $OUT/device_check.json, $OUT/device_check.md ($(( $(date +%s) - START )) s)" >&2
