"""Structure the code keeps: no import cycle among the project's modules (module- and function-level imports alike),
the driver loop on one screen, both runtimes implement the Runtime protocol, and every config choice that names a
registry entry is one of its keys (the extrapolators' in tests/unit/extrapolate/test_registry.py). Imports point down
the layers, and the run directory's names come from common/run_dir.py alone."""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("common", "rollout", "learner", "extrapolate", "services")
# The layers, bottom up (docs/architecture.md#layout): a package imports only from the layers below it; learner and
# extrapolate are one layer and import nothing of each other.
LAYERS = {"common": 0, "rollout": 1, "learner": 2, "extrapolate": 2, "services": 3}


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source."""
    files = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            files[name] = f
    graph = {}
    for name, f in files.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for c in candidates:
                while c and c not in files:
                    c = c.rpartition(".")[0]
                if c and c != name:
                    deps.add(c)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, path = [], {}, []

    def visit(u):
        state[u] = "open"
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v)
        path.pop()
        state[u] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "services.loop" in graph["services.driver"]  # the graph is really built
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]  # and the search finds a cycle when there is one
    assert cycles(graph) == []


def test_drive_fits_on_one_screen():
    from services.loop import drive

    lines = inspect.getsource(drive).splitlines()
    assert len(lines) < 70, f"drive() is {len(lines)} lines"


def test_both_runtimes_implement_the_protocol():
    from services.runtime import LocalRuntime, RayRuntime, Runtime

    members = [n for n in vars(Runtime) if not n.startswith("_")]
    assert {"generate", "train", "publish", "checkpoint", "resume", "leap", "extrapolation", "step_count"} <= set(members)
    for cls in (LocalRuntime, RayRuntime):
        for name in members:
            ours = getattr(cls, name, None)
            if ours is None:  # an attribute set when the runtime starts
                assert f"self.{name} = " in inspect.getsource(cls.__init__), f"{cls.__name__} lacks {name}"
                continue
            if callable(getattr(Runtime, name)):
                want = list(inspect.signature(getattr(Runtime, name)).parameters)
                assert list(inspect.signature(ours).parameters) == want, (cls.__name__, name)


def test_config_choices_are_registry_keys():
    from learner.algorithms import ALGORITHMS
    from learner.config import ALGORITHM_CONFIGS, GRPOConfig
    from learner.losses import ADVANTAGES, CORRECTION_MODES, KL_ESTIMATORS

    assert set(ALGORITHMS.names()) == set(ALGORITHM_CONFIGS)
    for name, cls in ALGORITHM_CONFIGS.items():
        assert typing.get_args(cls.model_fields["algorithm"].annotation) == (name,)
    # the group-mean baselines by scale_rewards, the others by advantage_estimator
    ADVANTAGES.check_literal(GRPOConfig.model_fields["scale_rewards"].annotation, exclude=("rloo", "reinforce_pp"))
    estimators = set(typing.get_args(GRPOConfig.model_fields["advantage_estimator"].annotation)) - {"grpo"}
    assert estimators == set(ADVANTAGES.names()) - set(typing.get_args(GRPOConfig.model_fields["scale_rewards"].annotation))
    KL_ESTIMATORS.check_literal(GRPOConfig.model_fields["kl_estimator"].annotation)
    modes = set(typing.get_args(GRPOConfig.model_fields["rollout_correction"].annotation)) - {"auto", "off"}
    assert modes == set(CORRECTION_MODES)
    from learner.distributed import SHARDINGS

    assert typing.get_args(GRPOConfig.model_fields["sharding"].annotation) == SHARDINGS


def test_imports_point_down_the_layers():
    graph = import_graph()
    upward = sorted((m, d) for m, deps in graph.items() for d in deps
                    if m.split(".")[0] != d.split(".")[0] and LAYERS[d.split(".")[0]] >= LAYERS[m.split(".")[0]])
    assert "rollout.worker" in graph["services.runtime"]  # imported inside RayRuntime: function-level imports count
    assert upward == [], f"imports from a package to one at its layer or above: {upward}"


def test_run_directory_names_come_from_one_module():
    """No code joins a run-directory name as a literal (run_dir / "checkpoints"): each is a constant of
    common/run_dir.py, so renaming one is one edit."""
    from common import run_dir

    names = {v for k, v in vars(run_dir).items() if k.isupper() and isinstance(v, str)}
    assert {"checkpoints", "metrics.jsonl", "leaps", "adapters", "rolled_back"} <= names
    found = []
    for pkg in (*PACKAGES, "bench"):
        for f in (REPO / pkg).rglob("*.py"):
            if f == REPO / "common" / "run_dir.py":
                continue
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                    found += [f"{f.relative_to(REPO)}:{node.lineno} {side.value!r}" for side in (node.left, node.right)
                              if isinstance(side, ast.Constant) and side.value in names]
    assert found == [], found
