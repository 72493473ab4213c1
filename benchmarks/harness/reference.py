"""The reference serving design (B): Ray Serve + FastAPI, one forward per HTTP request.

Each POST carries one pickled observation (B = 1); the async handler unpickles it, runs one
forward and returns the pickled action chunk. The forward blocks the replica's event loop, so
concurrent requests queue behind one another: that is the design being measured, not a mistake.
"""

from __future__ import annotations

import pickle
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve

from benchmarks.harness.load import flat_obs, nested_obs
from benchmarks.harness.model import ModelUnderTest, PolicySpec

app = FastAPI()


@serve.deployment(num_replicas=1, health_check_timeout_s=300, graceful_shutdown_timeout_s=5)
@serve.ingress(app)
class ReferencePolicy:
    def __init__(self, policy: PolicySpec, graphs: bool) -> None:
        self.model = ModelUnderTest(policy, graphs).load()
        warm = nested_obs(0) if self.model._network is not None else flat_obs(0)
        self.model.forward_one(pickle.loads(pickle.dumps(warm)))

    @app.post("/act")
    async def act(self, request: Request) -> Response:
        obs = pickle.loads(await request.body())
        return Response(content=pickle.dumps(self.model.forward_one(obs)), media_type="application/octet-stream")


def build_app(policy: PolicySpec, graphs: bool, gpus: float) -> Any:
    return ReferencePolicy.options(ray_actor_options={"num_gpus": gpus, "num_cpus": 1}).bind(policy, graphs)
