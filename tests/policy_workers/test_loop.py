"""PolicyWorker's load step: the loaded model is taken out of the cyclic GC's reach."""

from __future__ import annotations

import gc

from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings


def test_worker_freezes_what_it_loaded_out_of_the_gc():
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        PolicyWorker(PolicyWorkerSettings(backend="null"))._load()
        assert gc.get_freeze_count() > 0  # everything alive after load: a full collection skips it
    finally:
        gc.unfreeze()

