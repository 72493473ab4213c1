"""The reference serving design, rebuilt for the benchmark (phase B of gpu_bench.py).

A Ray Serve deployment with a FastAPI ingress; each POST carries one pickled nested observation
(B = 1), the async handler unpickles it, runs ONE `get_action` and returns the pickled action dict.
`get_action` blocks the replica's event loop, so concurrent requests queue behind one another:
that is the design being measured, not a mistake of this file.
"""

import pickle

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve

app = FastAPI()


@serve.deployment(num_replicas=1, health_check_timeout_s=300, graceful_shutdown_timeout_s=5)
@serve.ingress(app)
class ReferencePolicy:
    def __init__(self, fake: bool, steps: int, graphs: bool = False) -> None:
        from benchmarks.gpu_bench import make_backend, nested_obs

        backend = make_backend(fake, steps, [1] if graphs else None)  # graphs: the captured forward at B = 1
        backend.load()
        self.policy = backend.policy
        self.policy.get_action(pickle.loads(pickle.dumps(nested_obs(0))))  # warm-up

    @app.post("/act")
    async def act(self, request: Request) -> Response:
        obs = pickle.loads(await request.body())
        action, _info = self.policy.get_action(obs)
        return Response(content=pickle.dumps(action), media_type="application/octet-stream")


def build_app(fake: bool, steps: int, gpu: bool, graphs: bool = False):
    return ReferencePolicy.options(ray_actor_options={"num_gpus": 1 if gpu else 0, "num_cpus": 1}).bind(
        fake, steps, graphs)
