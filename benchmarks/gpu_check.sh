#!/usr/bin/env bash
# The GPU check of issue 16, one command on a lent GPU machine (under 8 minutes on an H200):
#
#   bash benchmarks/gpu_wheels.sh      # here, once: the wheels the bare machine lacks, into .whl/
#   bash benchmarks/gpu_check.sh       # there, from the repository root (options go to benchmarks/gpu_check.py)
#
# Installs .whl/*.whl (if any) into /tmp/site, puts it and src/ on PYTHONPATH, and runs the driver with the
# machine's python3. Results: $OUT/gpu_check.jsonl (one line per result, as it comes), $OUT/summary.json,
# $OUT/time_model.json (a proposal) and $OUT/gpu_check.log; $OUT defaults to ./gpu_check_out.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD/src"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
# the driver forks a process per stage: torch must ask NVML, not the CUDA runtime, whether there is a GPU
export PYTHONUNBUFFERED=1 PYTORCH_NVML_BASED_CUDA_CHECK=1
"$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
