#!/usr/bin/env bash
# vla-eval 0.8.0 in its own venv, .venv-vla-eval (Python 3.11), for the side-by-side benchmark
# (benchmarks/slow_sims): its batching model server and its episode runner, run without Docker.
#
# Its own venv because vla-eval pins what it needs (websockets, torch for its LIBERO adapter) apart
# from rolloutq's; the benchmark starts it as a subprocess and never imports it into rolloutq's venv.
#
#   bash scripts/install_vla_eval.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLA_EVAL_VENV:-.venv-vla-eval}"
PY="${PYTHON:-python3.11}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q vla-eval==0.8.0
"$VENV/bin/python" -c "import vla_eval; from importlib.metadata import version; print('vla-eval', version('vla-eval'), 'ready')"
