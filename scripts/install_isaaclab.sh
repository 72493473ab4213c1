#!/usr/bin/env bash
# Isaac Lab 3.0 in its own venv, .venv-isaaclab (Python 3.12), kit-less: the Newton physics backend on
# NVIDIA Warp, no Isaac Sim. See docs/INTEGRATIONS.md, "Isaac Lab".
#
# Why its own venv: isaaclab 3.0.0 requires Python >=3.12,<3.13 and pulls torch 2.11.0 (CUDA build, runs
# on the CPU), ~7.8 GB in all; the main venv stays on Python 3.11 and a CPU torch.
#
#   bash scripts/install_isaaclab.sh          # Isaac Lab, rolloutq (with Ray Serve: `rolloutq eval` runs from
#                                             # this venv), the stand-in cartpole assets, and the G1 converted
#                                             # to USD for the g1-isaaclab task (3-9 min the first time)
#
# Extending it: put more packages in ISAACLAB_EXTRA_PIP (e.g. ISAACLAB_EXTRA_PIP="mujoco-usd-converter==0.8.0"),
# or add a step below the assets step. The stand-in assets go to ISAACLAB_ASSET_ROOT (default
# .venv-isaaclab/assets), which the tests and scripts pass on as ISAACSIM_ASSET_ROOT.
#
# Then, from the repository root:
#   PYTHONPATH=. .venv-isaaclab/bin/python -m pytest -q tests/sim_workers/test_isaaclab3.py
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ISAACLAB_VENV:-.venv-isaaclab}"
PY="${PYTHON:-python3.12}"
if ! "$PY" -c '' 2>/dev/null && command -v pyenv >/dev/null; then  # a pyenv shim with 3.12 not selected
  PY="$(pyenv root)/versions/$(pyenv versions --bare | grep -m1 '^3\.12')/bin/python3.12"
fi
ASSETS="$(realpath -m "${ISAACLAB_ASSET_ROOT:-$VENV/assets}")"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086  # ISAACLAB_EXTRA_PIP is a list of requirements
"$VENV/bin/pip" install -q isaaclab==3.0.0 'redis[hiredis]>=5.0' 'msgpack>=1.0' 'msgpack-numpy>=0.4.8' \
  'typer>=0.12' 'rich>=13' 'prometheus-client>=0.20' 'pyyaml>=6' 'imageio>=2.34' pytest pytest-timeout \
  ${ISAACLAB_EXTRA_PIP:-}
"$VENV/bin/pip" install -q -e '.[serve]'           # torch 2.11 from Isaac Lab already satisfies it
"$VENV/bin/pip" install -q --no-deps mjlab==1.6.0   # only for its Unitree G1 model files (docs/TASKS.md)
"$VENV/bin/python" scripts/make_isaaclab_assets.py "$ASSETS"
# The G1 for g1-isaaclab: mujoco-usd-converter needs mujoco 3.16 (this venv has MuJoCo-Warp's 3.12), so it
# runs from a small venv of its own (scripts/make_g1_usd.py says why and what it changes).
CONV="${USDCONV_VENV:-.venv-usdconv}"
if [ ! -s "$ASSETS/rolloutq/g1_29dof/g1_29dof_rev_1_0.usda" ]; then
  [ -x "$CONV/bin/python" ] || "$PY" -m venv "$CONV"
  "$CONV/bin/pip" install -q mujoco-usd-converter==0.8.0
  "$CONV/bin/pip" install -q --no-deps mjlab==1.6.0
  PYTHONPATH=. "$CONV/bin/python" scripts/make_g1_usd.py --out "$ASSETS/rolloutq/g1_29dof"
fi
ISAACSIM_ASSET_ROOT="$ASSETS" "$VENV/bin/python" -c "import isaaclab, isaaclab_tasks, warp, newton, torch; \
print('Isaac Lab ready:', isaaclab.__version__, 'warp', warp.__version__, 'newton', newton.__version__, 'torch', \
torch.__version__, '| ISAACSIM_ASSET_ROOT=$ASSETS')"
