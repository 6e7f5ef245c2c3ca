"""`leapfrog`: the command line. Thin shells around the packages; errors print one clear message, exit 2.

    leapfrog bootstrap [--task arith] [--seed S]      build the default model (cached under $LEAPFROG_HOME)
    leapfrog models list | pull NAME_OR_GGUF          registered and cached models / convert one into a model dir
    leapfrog run CONFIG [--resume RUN_DIR]            a single-process RL run with a progress bar
    leapfrog eval CHECKPOINT --task T [--n N]         greedy accuracy and pass@k of a checkpoint or model dir
    leapfrog export CHECKPOINT --out DIR [--merge]    the LoRA adapter, or the merged full model, to serve
    leapfrog config schema | show CONFIG              the job config's JSON schema / the resolved config
    leapfrog demo                                     the reference job through the control plane, with a summary
    leapfrog serve [--host H] [--port P]              the control plane: REST API + dashboard, with Redis and Ray
    leapfrog submit CONFIG [--server URL]             submit a job to a running control plane
    leapfrog status [JOB] [--server URL]              jobs and their state, or one job's state and metrics
    leapfrog analyze RUN_DIR                          rank-1 analysis of a LoRA run (extrapolate package)
    leapfrog extrapolate RUN_DIR --method M ...       predicted weights at a later step, written as an adapter
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common.run_dir import CONFIG

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own rich bars show progress

DEFAULT_JOB = Path("deploy/jobs/arith.yaml")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`--set section.field=value` (value parsed as YAML) on a raw config mapping."""
    import yaml

    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set {item!r}: use section.field=value, e.g. --set run.steps=20")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if node.get(p) is None:  # absent, or an empty section (`extrapolate:`)
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p} is not a section")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({getattr(err, 'problem', None) or err}); "
                             f"write it as YAML, quoting a string with special characters") from None
        if isinstance(parsed, str):
            try:
                parsed = float(parsed)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        node[leaf] = parsed
    return data


# What a resumed run may change (`leapfrog run --resume DIR --set ...`): where it runs, not what it computes.
RESUME_OVERRIDES = ("learner.num_workers", "learner.sharding", "learner.num_cpus", "learner.num_gpus",
                    "rollout.num_workers", "rollout.worker_cpus", "rollout.worker_gpus")


def resumed_job(run_dir: Path, overrides: list[str]):
    """A run's saved config, with `--set` overrides of its resources only (RESUME_OVERRIDES: e.g. a run stopped
    with 2 learner ranks resumes on 1); the changed config is saved back into the run directory."""
    from services.config import dump_config, load_config, parse_config, read_config_file

    path = run_dir / CONFIG
    if not path.is_file():
        raise ValueError(f"--resume {run_dir}: no {CONFIG} there; give the directory of a run")
    if not overrides:
        return load_config(path)
    for item in overrides:
        key = item.partition("=")[0]
        if key not in RESUME_OVERRIDES:
            raise ValueError(f"--set {item!r} with --resume: a resumed run may change its resources only "
                             f"({', '.join(RESUME_OVERRIDES)}); start a new run to change {key}")
    cfg = parse_config(apply_overrides(read_config_file(path), overrides), f"{path} with --set {' '.join(overrides)}")
    path.write_text(dump_config(cfg))
    return cfg


def read_job(path: str, overrides: list[str]):
    """The job config of a YAML file with `--set` overrides applied to its raw mapping, validated once: fields
    neither the file nor an override sets keep their defaults and stay out of `model_fields_set`."""
    from services.config import load_config, parse_config, read_config_file

    if not overrides:
        return load_config(path)
    data = apply_overrides(read_config_file(path), overrides)
    return parse_config(data, f"{path} with --set {' '.join(overrides)}")


def cmd_bootstrap(args) -> int:
    from learner.bootstrap import bootstrap

    path = bootstrap(args.task, args.seed, out_dir=Path(args.out) if args.out else None, force=args.force)
    report = json.loads((path / "leapfrog_bootstrap.json").read_text())
    print(f"default model for {args.task!r} (seed {args.seed}): {path}")
    print(f"  {report['parameters']:,} parameters, {report['sft_steps']} warm-start steps, "
          f"greedy held-out accuracy {report['heldout_accuracy']:.3f}")
    return 0


