#!/usr/bin/env bash
# Install rolloutq with its test extras into .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# Isaac Lab's venv installs in the background meanwhile (mostly downloads and unpacking; log below).
if [ "${ROLLOUTQ_TEST_ISAACLAB:-1}" = 1 ]; then
  bash scripts/install_isaaclab.sh > .isaaclab-install.log 2>&1 &
  isaaclab_install=$!
fi
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0            # the CPU build; an unpinned torch pulls a multi-GB CUDA build
pip install -q -e '.[test,gym]'
pip install -q --no-deps mjlab==1.6.0  # only for its Unitree G1 model files (see docs/TASKS.md)
# LeRobot backend tests: LeRobot 0.4.4 without its torch pin (see docs/INTEGRATIONS.md)
pip install -q --no-deps -r requirements/lerobot-py311.txt
# Node.js example simulator (tests/deploy/test_node_sim.py); the test skips without node >= 20
if command -v npm >/dev/null 2>&1; then (cd examples/node-sim && npm ci --no-audit --no-fund --silent); fi
# The Isaac Lab adapter's mjlab test needs its own venv (mjlab pins mujoco 3.11; ~11 min, 2.3 GB):
# only with ROLLOUTQ_TEST_MJLAB=1, else that one test skips and says why.
if [ "${ROLLOUTQ_TEST_MJLAB:-0}" = 1 ]; then
  python3 -m venv .venv-mjlab
  .venv-mjlab/bin/pip install -q mjlab==1.6.0 torch==2.13.0 pytest pytest-timeout 'redis[hiredis]>=5' msgpack \
    msgpack-numpy
  MUJOCO_GL="${MUJOCO_GL:-egl}" PYTHONPATH=. .venv-mjlab/bin/python -m pytest -q -p no:cacheprovider \
    tests/sim_workers/test_isaaclab_adapter.py
fi
# LIBERO needs mujoco<4, so its tests run from their own venv with rolloutq, Ray and vla-eval (~4.5 min
# install, ~4 min of tests); ROLLOUTQ_TEST_LIBERO=0 skips them (docs/TASKS.md, "libero").
if [ "${ROLLOUTQ_TEST_LIBERO:-1}" = 1 ]; then
  bash scripts/install_libero.sh --full --vla-eval
  MUJOCO_GL="${MUJOCO_GL:-egl}" PYTHONPATH=. .venv-libero/bin/python -m pytest -q -p no:cacheprovider \
    tests/sim_workers/test_libero.py tests/sim_workers/test_libero_vla_eval.py
fi
# Isaac Lab 3.0 needs Python 3.12, so its tests run from their own venv, kit-less on the CPU (3-9 min install;
# ~3 min of tests while Warp compiles its kernels the first time, ~20 s after); ROLLOUTQ_TEST_ISAACLAB=0
# skips them (docs/INTEGRATIONS.md, "Isaac Lab").
if [ "${ROLLOUTQ_TEST_ISAACLAB:-1}" = 1 ]; then
  bash scripts/install_isaaclab.sh
  for t in tests/sim_workers/test_isaaclab3.py tests/sim_workers/test_g1_isaaclab.py; do  # one simulation per process
    ISAACSIM_ASSET_ROOT="$PWD/.venv-isaaclab/assets" PYTHONPATH=. .venv-isaaclab/bin/python -m pytest -q \
      -p no:cacheprovider "$t"
  done
fi
export MUJOCO_GL="${MUJOCO_GL:-egl}"
python -m pytest -q -p no:cacheprovider "$@"
