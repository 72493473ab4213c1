"""deploy/ray/: the Serve config validates against Ray Serve's own schema and its import path builds
an application; the cluster definition validates against the cluster launcher's schema."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.deploy.composefile import ROOT

RAY_DIR = ROOT / "deploy" / "ray"


def test_serve_config_validates_and_builds_the_policy_application():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((RAY_DIR / "serve_config.yaml").read_text())
    config = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(raw)
    app = config.applications[0]
    module, _, attr = app.import_path.partition(":")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    built = builder(app.args)
    assert type(built).__name__ == "Application"
    deployment = raw["applications"][0]["deployments"][0]
    assert deployment["name"] == "PolicyDeployment"
    assert deployment["ray_actor_options"]["resources"] == {"policy_node": 1}
    assert deployment["health_check_timeout_s"] >= 300
    assert "redis_url" not in app.args  # no secret in the file: replicas read ROLLOUTQ_REDIS_URL


def test_build_app_refuses_unknown_args_and_reads_the_url_on_the_replica():
    from rolloutq.policy_workers.serve import build_app

    with pytest.raises(ValueError, match="unknown rolloutq application args"):
        build_app({"backend": "null", "batch_size": 3})
    built = build_app({"backend": "null", "policy": "p", "resources": {"policy_node": 1}, "num_gpus": 0})
    settings = built._bound_deployment.init_args[0]
    assert settings.redis.url is None and settings.worker.policy == "p"
    assert built._bound_deployment.ray_actor_options["resources"] == {"policy_node": 1}


def test_cluster_definition_validates_against_the_launcher_schema():
    import jsonschema
    import ray

    schema = json.loads((ROOT.__class__(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json").read_text())
    cluster = yaml.safe_load((RAY_DIR / "cluster.yaml").read_text())
    jsonschema.validate(cluster, schema)
    types = cluster["available_node_types"]
    assert any("policy_node" in t.get("resources", {}) for t in types.values())
    assert any("sim_node" in t.get("resources", {}) for t in types.values())