def cmd_models(args) -> int:
    """`models list`: registered models (cached or not) and the other model dirs under $LEAPFROG_HOME/models;
    `models pull`: resolve a name, GGUF file or model dir into a local HF model directory and print its path."""
    from rich.console import Console
    from rich.table import Table

    from learner.models import REGISTRY, cached_models, models_home, read_source_record, resolve_model

    console = Console(width=None if sys.stdout.isatty() else 1000)  # piped: no wrapping, paths stay whole
    if args.action == "pull":
        if not args.model:
            raise ValueError("leapfrog models pull needs a model: a registered name (leapfrog models list) or a .gguf file")
        path = resolve_model(args.model, progress=True)
        record = read_source_record(path)
        if record is not None:
            print(f"{args.model}: {record['parameters']:,} parameters, converted from {record['source']}",
                  file=sys.stderr)
        print(path)
        return 0
    table = Table(title="registered models", title_justify="left")
    for column in ("name", "source", "license", "cached"):
        table.add_column(column)
    for model in REGISTRY.values():
        path = models_home() / model.name
        record = read_source_record(path)
        cached = f"yes {path}" if record is not None and (path / "config.json").is_file() else "no"
        table.add_row(model.name, f"pip {model.requirement}: {model.file}", model.license, cached)
    console.print(table)
    others = [m for m in cached_models() if m.name not in REGISTRY]
    if others:
        table = Table(title=f"other models in {models_home()}", title_justify="left")
        for column in ("name", "kind", "size", "path"):
            table.add_column(column)
        for m in others:
            kind = f"converted from {m.source}" if m.kind == "converted" else m.kind
            table.add_row(m.name, kind, f"{m.size / 1e6:,.1f} MB", str(m.path))
        console.print(table)
    console.print("use one as model.path in a job config: a name, a .gguf file, or a model directory")
    return 0


def print_summary(summary, console) -> None:
    console.print(f"\n[bold]Run finished[/bold]: {summary.steps} steps in {summary.seconds:.0f} s, run dir {summary.run_dir}")
    console.print(f"  held-out greedy accuracy: before {summary.acc_before:.3f} -> after {summary.acc_after:.3f} "
                  f"({100 * (summary.acc_after - summary.acc_before):+.1f} points; best {summary.best_acc:.3f})")
    curve = "  ".join(f"{e['step']}:{e['accuracy']:.3f}" for e in summary.evals)
    console.print(f"  accuracy by step: {curve}")
    if summary.leaps is not None:
        a = summary.leaps
        console.print(f"  leaps: {a['proposals']} proposed, {a['applied']} applied, {a['paid']} paid, "
                      f"{a['rolled_back']} rolled back, {a['rejected']} rejected on the spot; "
                      f"{summary.learner_steps} learner steps for {summary.steps} steps of trajectory")
        console.print(f"  learner steps saved by leaps that paid: {a['steps_skipped']}, spent in discarded branches "
                      f"(judging, rollbacks): {a['steps_lost']}, net {a['net_steps_saved']}; extrapolation {a['extrapolation_s']:.0f} s, "
                      f"leap evaluations {a['evaluation_s']:.0f} s (events: {summary.run_dir}/events.jsonl)")


def cmd_run(args) -> int:
    from rich.console import Console

    from services.loop import run_job

    console = Console()
    if args.resume:
        cfg = resumed_job(Path(args.resume), args.set)
        summary = run_job(cfg, run_dir=Path(args.resume), resume=True, console=console, stop_after=args.stop_after,
                          source=str(Path(args.resume) / CONFIG))
    else:
        cfg = read_job(args.config, args.set)
        summary = run_job(cfg, run_dir=Path(args.run_dir) if args.run_dir else None, console=console,
                          stop_after=args.stop_after, source=args.config)
    print_summary(summary, console)
    return 0


