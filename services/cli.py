"""`leapfrog`: the command line. Thin shells around the packages; errors print one clear message, exit 2.

    leapfrog bootstrap [--task arith] [--seed S]      build the default model (cached under $LEAPFROG_HOME)
    leapfrog run CONFIG [--resume RUN_DIR]            a single-process RL run with a progress bar
    leapfrog eval CHECKPOINT --task T [--n N]         greedy accuracy and pass@k of a checkpoint or model dir
    leapfrog config schema | show CONFIG              the job config's JSON schema / the resolved config
    leapfrog demo                                     bootstrap + the reference arith job, accuracy before/after
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
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p} is not a section")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):
            try:
                parsed = float(parsed)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        node[leaf] = parsed
    return data


def read_job(path: str, overrides: list[str]):
    import yaml

    from services.config import ConfigError, load_config, parse_config

    if not overrides:
        return load_config(path)
    cfg = load_config(path)  # validates the file itself first
    data = apply_overrides(cfg.model_dump(mode="json", exclude_unset=False), overrides)
    try:
        return parse_config(data, f"{path} with --set")
    except ConfigError:
        raise
    except yaml.YAMLError as err:
        raise ConfigError(str(err)) from None


def cmd_bootstrap(args) -> int:
    from learner.bootstrap import bootstrap

    path = bootstrap(args.task, args.seed, out_dir=Path(args.out) if args.out else None, force=args.force)
    report = json.loads((path / "leapfrog_bootstrap.json").read_text())
    print(f"default model for {args.task!r} (seed {args.seed}): {path}")
    print(f"  {report['parameters']:,} parameters, {report['sft_steps']} warm-start steps, "
          f"greedy held-out accuracy {report['heldout_accuracy']:.3f}")
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

    from services.config import load_config
    from services.runner import run_job

    console = Console()
    if args.resume:
        cfg = load_config(Path(args.resume) / "config.yaml")
        summary = run_job(cfg, run_dir=Path(args.resume), resume=True, console=console, stop_after=args.stop_after)
    else:
        cfg = read_job(args.config, args.set)
        summary = run_job(cfg, run_dir=Path(args.run_dir) if args.run_dir else None, console=console,
                          stop_after=args.stop_after)
    print_summary(summary, console)
    return 0


def cmd_demo(args) -> int:
    from rich.console import Console

    from services.config import JobConfig
    from services.runner import run_job

    console = Console()
    cfg = read_job(str(args.config), args.set) if Path(args.config).is_file() else JobConfig()
    run_dir = Path(cfg.run.runs_root) / f"{cfg.run.name}-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(f"[bold]Leapfrog demo[/bold]: GRPO + LoRA on the bootstrapped {cfg.rollout.task!r} model, "
                  f"{cfg.run.steps} steps on CPU -> {run_dir}")
    summary = run_job(cfg, run_dir=run_dir, console=console)
    print_summary(summary, console)
    return 0


def cmd_eval(args) -> int:
    from rollout.engines.hf import HFEngine
    from rollout.evaluate import greedy_accuracy, list_metrics, sampled_pass_at_k
    from rollout.tasks import load_task

    path = Path(args.checkpoint)
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            raise ValueError(f"{path}: its base model {base!r} is not a local directory; pass --base DIR")
        engine = HFEngine(args.base or base, adapter_path=path)
    elif (path / "config.json").is_file():
        engine = HFEngine(path)
    else:
        raise ValueError(f"{path} is neither a PEFT adapter (adapter_config.json) nor an HF model dir (config.json)")
    task = load_task(args.task)
    examples = task.examples("test", args.size, seed=args.eval_seed)
    result = {"checkpoint": str(path), "task": task.name, "problems": len(examples),
              "greedy_accuracy": greedy_accuracy(engine, task, examples)}
    if hasattr(task, "list_length"):
        result.update(list_metrics(engine, task, examples))
    if args.n > 1:
        result["pass_at_k"] = sampled_pass_at_k(engine, task, examples, n=args.n, temperature=args.temperature,
                                                seed=args.seed)
    print(json.dumps(result, indent=2))
    return 0


def cmd_config(args) -> int:
    from services.config import JobConfig, dump_config

    if args.action == "schema":
        print(json.dumps(JobConfig.model_json_schema(), indent=2))
    else:
        print(dump_config(read_job(args.config, args.set)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leapfrog", description="RL for LLMs with rank-1 trajectory leaps.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bootstrap", help="build the default model of a task (tokenizer + tiny LM + warm-start)")
    p.add_argument("--task", default="arith")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="model directory (default $LEAPFROG_HOME/models/<task>-s<seed>)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("run", help="run an RL job in this process")
    p.add_argument("config", nargs="?", help="job config YAML (e.g. deploy/jobs/arith.yaml)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("--run-dir", help="where to write the run (default <run.runs_root>/<run.name>)")
    p.add_argument("--stop-after", type=int, metavar="STEP", help="checkpoint and stop after this step (resume later)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a field")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="bootstrap the default model and run the reference job")
    p.add_argument("--config", default=str(DEFAULT_JOB))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="evaluate a checkpoint (PEFT adapter dir) or an HF model dir")
    p.add_argument("checkpoint")
    p.add_argument("--task", default="arith")
    p.add_argument("--base", help="base model dir (default: the adapter's base_model_name_or_path)")
    p.add_argument("--n", type=int, default=1, help="samples per problem for pass@k (1 = greedy only)")
    p.add_argument("--size", type=int, default=1000, help="held-out problems")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=12345)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("config", help="job config tools")
    p.add_argument("action", choices=["schema", "show"])
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
    from extrapolate.leap import LeapError
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
    except KeyboardInterrupt:
        print("interrupted; completed checkpoints are kept (resume with leapfrog run --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
