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