def cmd_demo(args) -> int:
    """The reference job end to end through the control plane: start it (embedded Redis, local Ray head), submit
    the job over REST, print where to watch it, follow it, print the closing summary, shut everything down."""
    import threading

    import httpx
    import uvicorn
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from services.api import create_app
    from services.config import JobConfig, dump_config
    from services.loop import RunSummary
    from services.prepare import resolve_model_dir
    from services.serve import control_plane
    from services.store import TERMINAL, free_port

    console = Console()
    cfg = read_job(str(args.config), args.set) if Path(args.config).is_file() else JobConfig()
    resolve_model_dir(cfg, progress=True)  # build the default model here, with its progress bar, before the job
    console.print("[bold]Leapfrog demo[/bold]: starting the control plane (embedded Redis, a local Ray head) ...")
    with control_plane() as (store, jobs, settings, url):
        port = args.port or free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(store, jobs, settings), host="127.0.0.1",
                                               port=port, log_level="warning", timeout_graceful_shutdown=2))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                if server.started:
                    break
                time.sleep(0.05)
            headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
            res = httpx.post(f"{base}/v1/jobs", content=dump_config(cfg), timeout=60,
                             headers={**headers, "Content-Type": "application/yaml"})
            if res.status_code != 201:
                raise RuntimeError(f"the control plane refused the job ({res.status_code}): {res.text}")
            job = res.json()
            console.print(f"submitted job [bold]{job['id']}[/bold] to Ray; watch it live at {base}/jobs/{job['id']} "
                          f"(REST: {base}/v1/jobs/{job['id']}, run dir {job['run_dir']})")
            state, after = job["state"], "0-0"
            columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[state]}  held-out acc {task.fields[acc]}"), TimeElapsedColumn()]
            with Progress(*columns, console=console) as bar:
                task = bar.add_task(f"RL {cfg.rollout.task}", total=cfg.run.steps, state=state, acc="-")
                while state not in TERMINAL:
                    time.sleep(1.0)
                    state = httpx.get(f"{base}/v1/jobs/{job['id']}", timeout=30).json()["state"]
                    for sid, row in store.read(job["id"], "metrics", after, 1000):
                        after = sid
                        bar.update(task, completed=row.get("step", 0))
                        if "eval_accuracy" in row:
                            bar.update(task, acc=f"{row['eval_accuracy']:.3f}")
                    bar.update(task, state=state)
            record = store.get(job["id"])
            if state != "SUCCEEDED" or not record.get("summary"):
                console.print(f"[red]job {job['id']} ended {state}[/red]: {record.get('error') or 'see the Ray logs'}")
                return 1
            print_summary(RunSummary(**json.loads(record["summary"])), console)
            console.print(f"rank-1 analysis and leaps: leapfrog analyze {job['run_dir']} --html report.html")
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            console.print("control plane, Ray head and Redis stopped")
    return 0


def server_url(args) -> str:
    return (args.server or os.environ.get("LEAPFROG_SERVER") or "http://127.0.0.1:8000").rstrip("/")


def cmd_submit(args) -> int:
    import httpx

    token = os.environ.get("LEAPFROG_API_TOKEN")
    headers = {"Content-Type": "application/yaml", **({"Authorization": f"Bearer {token}"} if token else {})}
    body = Path(args.config).read_text()
    res = httpx.post(f"{server_url(args)}/v1/jobs", content=body, headers=headers, timeout=60)
    if res.status_code != 201:
        detail = res.json().get("detail") if res.headers.get("content-type", "").startswith("application/json") \
            else res.text
        if isinstance(detail, list):
            detail = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in detail)
        raise ValueError(f"the control plane refused the job ({res.status_code}): {detail}")
    job = res.json()
    print(f"{job['id']} {job['state']}  dashboard: {server_url(args)}/jobs/{job['id']}")
    return 0


def cmd_status(args) -> int:
    import httpx

    base = server_url(args)
    if not args.job:
        for job in httpx.get(f"{base}/v1/jobs", params={"limit": 100}, timeout=30).json()["items"]:
            print(f"{job['id']:32s} {job['state']:10s} {time.strftime('%Y-%m-%d %H:%M', time.localtime(job['created']))}")
        return 0
    res = httpx.get(f"{base}/v1/jobs/{args.job}", timeout=30)
    if res.status_code == 404:
        raise ValueError(f"no job {args.job!r} on {base}")
    job = res.json()
    print(f"{job['id']}: {job['state']}  run dir {job['run_dir']}  leaps {job['leaps']}")
    if job.get("error"):
        print(f"  error: {job['error']}")
    rows = httpx.get(f"{base}/v1/jobs/{args.job}/metrics", params={"limit": 5000}, timeout=30).json()["items"]
    evals = [r["data"] for r in rows if "eval_accuracy" in r["data"]]
    steps = [r["data"]["step"] for r in rows if "loss" in r["data"]]
    print(f"  step {steps[-1] if steps else 0}; held-out accuracy by step: "
          + "  ".join(f"{e['step']}:{e['eval_accuracy']:.3f}" for e in evals))
    return 0


