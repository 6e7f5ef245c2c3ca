"""Shared fixtures: offline mode, a tiny model built in seconds, and the real bootstrapped default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parents[1]

# A model small and quick to build (seconds); its accuracy is irrelevant, only its plumbing is tested.
TINY_SPEC = dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
                 sft_steps=30, eval_every=30, eval_size=32, accuracy_band=(0.0, 1.0))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from learner.bootstrap import BootstrapSpec, bootstrap

    out = tmp_path_factory.mktemp("tiny") / "arith-tiny"
    return bootstrap("arith", 0, out_dir=out, spec=BootstrapSpec(task="arith", seed=0, **TINY_SPEC), progress=False)


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The real default model (as `leapfrog bootstrap` builds it), cached under $LEAPFROG_HOME like a user's."""
    from learner.bootstrap import bootstrap

    return bootstrap("arith", 0, progress=False)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct (a real pretrained instruct LLM) converted from its pip-shipped GGUF file, cached under
    $LEAPFROG_HOME like a user's (about 30 s the first time)."""
    from learner.models import resolve_model

    return resolve_model("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the session's tests (2 CPUs, no dashboard, its own temp dir)."""
    import tempfile

    import ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    temp_dir = tempfile.mkdtemp(prefix="lfray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()


@pytest.fixture
def runtimes(monkeypatch):
    """The RayRuntime objects created during the test (to reach their actors' PIDs)."""
    from services import runtime as runtime_module

    created = []
    original = runtime_module.RayRuntime.__init__

    def capture(self, *a, **k):
        original(self, *a, **k)
        created.append(self)

    monkeypatch.setattr(runtime_module.RayRuntime, "__init__", capture)
    return created


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped on machines without a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head():
    """A Ray head as a separate cluster on loopback (deploy/ray-local.sh: own temp dir, process group, free ports),
    for the Ray Jobs API; yields the environment that points `ray` and the control plane at it."""
    import subprocess
    import tempfile

    temp = tempfile.mkdtemp(prefix="lfh-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # not the session's in-process Ray
    env = {**env, "RAY_AUTH_MODE": "disabled", "LEAPFROG_RAY_TEMP": temp, "LEAPFROG_RAY_PORT": str(free_port()),
           "LEAPFROG_RAY_DASHBOARD_PORT": str(free_port()), "LEAPFROG_RAY_AGENT_PORT": str(free_port()),
           "LEAPFROG_RAY_CPUS": "2"}
    try:
        started = subprocess.run(["bash", "deploy/ray-local.sh", "start"], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=240)
        assert started.returncode == 0, started.stderr
        address = f"http://127.0.0.1:{env['LEAPFROG_RAY_DASHBOARD_PORT']}"
        assert address in started.stdout
        yield {**env, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "disabled"}
    finally:
        stopped = subprocess.run(["bash", "deploy/ray-local.sh", "stop"], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
