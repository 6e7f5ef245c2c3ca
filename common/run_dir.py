"""The run directory's layout, in one place (docs/architecture.md describes each file):

    <run_dir>/config.yaml            the job, as validated
    <run_dir>/metrics.jsonl          one row per learner step, evaluation and loop event
    <run_dir>/events.jsonl           leap events (proposal, applied, judged, ...)
    <run_dir>/samples.jsonl          at each evaluation, the first rollout.eval_samples greedy completions
                                     (step, prompt, completion, answer, rewards per function, reward)
    <run_dir>/summary.json           the final RunSummary
    <run_dir>/checkpoints/step-NNNNNN/   complete checkpoints (learner/checkpoint.py)
    <run_dir>/adapters/v<NNNNNN>/    adapters published to the rollout workers; adapters/current.json points at one
    <run_dir>/rank1/                 the rank-1 analysis (extrapolate/analyze.py)
    <run_dir>/leaps/                 leap candidates (extrapolate/service.py)
    <run_dir>/rolled_back/           checkpoints of losing branches (moved, never deleted)
    <run_dir>/tensorboard/           TensorBoard event files (run.report_to, services/trackers.py)
    <run_dir>/wandb/                 the wandb run (offline unless configured)
    <run_dir>/mlruns/                the MLflow file store
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
ADAPTERS = "adapters"
RANK1 = "rank1"
LEAPS = "leaps"
ROLLED_BACK = "rolled_back"
TENSORBOARD = "tensorboard"
WANDB = "wandb"
MLRUNS = "mlruns"
PRUNED = "pruned.jsonl"  # in checkpoints/: one {"step", "time"} row per checkpoint deleted by pruning


def step_name(step: int) -> str:
    """The directory name of a step's checkpoint: step-000010."""
    return f"step-{step:06d}"


def parse_step_name(name: str) -> int | None:
    """The step of a `step-NNNNNN` directory name; None for anything else (partial `.tmp` writes included)."""
    digits = name.removeprefix("step-")
    return int(digits) if name.startswith("step-") and digits.isdigit() else None


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSONL file ([] when it does not exist); blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record as a line of JSON."""
    with Path(path).open("a") as f:
        f.write(json.dumps(record) + "\n")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / step_name(step)


# A checkpoint layout: (parse, sub) where parse(directory name) is the step or None, and `sub` the path inside
# that directory where the checkpoint lives ("" = the directory itself). Ours: checkpoints/step-NNNNNN/.
LEAPFROG_LAYOUT: tuple[Callable[[str], int | None], str] = (parse_step_name, "")


def list_step_dirs(run_dir: Path, layouts=(LEAPFROG_LAYOUT,), roots: tuple[str, ...] = (CHECKPOINTS,),
                   is_complete: Callable[[Path], bool] | None = None) -> list[tuple[int, Path]]:
    """(step, checkpoint path) of every checkpoint under run_dir, by step: the directories of each root (relative to
    run_dir; "" = run_dir itself) whose name a layout recognises, the layout's `sub` path inside them, kept when
    `is_complete(path)` holds (default: it is a directory). On a step found twice, the later root wins."""
    found: dict[int, Path] = {}
    for root in (Path(run_dir) / r if r else Path(run_dir) for r in roots):
        if not root.is_dir():
            continue
        for d in root.iterdir():
            for parse, sub in layouts:
                step, target = parse(d.name), d / sub if sub else d
                if step is not None and (is_complete(target) if is_complete else target.is_dir()):
                    found[step] = target
    return sorted(found.items())


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (<run_dir>/checkpoints/step-NNNNNN), by step; partial `.tmp` writes never
    match the layout. extrapolate/checkpoints.py lists other frameworks' layouts with the same list_step_dirs."""
    return list_step_dirs(run_dir)
