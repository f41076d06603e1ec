#!/usr/bin/env bash
# One prepared device run of the GPU suite: install the carried wheels, run the named parts,
# keep the JSON and the log. Run from the project root on the GPU host, with .whl/ (from
# ../shared/tools/gpu-wheels) and, for the trl part, .whl-trl/ (docs/benchmarks.md) carried.
#
#   bash benchmarks/gpu_device_run.sh OUT_DIR BUDGET_S PART[,PART...] [gpu_suite.py args...]
set -uo pipefail
out="$1" budget="$2" parts="$3"
shift 3
export PYTHONUNBUFFERED=1
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 3
if compgen -G ".whl-trl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target .site-trl .whl-trl/*.whl \
    || echo "note: trl wheels did not install; trl parts will be skipped"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
PYTHONPATH="/tmp/site:$PWD" python3 benchmarks/gpu_suite.py --parts "$parts" --budget "$budget" \
  --out "$out/gpu_suite.json" "$@" 2>&1 | tee "$out/gpu_suite.log"
