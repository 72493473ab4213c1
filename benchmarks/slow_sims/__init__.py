"""Slow and uneven simulators: rolloutq and vla-eval 0.8.0 side by side (issue 23, section 3).

Real simulators with cameras are slow (LIBERO: ~250 ms of CPU rendering per step) and uneven; a
dispatch rule that holds a request for other rollouts costs such a simulator its round trip. This
package drives both systems with the same simulators and the same policy cost model and measures
env steps/s, the round trip at the simulator and the batch size:

    bash scripts/install_vla_eval.sh               # vla-eval in .venv-vla-eval
    python -m benchmarks.slow_sims                 # the synthetic env, N = 1 .. 16 (compare.py)
    python -m benchmarks.slow_sims.libero_compare  # LIBERO, from .venv-libero (libero_compare.py)

Modules: `env` (the synthetic simulator and its logs; numpy only, shared by both venvs), `policy`
(the cost model as a rolloutq backend), `rolloutq_side` and `vla_side` (each system's simulator
and server side), `runs` (processes, start barrier, CPU), `report` (figures and table).
"""
