#!/usr/bin/env bash
# One-shot GPU check on a machine with a CUDA device and no network.
#
#     OUT=/some/empty/folder bash benchmarks/gpu_check.sh
#
# Expects python3 with torch (CUDA build), torch_geometric, torchdiffeq, numpy, scipy,
# matplotlib, rich, pytest, setuptools and wheel; installs the rest from the wheels in .whl/
# (pydantic and its dependencies, meshio: fetched beforehand with `pip download`) and this
# project, without dependencies, into /tmp/site. Then runs tests/test_cuda.py, generates the
# Aliev-Panfilov benchmark set and times training on CUDA and on the CPU. Every step runs
# whatever happened before it; logs, the tests' JUnit XML and summary.txt go to $OUT. The
# whole script stays within GPU_CHECK_BUDGET seconds (default 450) plus the install.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
SITE=${GPU_CHECK_SITE:-/tmp/site}
BUDGET=${GPU_CHECK_BUDGET:-450}
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

# seconds a step may take: its own cap, cut to what is left of the budget (at least 10)
limit() {
    local left=$((BUDGET - SECONDS))
    local cap=$1
    ((left < cap)) && cap=$left
    ((cap < 10)) && cap=10
    echo "$cap"
}

# step NAME LOG CAP COMMAND...: run COMMAND under a timeout, tee its output to $OUT/LOG
step() {
    local name=$1 log=$2 cap
    cap=$(limit "$3")
    shift 3
    local started=$SECONDS
    echo "=== $name (timeout ${cap}s) ===" | tee -a "$OUT/$log"
    timeout "$cap" "$@" 2>&1 | tee -a "$OUT/$log"
    local rc=${PIPESTATUS[0]}
    local note=""
    ((rc == 124)) && note=" (timed out)"
    echo "$name: exit $rc$note, $((SECONDS - started)) s" | tee -a "$SUMMARY"
}

# ---- install ---------------------------------------------------------------------------------
started=$SECONDS
rm -rf "$SITE"
export PYTHONPATH=$SITE
{
    python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
        --no-cache-dir --target "$SITE" .whl/*.whl &&
        python3 -m pip install -q --disable-pip-version-check --no-index --no-deps \
            --no-build-isolation --target "$SITE" . &&
        python3 -c 'import leads_catalogs, leads_engine, meshio, pydantic
print("leads_engine  ", leads_engine.__file__)
print("leads_catalogs", leads_catalogs.__file__)
print("pydantic", pydantic.VERSION, " meshio", meshio.__version__)'
} 2>&1 | tee "$OUT/install.log"
echo "install: exit ${PIPESTATUS[0]}, $((SECONDS - started)) s" | tee -a "$SUMMARY"

# ---- environment -----------------------------------------------------------------------------
export LEADS_HOME=/tmp/leads_home PYTHONUNBUFFERED=1
{
    timeout 30 nvidia-smi -L
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
    nproc
    timeout 60 python3 - <<'EOF'
import sys

import torch

print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "threads", torch.get_num_threads())
print("torch.cuda.is_available()", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
for name in ("torch_geometric", "torchdiffeq", "triton", "numpy", "scipy"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except ImportError as exc:
        print(name, "MISSING:", exc)
EOF
} 2>&1 | tee "$OUT/environment.log"
python3 -m pip list --disable-pip-version-check >>"$OUT/environment.log" 2>&1  # at most 8 files come back

# ---- tests -----------------------------------------------------------------------------------
# No -x: one run has to tell which of the CUDA checks fail, not only the first.
step "gpu tests" gpu_tests.log 150 \
    python3 -m pytest -q -rA -p no:cacheprovider --durations=15 \
    --junitxml="$OUT/gpu_tests.xml" tests/test_cuda.py

# ---- benchmark data (CPU, one thread) --------------------------------------------------------
step "generate ap" generate.log 120 python3 -m leads_engine.cli generate --reaction ap

# ---- training speed --------------------------------------------------------------------------
step "training speed cuda" training_speed_cuda.log 240 \
    python3 benchmarks/training_speed.py --dataset ap --device cuda \
    --diffusion laplacian_nodewise gcn gat graph_transformer
# the CPU reference, 2 epochs so that it fits what is left of the budget
step "training speed cpu x16" training_speed_cpu16.log 240 \
    python3 benchmarks/training_speed.py --dataset ap --device cpu --threads 16 --epochs 2 \
    --diffusion gcn gat

echo "=== summary ($SECONDS s) ==="
cat "$SUMMARY"
