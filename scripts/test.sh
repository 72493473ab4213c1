#!/usr/bin/env bash
# Install rolloutq with its test extras into .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0            # the CPU build; an unpinned torch pulls a multi-GB CUDA build
pip install -q -e '.[test]'
export MUJOCO_GL="${MUJOCO_GL:-egl}"
python -m pytest -q -p no:cacheprovider "$@"
