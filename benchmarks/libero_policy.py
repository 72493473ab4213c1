"""The GR00T N1.7 network (random weights) behind a LIBERO-shaped schema, for benchmarks/libero_gpu.py.

rolloutq's `libero` task sends two 256x256 cameras (`video.agentview`, `video.wrist`, one frame
each), the proprio state (`state.eef_pos`, `state.eef_axis_angle`, `state.gripper_qpos`,
`state.joint_pos`) and the instruction, and executes `action` (1, T, 7)
(`rolloutq.sim_workers.tasks.libero.schema`). The gr00t backend ships the REAL_G1 layout only;
`Backend` is that backend with the LIBERO layout, so the N1.7 network takes what the task sends:
two images (64 vision tokens each, as many as REAL_G1's two-frame ego view), 15 state values
(zero-padded to 132 like any embodiment), 7-D actions of a 16-step chunk (the network computes its
whole horizon whatever the chunk length, so the cost does not depend on it), the
`new_embodiment` layers. Its actions are noise: the metadata and every chunk say
"GR00T N1.7 network, random weights".

`SleepPolicy` is a labelled timing double of that network (17 ms + 3.1 ms per row, close to the
N1.7 network's H100 times at B = 1 and 64) for checking the benchmark on a CPU machine
(`policy_factory = "benchmarks.libero_policy:SleepPolicy"`); its figures are not GPU figures.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from rolloutq.policy_workers.backends import gr00t
from rolloutq.policy_workers.backends._gr00t_layout import ModalitySpec
from rolloutq.policy_workers.base import PolicyMetadata
from rolloutq.sim_workers.tasks.libero import schema

CHUNK_LENGTH = 16


def _key(wire_key: str) -> str:
    return wire_key.split(".", 1)[1]


LIBERO = ModalitySpec(
    video={_key(k): (1, 256, 256, 3) for k in schema.CAMERAS},
    state={_key(k): (1, d) for k, d in schema.STATE_DIMS.items()},
    action={schema.ACTION_KEY: schema.ACTION_DIM},
    language=(schema.TEXT_KEY,),
    chunk_length=CHUNK_LENGTH,
)
"""The libero task's observation and action, per sample, as the GR00T layout describes them."""


class Backend(gr00t.Backend):
    """The gr00t backend with the LIBERO layout (`n17-random` by default; any gr00t option applies)."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("mode", "n17-random")
        options.setdefault("embodiment_tag", "NEW_EMBODIMENT")
        options.setdefault("action_prefix", "")  # the task reads `action`, not `action.action`
        super().__init__(**options)
        self.spec = LIBERO

    def metadata(self) -> PolicyMetadata:
        meta = super().metadata()
        label = getattr(self.policy, "label", None)
        if label and not self._is_random_network:  # a stand-in says what it is
            meta.model_id = "libero-timing-double"
            meta.description = label
            meta.extra["label"] = label
        return meta


class SleepPolicy:
    """TIMING DOUBLE of the N1.7 network with the LIBERO layout: sleeps a_ms + b_ms x B, returns zeros."""

    label = "timing double (sleep), not a network"

    def __init__(self, settings: Any = None, a_ms: float = 17.0, b_ms: float = 3.1) -> None:
        self.a_ms, self.b_ms = a_ms, b_ms
        self.spec = LIBERO

    def get_action(self, obs: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        b = next(iter(obs["state"].values())).shape[0]
        time.sleep((self.a_ms + self.b_ms * b) / 1000)
        return ({k: np.zeros((b, CHUNK_LENGTH, d), np.float32) for k, d in LIBERO.action.items()},
                {"note": self.label})