def cmd_eval(args) -> int:
    from learner.export import adapter_base_dir
    from rollout.engines.hf import HFEngine
    from rollout.evaluate import greedy_accuracy, greedy_completions, list_metrics, sampled_pass_at_k
    from rollout.prompts import PromptEncoder
    from rollout.rewards import Scorer
    from rollout.tasks import ListTask, load_task

    path = Path(args.checkpoint)
    if (path / "adapter_config.json").is_file():
        base_dir = adapter_base_dir(path, args.base)
        engine = HFEngine(base_dir, adapter_path=path)
    elif (path / "config.json").is_file():
        base_dir = path
        engine = HFEngine(path)
    else:
        raise ValueError(f"{path} is neither a PEFT adapter (adapter_config.json) nor an HF model dir (config.json)")
    agent = None
    if args.job:  # the job's prompts, rewards and, for a multi-turn job, its environment and tools
        from services.config import load_config
        from services.prepare import prepare_model

        job = prepare_model(load_config(args.job), progress=False)
        encoder, task, scorer, agent, max_new = job.encoder, job.task, job.scorer, job.agent, job.max_new_tokens
    else:
        encoder = PromptEncoder.from_model_dir(base_dir)
        task = load_task(args.task)
        scorer, max_new = Scorer.for_job([], task, task.max_new_tokens), task.max_new_tokens
    examples = task.examples("test", args.size, seed=args.eval_seed)
    result = {"checkpoint": str(path), "task": task.name, "problems": len(examples),
              "greedy_accuracy": greedy_accuracy(engine, scorer, examples, encoder, max_new, agent=agent)}
    if isinstance(task, ListTask):
        texts = [c.text for c in greedy_completions(engine, examples, encoder, max_new)]
        result.update(list_metrics(task, examples, texts))
    if args.n > 1:
        result["pass_at_k"] = sampled_pass_at_k(engine, scorer, examples, encoder, n=args.n, max_new_tokens=max_new,
                                                temperature=args.temperature, seed=args.seed, agent=agent)
    print(json.dumps(result, indent=2))
    return 0


def cmd_export(args) -> int:
    from learner.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, merge=args.merge, base=args.base)
    full = (out / "config.json").is_file()
    kind = "full model (transformers, vLLM)" if full else "LoRA adapter (PEFT, vLLM --lora-modules)"
    print(f"{kind}: {out}")
    return 0


