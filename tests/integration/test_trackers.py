"""Experiment trackers on short real runs (tiny model; `leapfrog run`'s run_job, and the Ray driver): TensorBoard's
own reader, the wandb offline run file (read record by record) and the MLflow file store (MlflowClient) hold the
metrics of metrics.jsonl by step (evaluations too) and the config; stopped and resumed, the run continues the same
tracker runs (TensorBoard purges what the interrupted attempt logged after its checkpoint); a loop that raises leaves
its runs marked failed. Also the RL metrics of every step row, consistent with each other."""

from __future__ import annotations

import json
import struct

import pytest

from common.run_dir import METRICS, read_jsonl
from services.config import parse_config
from services.loop import run_job
from services.trackers import Trackers

pytestmark = pytest.mark.integration

STEP_METRICS = ("completions/mean_length", "completions/min_length", "completions/max_length",
                "completions/clipped_ratio", "completions/mean_terminated_length", "frac_reward_zero_std",
                "tokens_per_second", "entropy", "clip_ratio", "grad_norm", "kl", "loss", "reward_mean")


@pytest.fixture(autouse=True)
def offline_trackers(monkeypatch):
    """The trackers' defaults (a user's WANDB_MODE or MLFLOW_TRACKING_URI must not reach a test)."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


def tracked_job(model_dir, **run):
    return parse_config({
        "model": {"path": str(model_dir)},
        "rollout": {"task": "arith", "prompts_per_step": 4, "group_size": 2, "eval_size": 8, "max_new_tokens": 3},
        "learner": {"lr": 1e-3, "beta": 0.05},
        "run": {"name": "tracked", "steps": 2, "checkpoint_every": 1, "eval_every": 1,
                "report_to": ["tensorboard", "wandb", "mlflow"], **run},
    })


def wandb_records(path) -> list:
    """The protobuf records of a .wandb file (a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks
    with a 7-byte header each: CRC, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, records, chunk = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block padding
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_history(run_dir) -> tuple[list[dict], list]:
    """(history rows of every offline wandb run in run_dir, the run files)."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    rows = []
    for f in files:
        for r in wandb_records(f):
            if r.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows, files


def mlflow_client(run_dir):
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())


def by_step(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if key in r]


def test_trackers_hold_the_metrics_of_a_run_and_continue_on_resume(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, run_dir = tracked_job(tiny_model_dir), tmp_path / "run"
    run_job(cfg, run_dir=run_dir, progress=False, stop_after=1)
    first_wandb = wandb_history(run_dir)[1]
    run_job(cfg, run_dir=run_dir, resume=True, progress=False)
    rows = read_jsonl(run_dir / METRICS)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and by_step(rows, "eval_accuracy")[0][0] == 0
    for r in steps:  # the RL metrics, present and consistent
        assert set(STEP_METRICS) <= set(r), set(STEP_METRICS) - set(r)
        assert 1 <= r["completions/min_length"] <= r["completions/mean_length"] <= r["completions/max_length"] <= 3
        assert 0 <= r["completions/clipped_ratio"] <= 1 and 0 <= r["frac_reward_zero_std"] <= 1
        assert r["entropy"] > 0 and r["kl"] >= 0 and r["grad_norm"] >= 0 and r["tokens_per_second"] > 0
        if r["completions/clipped_ratio"] == 1:
            assert r["completions/min_length"] == 3 and r["completions/mean_terminated_length"] == 0
    assert steps[0]["kl"] == 0  # step 1 trains the policy the reference is (LoRA B = 0)

    # TensorBoard, read by its own reader: every numeric key by step, each step once (the resume purged nothing
    # here: the stopped attempt ended at its checkpoint), the config as text
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for key in (*STEP_METRICS, "eval_accuracy", "learner_steps"):
        assert key in scalars, key
        assert [(e.step, pytest.approx(e.value, rel=1e-5)) for e in events.Scalars(key)] == by_step(rows, key), key
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    learner:\n" in config_text and "\n      lr: 0.001\n" in config_text

    # wandb offline: one run id across both attempts, its history holds every row's metrics, the config
    history, files = wandb_history(run_dir)
    assert len(files) == 2 and len({f.name for f in files}) == 1 and first_wandb[0].name == files[0].name
    for key in ("entropy", "completions/mean_length", "eval_accuracy"):
        assert [(h["step"], pytest.approx(h[key], rel=1e-6)) for h in history if key in h] == by_step(rows, key)
    run_record = next(r.run for r in wandb_records(files[0]) if r.WhichOneof("record_type") == "run")
    config = {u.key: json.loads(u.value_json) for u in run_record.config.update}
    assert config["learner"]["lr"] == 1e-3 and run_record.project == "leapfrog"

    # MLflow file store: one run (the resume reopened it), finished, the config as params, the metrics by step
    client = mlflow_client(run_dir)
    experiment = client.get_experiment_by_name("leapfrog")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["learner.lr"] == "0.001" and run.data.params["run.report_to"].startswith("[")
    for key in ("entropy", "frac_reward_zero_std", "eval_accuracy"):
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert got == [(s, pytest.approx(v, rel=1e-6)) for s, v in by_step(rows, key)], key


def test_the_ray_driver_logs_to_the_trackers(ray_local, tiny_model_dir, tmp_path):
    """The Ray driver (services.driver.run_on_ray: a learner actor, a rollout worker) logs from its own process."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from services.driver import run_on_ray

    cfg = tracked_job(tiny_model_dir)
    cfg.rollout.worker_cpus, cfg.learner.num_cpus = 0.5, 0.5
    run_dir = tmp_path / "ray"
    run_on_ray(cfg, run_dir, progress=False)
    rows = read_jsonl(run_dir / METRICS)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, pytest.approx(e.value, rel=1e-5)) for e in events.Scalars("entropy")] == by_step(rows, "entropy")
    history, files = wandb_history(run_dir)
    assert len(files) == 1 and [h["step"] for h in history if "loss" in h] == [1, 2]
    client = mlflow_client(run_dir)
    (run,) = client.search_runs([client.get_experiment_by_name("leapfrog").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_accuracy")] == [0, 1, 2]


def test_a_failed_loop_marks_its_tracker_runs_failed(tmp_path):
    cfg = parse_config({"run": {"name": "broken", "report_to": ["wandb", "mlflow", "tensorboard"]}})
    with pytest.raises(RuntimeError, match="the loop broke"):
        with Trackers.start(cfg, tmp_path, 0) as trackers:
            trackers.log({"step": 1, "loss": 0.5, "pass@4": 0.25, "ok": True, "note": "text", "time": 1.0})
            trackers.log({"event": "learner_restarted", "at_step": 1, "from_step": 0})  # no step: not a metric
            raise RuntimeError("the loop broke")
    assert trackers.open == []
    client = mlflow_client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("leapfrog").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.metrics == {"loss": 0.5, "pass_4": 0.25}  # MLflow's characters; booleans and text left out
    (wandb_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(wandb_file)
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [1]
    history = [r for r in records if r.WhichOneof("record_type") == "history"]
    assert len(history) == 1


def test_a_continued_run_purges_the_tensorboard_events_after_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = parse_config({"run": {"report_to": ["tensorboard"]}})
    with Trackers.start(cfg, tmp_path, 0) as trackers:  # the interrupted attempt: steps 1-3, checkpoint at 1
        for step in (1, 2, 3):
            trackers.log({"step": step, "loss": float(step), "time": 100.0 + step})
    with Trackers.start(cfg, tmp_path, 1) as trackers:  # continued from the checkpoint of step 1
        trackers.log({"step": 2, "loss": 20.0, "time": 200.0})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 20.0)]
