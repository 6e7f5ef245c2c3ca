"""Experiment trackers (`run.report_to`): TensorBoard, Weights & Biases and MLflow receive what metrics.jsonl
receives — every numeric field of every row that has a step (learner steps and evaluations), by step — and the job
config. The driver's RunLog (services/loop.py) feeds them; they are opened when the loop starts and closed when
it ends, marked failed when it raises. The same in `leapfrog run` and in the Ray driver (the driver process logs).

    tensorboard   event files in <run_dir>/tensorboard/ (torch.utils.tensorboard), the config as text
    wandb         <run_dir>/wandb/, offline (`wandb sync <run_dir>/wandb/offline-run-*` uploads it later) unless
                  WANDB_MODE is set; project run.tracker_project, run name run.name, the config as the run's config
    mlflow        a file store, file:<run_dir>/mlruns, unless MLFLOW_TRACKING_URI is set; experiment
                  run.tracker_project, run name run.name, the config as params (learner.lr, ...) and config.yaml

A run continued from step S (`--resume`, a restarted Ray driver) continues the same tracker runs: TensorBoard
purges the events after S that the interrupted attempt wrote (metrics.jsonl sets those rows aside too), wandb and
MLflow reopen their run. A new tracker: a class with `__init__(cfg, run_dir, start_step)`, `log(step, values,
wall_time)` and `close(failed)`, registered in TRACKERS under a name added to RunConfig.report_to.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

from common.registry import Registry
from common.run_dir import MLRUNS, TENSORBOARD, WANDB
from services.config import JobConfig, dump_config

TRACKERS: Registry[type] = Registry("tracker")


def tracker_values(row: dict) -> tuple[int, dict[str, float]] | None:
    """(step, values) of a metrics row with a step (learner steps, evaluations): its finite int and float fields
    other than step and time (booleans left out). None for the loop's event rows, which carry at_step instead."""
    step = row.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    values = {k: float(v) for k, v in row.items() if k not in ("step", "time") and isinstance(v, (int, float))
              and not isinstance(v, bool) and math.isfinite(v)}
    return step, values


class Trackers:
    """Open trackers (none until `start`); a context manager that closes them, marked failed when the block
    raises."""

    def __init__(self, trackers: list | None = None):
        self.open = trackers or []

    @classmethod
    def start(cls, cfg: JobConfig, run_dir: Path, start_step: int) -> Trackers:
        """The trackers of cfg.run.report_to for a run that starts (or continues) at `start_step`."""
        group = cls()
        try:
            for name in cfg.run.report_to:
                group.open.append(TRACKERS.get(name)(cfg, Path(run_dir).resolve(), start_step))
        except BaseException:
            group.close(failed=True)
            raise
        return group

    def log(self, row: dict) -> None:
        """Pass one metrics row (with its "time") to every open tracker."""
        picked = tracker_values(row)
        if picked is None:
            return
        for tracker in self.open:
            tracker.log(picked[0], picked[1], row.get("time") or time.time())

    def close(self, failed: bool = False) -> None:
        """Close every tracker (each one, even when another's close raises; the first error is raised after)."""
        trackers, self.open, error = self.open, [], None
        for tracker in trackers:
            try:
                tracker.close(failed)
            except Exception as err:
                error = error or err
        if error is not None:
            raise error

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)


def flat_config(cfg: JobConfig) -> dict[str, str]:
    """The job config as flat "section.field" -> value text (nested sections joined with dots, lists as JSON)."""
    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

    walk("", cfg.model_dump(mode="json"))
    return out


@TRACKERS.register("tensorboard")
class TensorBoardTracker:
    """Scalars in <run_dir>/tensorboard/ under the rows' own keys (completions/mean_length, rewards/<name>/mean,
    ...), flushed after every row; the config as the text summary "config"."""

    def __init__(self, cfg: JobConfig, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        log_dir = run_dir / TENSORBOARD
        continued = log_dir.is_dir() and any(log_dir.iterdir())
        # purge_step: TensorBoard's readers drop the earlier attempt's events at steps >= it
        self.writer = SummaryWriter(str(log_dir), purge_step=(start_step + 1 if start_step else 0) if continued else None)
        if start_step == 0:
            self.writer.add_text("config", "".join(f"    {line}\n" for line in dump_config(cfg).splitlines()), 0)

    def log(self, step: int, values: dict[str, float], wall_time: float) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step, walltime=wall_time)
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


@TRACKERS.register("wandb")
class WandbTracker:
    """A wandb run in <run_dir>/wandb/ whose charts use the rows' `step` as x axis (a leap moves it forward, a
    branch switch back, which wandb's own step counter would refuse). Console capture and code saving are off."""

    def __init__(self, cfg: JobConfig, run_dir: Path, start_step: int):
        import wandb

        earlier = [p for p in (run_dir / WANDB).glob("*run-*-*") if p.is_dir()]  # offline-run-<time>-<id>
        run_id = max(earlier, key=lambda p: p.stat().st_mtime).name.rsplit("-", 1)[1] if earlier else None  # None: new
        self.run = wandb.init(project=cfg.run.tracker_project, name=cfg.run.name, dir=str(run_dir),
                              id=run_id, resume="allow", config=cfg.model_dump(mode="json"),
                              mode=None if "WANDB_MODE" in os.environ else "offline", reinit="create_new",
                              settings=wandb.Settings(console="off", save_code=False, silent=True))
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, values: dict[str, float], wall_time: float) -> None:
        self.run.log({"step": step, **values})

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def mlflow_key(key: str) -> str:
    """A metric name MLflow accepts (letters, digits, _ - . / : and spaces): pass@4 -> pass_4."""
    return re.sub(r"[^\w\-./: ]", "_", key)


@TRACKERS.register("mlflow")
class MlflowTracker:
    """An MLflow run tagged leapfrog.run_dir (how a continued run finds it again), ended FINISHED or FAILED."""

    def __init__(self, cfg: JobConfig, run_dir: Path, start_step: int):
        if "MLFLOW_TRACKING_URI" in os.environ:
            uri = os.environ["MLFLOW_TRACKING_URI"]
        else:
            uri = (run_dir / MLRUNS).as_uri()
            # MLflow 3 refuses a file store unless told it is wanted (it would rather have a database)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(cfg.run.tracker_project)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.run.tracker_project)
        earlier = [r for r in client.search_runs([experiment_id], f"attributes.run_name = '{cfg.run.name}'")
                   if r.data.tags.get("leapfrog.run_dir") == str(run_dir)]
        if earlier:
            self.run_id = earlier[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = client.create_run(experiment_id, run_name=cfg.run.name,
                                        tags={"leapfrog.run_dir": str(run_dir)}).info.run_id
        params = [Param(k, v) for k, v in flat_config(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            client.log_batch(self.run_id, params=params[i:i + 100])
        client.log_text(self.run_id, dump_config(cfg), "config.yaml")

    def log(self, step: int, values: dict[str, float], wall_time: float) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(mlflow_key(k), v, int(1000 * wall_time), step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
