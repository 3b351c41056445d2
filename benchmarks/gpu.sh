#!/usr/bin/env bash
# The GPU check (issue 16), as ONE command on a bare GPU machine, from the repository root, in under 8 minutes:
#
#   bash benchmarks/gpu.sh
#
# Stages, each under `timeout` (its own cap, and never past what is left of GPU_SH_BUDGET_S, default 450 s, so one
# stuck stage cannot eat the others' time):
#   1. setup       python3 -m venv .venv-gpu; pip install -c requirements/constraints.txt -e '.[dev,deploy]' (pip
#                  only fetches and installs packages; nothing downloads at run time: HF_HUB_OFFLINE=1). Where pip
#                  cannot reach a package index it falls back to the machine's own python3 (its torch, whatever the
#                  version) with imagerec installed without dependencies, plus any wheels carried in .whl/, and
#                  says which modules are missing.
#   2. pytest      pytest -m gpu -q (tests/test_gpu.py: one bf16 training run per task, GPU against CPU predictions)
#   3. ddp         a 2-GPU DDP training run through the CLI, when two GPUs are visible (else one printed line)
#   4. throughput  benchmarks/gpu_throughput.py: training images/s per precision, exported inference
# Everything lands in ${OUT:-benchmarks/out} (at most 7 files, no folders): setup.log, pytest.log, ddp.log,
# throughput.log, throughput.md (tables ready for docs/benchmarks.md), throughput.json, summary.md. The script exits
# non-zero when a stage failed or timed out, after writing summary.md.
#
# On a machine without a GPU the same stages run as a check of the script itself (pytest then skips, throughput
# runs tiny sizes on the CPU, without torch.compile, which takes minutes on two cores):
#   GPU_SH_PYTHON=.venv/bin/python GPU_SH_QUICK=1 OUT=/tmp/gpu-out bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=20
BUDGET_S="${GPU_SH_BUDGET_S:-450}"
QUICK="${GPU_SH_QUICK:-}"
START=$SECONDS
SUMMARY=()
FAILED=0

# The smaller of a stage's cap and the seconds left of the budget (at least 1).
limit() {
    local cap=$1 rest=$((BUDGET_S - (SECONDS - START)))
    ((rest < cap)) && cap=$rest
    ((cap < 1)) && cap=1
    echo "$cap"
}

# stage NAME CAP COMMAND...: runs COMMAND under timeout, output to the console and $OUT/NAME.log; records the outcome.
stage() {
    local name=$1 cap=$2 began=$SECONDS rc seconds outcome
    shift 2
    cap=$(limit "$cap")
    echo "== $name (at most ${cap} s; $((SECONDS - START)) s used so far)"
    set +e
    timeout --kill-after=10 "$cap" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    seconds=$((SECONDS - began))
    case $rc in
        0) outcome="ok" ;;
        124 | 137) outcome="TIMED OUT after ${cap} s" ;;
        *) outcome="FAILED (exit $rc)" ;;
    esac
    [[ $rc == 0 ]] || FAILED=1
    SUMMARY+=("| $name | $outcome | $seconds |")
    echo "== $name: $outcome in ${seconds} s"
    return 0
}

# -- 1. setup -----------------------------------------------------------------------------------------------------------
setup() {
    if [[ -n "$GPU_SH_PYTHON" ]]; then
        echo "using GPU_SH_PYTHON=$GPU_SH_PYTHON (no environment set up)"
        echo "$GPU_SH_PYTHON" >"$OUT/.python"
        return 0
    fi
    python3 -m venv .venv-gpu
    if timeout "$PIP_S" .venv-gpu/bin/pip install -q --prefer-binary -c requirements/constraints.txt -e '.[dev,deploy]'
    then
        echo ".venv-gpu/bin/python" >"$OUT/.python"
        return 0
    fi
    echo "pip could not install into .venv-gpu in ${PIP_S} s (no package index reachable?): using python3's packages"
    python3 -m pip install -q --no-deps --no-build-isolation -e .
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps .whl/*.whl
    fi
    echo "python3" >"$OUT/.python"
}

PIP_S=$(limit 200)
stage setup 260 env OUT="$OUT" PIP_S="$PIP_S" GPU_SH_PYTHON="${GPU_SH_PYTHON:-}" bash -ec "$(declare -f setup); setup"
PY=$(cat "$OUT/.python" 2>/dev/null || echo python3)
rm -f "$OUT/.python"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/setup.log" || true
import importlib.util, os, sys
import torch
gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
names = [torch.cuda.get_device_name(i) for i in range(gpus)]
print(f"python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, GPUs {gpus} {names}, CPUs {os.cpu_count()}")
wanted = ["imagerec", "lightning_fabric", "torchvision", "torchmetrics", "timm", "pycocotools",
          "segmentation_models_pytorch", "onnx", "onnxruntime", "pytest", "pytest_timeout"]
missing = [m for m in wanted if importlib.util.find_spec(m) is None]
print("missing modules: " + (", ".join(missing) if missing else "none"))
EOF
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)

# -- 2. the gpu tests ---------------------------------------------------------------------------------------------------
# --continue-on-collection-errors: a test module whose optional import is missing must not stop the GPU tests.
stage pytest 170 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors --timeout 150 \
    --durations 10

# -- 3. two-GPU DDP -----------------------------------------------------------------------------------------------------
ddp() {
    local work
    work=$(mktemp -d)
    "$PY" -c "from imagerec.data.samples import write_sample; write_sample('digits', '$work/digits')"
    (cd "$work" && "$(dirname "$PY")/imagerec" train digits --devices 2 --device cuda --precision bf16-mixed \
        --epochs 3 --imgsz 16 --batch 64 --seed 0)
    cat "$work"/runs/*/evaluation/test.json
}
if ((GPUS >= 2)); then
    PY_PATH=$(command -v "$PY")
    PY_ABS="$(cd "$(dirname "$PY_PATH")" && pwd)/$(basename "$PY_PATH")" # a venv's python is a link: keep its folder
    stage ddp 90 env PY="$PY_ABS" bash -ec "$(declare -f ddp); ddp"
else
    echo "== ddp: skipped: $GPUS CUDA GPU(s) visible, two needed" | tee "$OUT/ddp.log"
    SUMMARY+=("| ddp | skipped ($GPUS GPU(s) visible, two needed) | 0 |")
fi

# -- 4. throughput ------------------------------------------------------------------------------------------------------
stage throughput 240 "$PY" benchmarks/gpu_throughput.py ${QUICK:+--quick --no-compile} \
    --markdown "$OUT/throughput.md" --json "$OUT/throughput.json"

# -- summary ------------------------------------------------------------------------------------------------------------
{
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), $((SECONDS - START)) s in all)"
    echo
    grep -h "^python " "$OUT/setup.log" || true
    grep -h "^missing modules" "$OUT/setup.log" || true
    echo
    echo "| stage | outcome | seconds |"
    echo "|---|---|---|"
    printf '%s\n' "${SUMMARY[@]}"
    echo
    echo "pytest: $(grep -E '(passed|failed|skipped|error)' "$OUT/pytest.log" | tail -n 1 || true)"
    echo
    cat "$OUT/throughput.md" 2>/dev/null || echo "(no throughput table)"
} >"$OUT/summary.md"
echo
cat "$OUT/summary.md"
exit "$FAILED"