def cmd_config(args) -> int:
    from services.config import JobConfig, dump_config

    if args.action == "schema":
        print(json.dumps(JobConfig.model_json_schema(), indent=2))
    elif args.action == "reference":
        from services.config import config_reference

        print(config_reference())
    else:
        print(dump_config(read_job(args.config, args.set)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leapfrog", description="RL for LLMs with rank-1 trajectory leaps.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bootstrap", help="build the default model of a task (tokenizer + tiny LM + warm-start)")
    p.add_argument("--task", default="arith")
    p.add_argument("--job", help="a job config: evaluate with its task, prompts, rewards and (multi-turn) environment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="model directory (default $LEAPFROG_HOME/models/<task>-s<seed>)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("models", help="registered and cached models; convert a registered model or a GGUF file")
    p.add_argument("action", choices=["list", "pull"],
                   help="list: registered models and cached model dirs; pull MODEL: prepare one, print its directory")
    p.add_argument("model", nargs="?", help="pull: a registered name, a .gguf file or an HF model directory")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("run", help="run an RL job in this process")
    p.add_argument("config", nargs="?", help="job config YAML (e.g. deploy/jobs/arith.yaml)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("--run-dir", help="where to write the run (default <run.runs_root>/<run.name>)")
    p.add_argument("--stop-after", type=int, metavar="STEP", help="checkpoint and stop after this step (resume later)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a field (with --resume: the resources only, e.g. learner.num_workers)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the reference job through the control plane (Redis, Ray), with a summary")
    p.add_argument("--job", "--config", dest="config", default=str(DEFAULT_JOB),
                   help="job config (default: deploy/jobs/arith.yaml; deploy/jobs/smollm2.yaml is the real-model one)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--port", type=int, help="the control plane's port (default: a free one)")
    p.set_defaults(func=cmd_demo)

    from services.serve import register as register_serve

    register_serve(sub)
    p = sub.add_parser("submit", help="submit a job config to a running control plane (leapfrog serve)")
    p.add_argument("config")
    p.add_argument("--server", help="control plane URL (default $LEAPFROG_SERVER or http://127.0.0.1:8000)")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("status", help="jobs on a running control plane, or one job's state and accuracy")
    p.add_argument("job", nargs="?")
    p.add_argument("--server", help="control plane URL (default $LEAPFROG_SERVER or http://127.0.0.1:8000)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("eval", help="evaluate a checkpoint (PEFT adapter dir) or an HF model dir")
    p.add_argument("checkpoint")
    p.add_argument("--task", default="arith")
    p.add_argument("--job", help="a job config: evaluate with its task, prompts, rewards and (multi-turn) environment")
    p.add_argument("--base", help="base model dir of an adapter (default: the adapter's recorded "
                                  "base_model_name_or_path)")
    p.add_argument("--n", type=int, default=1, help="samples per problem for pass@k (1 = greedy only)")
    p.add_argument("--size", type=int, default=1000, help="held-out problems")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=12345)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="a checkpoint's LoRA adapter, or the merged full model, in a directory to serve")
    p.add_argument("checkpoint", help="a checkpoint directory (RUN_DIR/checkpoints/step-NNNNNN) or PEFT adapter dir")
    p.add_argument("--out", required=True, help="the directory to write (new or empty)")
    p.add_argument("--merge", action="store_true", help="fold the adapter into its base: a full HF model directory "
                                                        "with the base's tokenizer, chat template and generation config")
    p.add_argument("--base", help="base model dir (default: the adapter's recorded base_model_name_or_path)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("config", help="job config tools")
    p.add_argument("action", choices=["schema", "show", "reference"],
                   help="schema: JSON schema; show CONFIG: the resolved config; reference: Markdown tables")
    p.add_argument("config", nargs="?")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.set_defaults(func=cmd_config)

    from extrapolate.analyze import register
    from extrapolate.extrapolators import register_command

    p = register(sub)
    p.add_argument("--html", help="also write a self-contained HTML report with the dashboard's charts here")
    p.set_defaults(func=cmd_analyze_with_report)
    register_command(sub)
    return parser


def cmd_analyze_with_report(args) -> int:
    """`leapfrog analyze` (extrapolate package), plus the dashboard's static report with --html."""
    from pathlib import Path

    from extrapolate.analyze import cmd_analyze

    code = cmd_analyze(args)
    if args.html:
        from services.dashboard import write_report

        print(f"report: {write_report(Path(args.run_dir), Path(args.html))} (open it in a browser; works offline)")
    return code


def main(argv: list[str] | None = None) -> int:
    from extrapolate.checkpoints import CheckpointReadError
    from extrapolate.leap_writer import LeapError
    from learner.checkpoint import CheckpointError
    from services.config import ConfigError

    args = build_parser().parse_args(argv)
    if args.command == "run" and not args.config and not args.resume:
        print("error: give a job config (leapfrog run deploy/jobs/arith.yaml) or --resume RUN_DIR", file=sys.stderr)
        return 2
    if args.command == "config" and args.action == "show" and not args.config:
        print("error: leapfrog config show needs a job config file", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, CheckpointReadError, LeapError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        import httpx

        if not isinstance(err, httpx.TransportError):
            raise
        print(f"error: no control plane answers at {server_url(args)} ({err}); start one with `leapfrog serve`",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed checkpoints are kept (resume with leapfrog run --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
