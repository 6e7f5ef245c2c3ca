"""Deployment files validated without a Docker engine or a cluster: docker-compose.yml against the Compose
Specification's JSON schema (as vendored by check-jsonschema, with its licence), Kubernetes manifests against the
official client's models (strict: unknown fields are errors) and KubeRay's v1 fields, the Dockerfile with hadolint;
plus the contracts: loopback-only published ports, no secrets in files, one set of environment variables."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy.k8s_models import check, validate

K8S = sorted((REPO / "deploy" / "k8s").glob("*.yaml"))
RAY_POD_TEMPLATE = "V1PodTemplateSpec"


def compose_schema() -> dict:
    import check_jsonschema

    return json.loads((Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json")
                      .read_text())


def compose_errors(doc: dict) -> list[str]:
    import jsonschema

    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def manifests() -> list[dict]:
    return [d for f in K8S for d in yaml.safe_load_all(f.read_text()) if d]


def test_compose_file_is_valid_and_the_validator_can_fail():
    assert compose_errors(compose()) == []
    broken = compose()
    broken["services"]["redis"]["restart_policy"] = "always"  # not a Compose service field
    assert compose_errors(broken)
    broken = compose()
    broken["services"]["control-plane"]["ports"] = "8000"  # must be a list
    assert compose_errors(broken)


def test_compose_roles_health_checks_and_gpu_workers():
    services = compose()["services"]
    assert {"redis", "ray-head", "control-plane", "ray-worker"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "redis-data:/data" in services["redis"]["volumes"]
    for name, svc in services.items():
        assert "healthcheck" in svc or name in ("ray-worker", "ray-learner"), name
        assert svc.get("restart") == "unless-stopped", name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    gpu = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["control-plane"]["command"][:1] == ["serve"]


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_kubernetes_manifests_are_valid(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["apiVersion"] == "ray.io/v1":
            assert ray_errors(doc) == []
        else:
            assert validate(doc) == []


def test_kubernetes_validator_can_fail():
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    assert validate(deployment)
    cluster = next(d for d in manifests() if d["kind"] == "RayCluster")
    del cluster["spec"]["headGroupSpec"]["template"]
    assert ray_errors(cluster)


# KubeRay v1 (ray.io/v1) fields used here; pod templates are checked as core PodTemplateSpecs.
RAY_SPEC_FIELDS = {
    "RayCluster": {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling",
                   "autoscalerOptions", "headServiceAnnotations", "suspend"},
    "RayJob": {"entrypoint", "clusterSelector", "rayClusterSpec", "shutdownAfterJobFinishes", "submissionMode",
               "runtimeEnvYAML", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit", "suspend",
               "entrypointNumCpus", "entrypointNumGpus", "metadata", "jobId", "submitterPodTemplate"},
}
HEAD_FIELDS = {"rayStartParams", "template", "serviceType", "enableIngress", "headService"}
WORKER_FIELDS = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template", "numOfHosts",
                 "scaleStrategy", "suspend", "idleTimeoutSeconds"}


def ray_errors(doc: dict) -> list[str]:
    kind, spec = doc.get("kind"), doc.get("spec", {})
    errors = [f"{kind}.spec.{k}: unknown field" for k in spec if k not in RAY_SPEC_FIELDS.get(kind, set())]
    if kind == "RayCluster":
        head = spec.get("headGroupSpec", {})
        errors += [f"headGroupSpec.{k}: unknown field" for k in head if k not in HEAD_FIELDS]
        groups = [("headGroupSpec", head)] + [(f"workerGroupSpecs[{i}]", g)
                                              for i, g in enumerate(spec.get("workerGroupSpecs", []))]
        for where, group in groups:
            if "template" not in group or "rayStartParams" not in group:
                errors.append(f"{where}: template and rayStartParams are required")
                continue
            if not all(isinstance(v, str) for v in group["rayStartParams"].values()):
                errors.append(f"{where}.rayStartParams: values must be strings")
            errors += check(group["template"], RAY_POD_TEMPLATE, f"{where}.template")
        for i, g in enumerate(spec.get("workerGroupSpecs", [])):
            errors += [f"workerGroupSpecs[{i}].{k}: unknown field" for k in g if k not in WORKER_FIELDS]
            if not g.get("groupName") or not g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 0):
                errors.append(f"workerGroupSpecs[{i}]: needs groupName and minReplicas <= replicas <= maxReplicas")
    if kind == "RayJob":
        if not isinstance(spec.get("entrypoint"), str):
            errors.append("RayJob.spec.entrypoint: required string")
        if "clusterSelector" not in spec and "rayClusterSpec" not in spec:
            errors.append("RayJob.spec: needs clusterSelector or rayClusterSpec")
    return errors


def test_the_learner_group_job_fits_the_learner_nodes_of_compose_and_the_raycluster():
    """One learner rank per GPU: each learner node advertises a `learner` resource per GPU, and the example job's
    ranks (one GPU and one `learner` each) fit one such node, as do its rollout workers the rollout nodes."""
    import json

    from services.config import load_config

    cfg = load_config(REPO / "deploy" / "jobs" / "smollm2_learner_group.yaml")
    assert cfg.learner.num_workers > 1 and cfg.learner.num_gpus == 1 and cfg.learner.resources == {"learner": 1}
    assert cfg.rollout.worker_resources == {"rollout": 1}
    services = compose()["services"]

    def compose_node(name):
        flag = next(a for a in services[name]["command"] if a.startswith("--resources="))
        gpus = services[name]["deploy"]["resources"]["reservations"]["devices"][0]["count"]
        return json.loads(flag.removeprefix("--resources=")), gpus

    groups = {g["groupName"]: g for d in manifests() if d["kind"] == "RayCluster"
              for g in d["spec"]["workerGroupSpecs"]}

    def k8s_node(name):
        group = groups[name]
        gpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        return json.loads(json.loads(group["rayStartParams"]["resources"])), gpus

    for advertised, gpus in (compose_node("ray-learner"), k8s_node("learner-gpu")):
        assert advertised == {"learner": gpus} and cfg.learner.num_workers <= gpus
    for advertised, gpus in (compose_node("ray-worker"), k8s_node("rollout-gpu")):
        assert advertised == {"rollout": gpus}
    jobs = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "RayJob"}
    assert "deploy/jobs/smollm2_learner_group.yaml" in jobs["leapfrog-smollm2-learner-group"]["spec"]["entrypoint"]


def test_rayjob_targets_the_raycluster_and_uses_the_driver_entrypoint():
    docs = {d["kind"]: d for d in manifests()}
    assert docs["RayJob"]["spec"]["clusterSelector"]["ray.io/cluster"] == docs["RayCluster"]["metadata"]["name"]
    assert docs["RayJob"]["spec"]["entrypoint"].startswith("python -m services.driver ")
    groups = {g["groupName"]: g for g in docs["RayCluster"]["spec"]["workerGroupSpecs"]}
    for group in groups.values():
        assert "nvidia.com/gpu" in group["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_dockerfile_passes_hadolint():
    hadolint = REPO / ".venv" / "bin" / "hadolint"
    res = subprocess.run([str(hadolint), "--failure-threshold", "info", "deploy/Dockerfile"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert "USER 10001:10001" in text and "AS cpu" in text and "AS cuda" in text
    assert 'ENTRYPOINT ["leapfrog"]' in text and 'CMD ["serve"' in text
    # one runtime stage for both images: the cuda target is only right with FLAVOR=cuda, which compose must pass
    assert "FROM ${FLAVOR}-python AS runtime" in text and "ARG FLAVOR=cpu" in text
    builds = [s["build"] for s in compose()["services"].values() if isinstance(s.get("build"), dict)]
    assert all(b.get("args", {}).get("FLAVOR", "cpu") == b["target"] for b in builds), builds


SECRET_PATTERNS = [re.compile(r"LEAPFROG_API_TOKEN\s*[:=]\s*['\"]?[A-Za-z0-9_\-]{8,}"),
                   re.compile(r"(?i)password\s*[:=]\s*['\"]?\w{4,}"), re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY")]


def test_no_secrets_in_deployment_files():
    files = [REPO / "docker-compose.yml", REPO / "deploy" / "Dockerfile", REPO / "deploy" / "leapfrog.env.example",
             *K8S]
    for f in files:
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(f.read_text()), f"{f.name} looks like it contains a secret"
    token_env = [e for d in manifests() if d["kind"] == "Deployment"
                 for e in d["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "LEAPFROG_API_TOKEN"]
    assert token_env and "secretKeyRef" in token_env[0]["valueFrom"]
    assert "deploy/leapfrog.env" in (REPO / ".gitignore").read_text().split()


def deployment_env_names() -> set[str]:
    names = set(compose()["x-leapfrog-env"])
    for d in manifests():
        spec = d.get("spec", {})
        templates = [spec.get("template")] if "template" in spec else []
        if d["kind"] == "RayCluster":
            templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for t in templates:
            for c in t["spec"]["containers"]:
                names |= {e["name"] for e in c.get("env", [])}
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    names |= set(re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]+)=", dockerfile, re.M)) - {"PIP_NO_CACHE_DIR",
                                                                                       "PIP_DISABLE_PIP_VERSION_CHECK",
                                                                                       "DEBIAN_FRONTEND", "PATH"}
    return names


def code_env_names() -> set[str]:
    text = "".join(p.read_text() for pkg in ("common", "services", "rollout", "learner", "extrapolate")
                   for p in (REPO / pkg).rglob("*.py"))
    return set(re.findall(r"""(?:environ(?:\.get)?\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]+)["']""", text))


def documented_env_table() -> set[str]:
    """The environment-variables table of docs/config.md (the README links to it)."""
    config_md = (REPO / "docs" / "config.md").read_text()
    section = config_md.split("\n## Environment variables\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", section, re.M))


STANDARD = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}  # read by Hugging Face libraries, not by our code


def test_environment_variables_are_one_set_across_compose_k8s_code_and_docs():
    documented = documented_env_table()
    used = deployment_env_names()
    assert used <= documented, f"undocumented in docs/config.md's table: {sorted(used - documented)}"
    read_by_code = code_env_names() | STANDARD
    assert used <= read_by_code, f"set in deployment files but read by no code: {sorted(used - read_by_code)}"
    assert documented <= read_by_code | set(re.findall(r"\b(LEAPFROG_RAY_[A-Z_]+)\b",
                                                        (REPO / "deploy" / "ray-local.sh").read_text())), \
        f"documented but read by nothing: {sorted(documented - read_by_code)}"
