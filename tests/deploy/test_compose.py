"""compose.yaml without a Docker engine: the Compose Specification's schema, and the stack's rules
(pinned images, loopback ports, no passwords in the file, AOF + ACL for Redis, a GPU reservation)."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.composefile import (
    COMPOSE,
    ENV_EXAMPLE,
    ROOT,
    SCHEMA,
    MissingVariable,
    env_for_tests,
    load,
    load_raw,
    read_env_file,
    variables,
)

jsonschema = pytest.importorskip("jsonschema")


def _schema() -> dict:
    if not SCHEMA.exists():
        pytest.skip(f"Compose Specification schema not found at {SCHEMA} (CI keeps it beside the clone)")
    return json.loads(SCHEMA.read_text())


def _errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_matches_the_compose_spec_schema():
    assert _errors(load_raw()) == []


def test_interpolated_compose_matches_the_schema_in_both_profiles():
    doc = load(env_for_tests())
    assert _errors(doc) == []
    profiles = {p for svc in doc["services"].values() for p in svc.get("profiles", [])}
    assert profiles == {"cpu", "gpu"}


def test_every_service_of_the_issue_is_there():
    services = load_raw()["services"]
    for name in ("redis", "policy", "policy-cpu", "sim", "controller", "exporter", "prometheus", "grafana"):
        assert name in services, name


def test_images_are_pinned():
    for name, svc in load_raw()["services"].items():
        image = svc.get("image")
        assert image, f"{name} has no image name"
        if "build" in svc:
            continue  # the project's own images, built from deploy/docker/
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: pin {image} to a version"


def test_dockerfiles_pin_bases_run_as_non_root_and_copy_existing_paths():
    for variant in ("cpu", "cuda"):
        text = (ROOT / "deploy" / "docker" / f"Dockerfile.{variant}").read_text()
        args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
        for base in re.findall(r"^FROM (\S+)", text, re.M):
            image = args.get(base.strip("${}"), base)
            assert ":" in image and not image.endswith(":latest"), f"Dockerfile.{variant}: unpinned base {image}"
        users = re.findall(r"^USER (\S+)", text, re.M)
        assert users and users[-1] not in ("root", "0"), f"Dockerfile.{variant} must end as a non-root user"
        for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
            for src in sources.split():
                if src == "README.md" and not (ROOT / src).exists():
                    continue  # the lead's README lands on main; `pip install .` needs it in the image
                assert (ROOT / src).exists(), f"Dockerfile.{variant} copies {src}, which is not in the repository"
    ignored = (ROOT / ".dockerignore").read_text()
    assert "node_modules" in ignored


def test_ports_bind_to_loopback_unless_the_user_opts_in():
    raw = load_raw()
    for name, svc in raw["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith("${ROLLOUTQ_BIND:-127.0.0.1}:"), (name, port)
    doc = load(env_for_tests())
    published = [p for svc in doc["services"].values() for p in svc.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published)
    opened = load(env_for_tests(ROLLOUTQ_BIND="0.0.0.0"))
    assert all(p.startswith("0.0.0.0:") for svc in opened["services"].values() for p in svc.get("ports", []))


def test_no_password_has_a_default_and_compose_refuses_without_one():
    text = COMPOSE.read_text()
    for name, op in variables(text).items():
        if re.search(r"PASSWORD|TOKEN|SECRET", name):
            assert op in (":?", ":-", None), name
            if op == ":-":  # only an empty default is allowed (HF_TOKEN is optional)
                assert f"${{{name}:-}}" in text, f"{name} has a non-empty default"
    assert re.search(r"://[^:/@\s]+:[^$@\s]+@", text) is None, "a literal password in a URL"
    env = env_for_tests()
    env["ROLLOUTQ_SIM_PASSWORD"] = ""
    with pytest.raises(MissingVariable, match="ROLLOUTQ_SIM_PASSWORD"):
        load(env)


def test_env_example_documents_every_variable_and_holds_no_secret():
    documented = read_env_file(ENV_EXAMPLE)
    used = variables(COMPOSE.read_text())
    missing = sorted(set(used) - set(documented))
    assert not missing, f"variables compose.yaml uses but .env.example does not document: {missing}"
    for k, v in documented.items():
        if re.search(r"PASSWORD|TOKEN", k):
            assert v == "", f".env.example must not ship a value for {k}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_redis_has_aof_acl_and_a_healthcheck():
    redis = load_raw()["services"]["redis"]
    assert redis["image"].startswith("redis:7.")
    cmd = redis["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] == "everysec"
    aclfile = cmd[cmd.index("--aclfile") + 1]
    assert f"./deploy/redis/users.acl:{aclfile}:ro" in redis["volumes"]
    assert redis["healthcheck"]["test"]


def test_policy_reserves_a_gpu_and_takes_model_and_token_from_the_environment():
    policy = load_raw()["services"]["policy"]
    devices = policy["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert policy["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}"
    assert any("${ROLLOUTQ_MODEL" in part for part in policy["command"])
    assert policy["healthcheck"]["start_period"]  # model load is slower than a health check


def test_grafana_and_prometheus_are_provisioned_from_the_repository():
    services = load_raw()["services"]
    g = services["grafana"]["volumes"]
    assert "./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro" in g
    assert "./monitoring/grafana/dashboards:/var/lib/grafana/dashboards:ro" in g
    assert "./monitoring/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]


def test_bind_mounted_files_exist():
    """Files other branches write (ACL file, Prometheus and Grafana config) must exist once merged."""
    missing = []
    for svc in load_raw()["services"].values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src == "./deploy/redis/users.acl":
                src = "./deploy/redis/users.acl.in"  # rendered from this template with .env's passwords
            if src.startswith("./") and not (ROOT / src).exists():
                missing.append(src)
    assert missing == [], f"compose bind-mounts files that do not exist: {sorted(set(missing))}"


def test_prometheus_scrapes_the_exporter_where_compose_runs_it():
    path = ROOT / "monitoring" / "prometheus" / "prometheus.yml"
    import yaml

    prom = yaml.safe_load(path.read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    exporter = load_raw()["services"]["exporter"]
    port = exporter["command"][exporter["command"].index("--port") + 1]
    assert f"exporter:{port}" in targets
