"""`leapfrog analyze RUN_DIR`: the rank-1 picture of a run, per module and checkpoint (docs/methods.md#rank-1-analysis).

For every checkpoint t and target module: the rank-1 triplet of Delta_t = W_t - W_0 (LoRA runs: the fast path, W_0
is the base, so Delta_t = scale B_t A_t; full-parameter runs: the dense randomized path against the base model,
where e1 is left out because it needs the whole spectrum), e1, energy1, stable rank, stability of u_1 and v_1
against the previous checkpoint (sign-aligned), the growth exponent p of ||Delta_t||_F ~ a t^p per module, NExt's linear_r2 and a
backtest of every extrapolator (extrapolate/predictability.py). Rows are written to
<run_dir>/rank1/metrics.jsonl (atomically); nothing else in the run directory is touched.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from extrapolate.checkpoints import (
    CheckpointReadError,
    find_adapter_checkpoints,
    find_full_checkpoints,
    module_layer,
    read_full,
    read_lora,
)
from extrapolate.extrapolators import LINEAR_METHODS
from extrapolate.predictability import backtest, linear_r2
from extrapolate.rank1 import (
    align_sign,
    dense_triplets,
    growth_exponent,
    lora_factors_difference,
    lora_triplets,
    stability,
)


class TrajectoryStore:
    """<run_dir>/rank1/trajectory.safetensors (per module and step: u, s, v of the top triplet, sign-aligned) and
    rank1/metrics.jsonl (one row per module and step); both written atomically; re-analysis only adds new steps."""

    def __init__(self, out_dir: Path):
        from safetensors.torch import load_file

        self.out_dir = out_dir
        self.tensors: dict = {}
        self.rows: list[dict] = []
        if (out_dir / "trajectory.safetensors").is_file() and (out_dir / "metrics.jsonl").is_file():
            self.tensors = load_file(str(out_dir / "trajectory.safetensors"))
            self.rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]

    def add(self, module: str, step: int, u, s, v) -> None:
        self.tensors[f"{module}@{step}.u"] = u.float().contiguous()
        self.tensors[f"{module}@{step}.s"] = s.float().reshape(1)
        self.tensors[f"{module}@{step}.v"] = v.float().contiguous()

    def vectors(self, step: int) -> dict:
        """{module: (u [m, 1], v [n, 1])} stored for a step."""
        out = {}
        for key, value in self.tensors.items():
            module, _, rest = key.rpartition("@")
            if rest == f"{step}.u":
                out[module] = (value.double()[:, None], self.tensors[f"{module}@{step}.v"].double()[:, None])
        return out

    def save(self) -> None:
        from safetensors.torch import save_file

        self.out_dir.mkdir(exist_ok=True)
        tmp = self.out_dir / f"trajectory.safetensors.tmp-{os.getpid()}"
        save_file(self.tensors, str(tmp))
        os.replace(tmp, self.out_dir / "trajectory.safetensors")
        tmp = self.out_dir / f"metrics.jsonl.tmp-{os.getpid()}"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        os.replace(tmp, self.out_dir / "metrics.jsonl")


def checkpoint_triplets(run_dir: Path, base: Path | None = None) -> tuple[str, list[tuple[int, object]]]:
    """The run's kind ("lora" or "full") and, per checkpoint step, a loader of {module: (Triplets, layer, type)}
    for Delta_t = W_t - W_0: the LoRA fast path for adapters; for full HF model checkpoints the dense randomized
    path against the base model directory `base` (default: the checkpoints' config `_name_or_path`)."""
    checkpoints = find_adapter_checkpoints(run_dir)
    if checkpoints:
        def lora_loader(path):
            return lambda: {name: (lora_triplets(*lora_factors_difference(m.b, m.a, m.scale)), m.layer,
                                   m.module_type) for name, m in read_lora(path).items()}
        return "lora", [(step, lora_loader(path)) for step, path in checkpoints]
    checkpoints = find_full_checkpoints(run_dir)
    if not checkpoints:
        return "lora", []
    if base is None:
        named = json.loads((checkpoints[0][1] / "config.json").read_text()).get("_name_or_path")
        if not named or not Path(named).is_dir():
            raise CheckpointReadError(f"{run_dir} holds full-model checkpoints; give the base model they started from "
                                      f"with --base DIR (their config names {named!r}, not a local directory)")
        base = Path(named)
    weights_0 = read_full(base)

    def full_loader(path):
        def load():
            weights = read_full(path)
            if set(weights) != set(weights_0) or any(w.shape != weights_0[n].shape for n, w in weights.items()):
                raise CheckpointReadError(f"{path} does not match the base model {base} (different modules or "
                                          f"shapes); give the base this run started from with --base")
            return {n: (dense_triplets(w.double() - weights_0[n].double()), module_layer(n), n.rsplit(".", 1)[-1])
                    for n, w in weights.items()}
        return load
    return "full", [(step, full_loader(path)) for step, path in checkpoints]


def analyze_run(run_dir: Path, progress: bool = True, base: Path | None = None) -> dict:
    """Metrics rows per (step, module) and a summary per module type; writes rank1/metrics.jsonl and
    rank1/trajectory.safetensors. LoRA runs also get a backtest of every closed-form extrapolator."""
    from rich.progress import Progress

    run_dir = Path(run_dir)
    kind, checkpoints = checkpoint_triplets(run_dir, base)
    if len(checkpoints) < 2:
        raise CheckpointReadError(f"{run_dir} has {len(checkpoints)} checkpoint(s); the analysis needs at least 2 "
                                  f"(LoRA: checkpoints/step-N, checkpoint-N or global_step_N/actor/lora_adapter; "
                                  f"full models: checkpoint-N or step-N with config.json and model*.safetensors)")
    out_dir = run_dir / "rank1"
    store = TrajectoryStore(out_dir)
    steps = [s for s, _ in checkpoints]
    rows = [r for r in store.rows if r["step"] in steps]
    done = {r["step"] for r in rows}
    previous = {}  # module -> (u, v) of the last processed checkpoint, sign-aligned
    new_steps = 0
    with Progress(disable=not progress) as bar:
        job = bar.add_task("rank-1 analysis", total=len(checkpoints))
        for step, load in checkpoints:
            if step in done:
                previous.update(store.vectors(step))
                bar.advance(job)
                continue
            new_steps += 1
            for name, (trip, layer, mtype) in load().items():
                row = {"step": step, "module": name, "layer": layer, "type": mtype, **trip.metrics()}
                if name in previous:
                    u, v = align_sign(trip.u, trip.v, previous[name][0])
                    row["stability_u"], row["stability_v"] = stability(u, v, *previous[name])
                    trip.u, trip.v = u, v
                previous[name] = (trip.u, trip.v)
                store.add(name, step, trip.u[:, 0], trip.s[0], trip.v[:, 0])
                rows.append(row)
            bar.advance(job)
    store.rows = sorted(rows, key=lambda r: (r["step"], r["module"]))
    store.save()
    backtests = {}
    if kind == "lora":
        states = [(step, read_lora(path)) for step, path in find_adapter_checkpoints(run_dir)]
        backtests = {m: backtest(states, m) for m in LINEAR_METHODS}
    n = len(steps)
    predict = min(5, max(1, n // 3))
    fit = min(10, n - predict)
    r2 = {}
    if fit >= 2:
        recent = steps[-(fit + predict):]
        for name in previous:
            xs = [store.tensors[f"{name}@{s}.s"].double() * store.tensors[f"{name}@{s}.u"].double() for s in recent]
            r2[name] = linear_r2(recent, xs, fit, predict)
    norms: dict[str, list] = {}
    for r in store.rows:
        norms.setdefault(r["module"], []).append((r["step"], r["fro"]))
    growth = {name: growth_exponent([s for s, _ in pts], [f for _, f in pts]) for name, pts in norms.items()
              if len(pts) >= 2 and all(f > 0 for _, f in pts) and pts[0][0] > 0}
    summary = {}
    for mtype in sorted({r["type"] for r in rows}):
        last = [r for r in rows if r["type"] == mtype and r["step"] == steps[-1]]
        summary[mtype] = {
            "e1": statistics.median(r["e1"] for r in last) if all("e1" in r for r in last) else float("nan"),
            "energy1": statistics.median(r["energy1"] for r in last),
            "stability_u": statistics.median(r.get("stability_u", float("nan")) for r in last),
            "growth_p": statistics.median(growth[r["module"]] for r in last if r["module"] in growth)
            if any(r["module"] in growth for r in last) else float("nan"),
        }
    r2_values = sorted(v for v in r2.values() if v == v)
    return {"run_dir": str(run_dir), "kind": kind, "steps": steps, "modules": len(previous),
            "by_type": summary, "rows": len(rows), "new_checkpoints": new_steps, "backtest": backtests,
            "linear_r2": {"fit": fit, "predict": predict,
                          "median": statistics.median(r2_values) if r2_values else float("nan"),
                          "share_negative": sum(v < 0 for v in r2_values) / len(r2_values) if r2_values else float("nan")}}


def checkpoint_record(run_dir: Path, step: int) -> dict:
    """Analyse a run incrementally after its checkpoint at `step` and return that checkpoint's record: the rank-1
    rows of every module, the summary per module type, the closed-form backtests and linear_r2 (what the
    extrapolation service streams to the dashboard). Empty rows before the second checkpoint."""
    import time

    started = time.time()
    if len(find_adapter_checkpoints(run_dir)) < 2:
        return {"step": step, "rows": [], "note": "the rank-1 analysis starts at the second checkpoint"}
    summary = analyze_run(run_dir, progress=False)
    rows = [json.loads(line) for line in (Path(run_dir) / "rank1" / "metrics.jsonl").read_text().splitlines()]
    return {"step": step, "rows": [r for r in rows if r["step"] == step], "by_type": summary["by_type"],
            "backtest": summary["backtest"], "linear_r2": summary["linear_r2"], "seconds": time.time() - started}


def rank1_recovery(run_dir: Path, task_name: str, eval_size: int = 1000, step: int | None = None) -> dict:
    """AlphaRL's rank-1 recovery (docs/methods.md#rank-1-recovery): evaluate the norm-matched rank-1 model
    W_0 + (||Delta||_F / s_1) s_1 u_1 v_1^T of a checkpoint (every target module) against the full checkpoint and
    the base: recovery = (acc_rank1 - acc_base) / (acc_t - acc_base), greedy, on the task's held-out set."""
    import tempfile

    from extrapolate.leap import write_leap_adapter
    from rollout.engines.hf import HFEngine
    from rollout.evaluate import greedy_accuracy
    from rollout.prompts import PromptEncoder
    from rollout.tasks import load_task

    checkpoints = dict(find_adapter_checkpoints(run_dir))
    if not checkpoints:
        raise CheckpointReadError(f"{run_dir} has no LoRA checkpoints")
    step = step if step is not None else max(checkpoints)
    path = checkpoints[step]
    base_dir = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_dir or not Path(base_dir).is_dir():
        raise CheckpointReadError(f"{path}: base model {base_dir!r} is not a local directory")
    rank1 = {}
    for name, mod in read_lora(path).items():
        trip = lora_triplets(*lora_factors_difference(mod.b, mod.a, mod.scale))
        rank1[name] = ((trip.fro2**0.5) * trip.u[:, :1], trip.v[:, :1].T)
    task = load_task(task_name)
    examples = task.examples("test", eval_size, seed=12345)
    encoder = PromptEncoder.from_model_dir(base_dir)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = write_leap_adapter(Path(tmp) / "rank1", path, rank1, {}, report={"rank1_of": str(path)})
        acc_rank1 = greedy_accuracy(HFEngine(base_dir, adapter_path=adapter), task, examples, encoder)
    acc_full = greedy_accuracy(HFEngine(base_dir, adapter_path=path), task, examples, encoder)
    acc_base = greedy_accuracy(HFEngine(base_dir), task, examples, encoder)
    gain = acc_full - acc_base
    return {"step": step, "acc_base": acc_base, "acc_full": acc_full, "acc_rank1": acc_rank1,
            "recovery": (acc_rank1 - acc_base) / gain if gain != 0 else float("nan"), "eval_size": eval_size}


def cmd_analyze(args) -> int:
    from rich.console import Console
    from rich.table import Table

    result = analyze_run(Path(args.run_dir), base=Path(args.base) if args.base else None)
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title=f"rank-1 picture at step {result['steps'][-1]} ({result['modules']} modules, "
                        f"{len(result['steps'])} checkpoints)")
    for col in ("module type", "median e1", "median energy1", "median |cos u1| vs prev", "median growth p"):
        table.add_column(col)
    for mtype, s in result["by_type"].items():
        table.add_row(mtype, f"{s['e1']:.3f}", f"{s['energy1']:.3f}", f"{s['stability_u']:.3f}", f"{s['growth_p']:.2f}")
    Console().print(table)
    lin = result["linear_r2"]
    print(f"linear_r2 (fit {lin['fit']}, predict {lin['predict']} checkpoints): median {lin['median']:.3f}, "
          f"share of modules below 0: {lin['share_negative']:.2f}")
    for method, bt in result["backtest"].items():
        print(f"backtest {method:9s}: forecast of the newest checkpoint from one checkpoint earlier: "
              f"cos(predicted, actual displacement) {bt['cos']:.3f}, relative error {bt['rel_err']:.3f}")
    print(f"per module and step: {Path(args.run_dir) / 'rank1' / 'metrics.jsonl'}")

    if args.task:
        rec = rank1_recovery(Path(args.run_dir), args.task, args.eval_size)
        print(f"rank-1 recovery at step {rec['step']} on {rec['eval_size']} held-out {args.task} problems: base "
              f"{rec['acc_base']:.3f}, full {rec['acc_full']:.3f}, norm-matched rank-1 {rec['acc_rank1']:.3f} -> "
              f"recovery {rec['recovery']:.2f}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="rank-1 analysis of a LoRA run's checkpoints (ours, TRL, verl)")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--base", help="full-parameter runs: the base model directory the run started from "
                                  "(default: the checkpoints' config _name_or_path)")
    p.add_argument("--task", help="also measure rank-1 recovery on this task's held-out set (greedy)")
    p.add_argument("--eval-size", type=int, default=1000, help="held-out problems for the recovery")

    p.set_defaults(func=cmd_analyze)
    return p
