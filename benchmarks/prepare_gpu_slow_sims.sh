#!/bin/bash
# Adds vla-eval 0.8.0 to a LIBERO GPU carry (benchmarks/prepare_gpu_libero.sh DIR first), for the
# slow-simulator side by side on the GPU machine (benchmarks/gpu_slow_sims.sh): DIR/vla/*.whl, cp312
# wheels of vla-eval and its dependencies, without those the GPU image has (numpy, pillow) and without
# imageio-ffmpeg (68 MB; only for saving videos, which the benchmark turns off).
# Usage: bash benchmarks/prepare_gpu_slow_sims.sh [DIR]     (default .gpulibero); needs network to PyPI.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=$(cd "${1:-$here/.gpulibero}" && pwd)
[ -f "$dir/wheels.tar.xz" ] || { echo "no LIBERO carry in $dir: run benchmarks/prepare_gpu_libero.sh $dir first" >&2; exit 1; }
py=${PYTHON312:-}
if [ -z "$py" ]; then
  if python3.12 -c '' 2>/dev/null; then py=python3.12
  else py=$(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1); fi
fi
[ -n "$py" ] || { echo "needs Python 3.12 (or set PYTHON312)" >&2; exit 1; }
rm -rf "$dir/vla" && mkdir -p "$dir/vla"
"$py" -m pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$dir/vla" vla-eval==0.8.0 2>&1 \
  | grep -v "^WARNING: Location" || true
rm -f "$dir"/vla/numpy-* "$dir"/vla/pillow-* "$dir"/vla/imageio_ffmpeg-*
du -sh "$dir/vla"
