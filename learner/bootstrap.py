"""The default model, built here: no pretrained weights can be downloaded, so Leapfrog makes its own.

1. Train a byte-level BPE tokenizer on the task's training text with `tokenizers` (digits are single tokens).
2. Build a small Llama-architecture causal LM from a transformers config (~1M parameters by default).
3. Warm-start it with a short supervised pass (`sft_steps`) on the task's training split, imitating the task's
   warm-start demonstrations (loss on completion tokens only; see `Task.warmstart_completion`), with greedy
   held-out accuracy checked as it goes: a partly-right "SFT checkpoint" that RL can then improve. The pass
   fails loudly if the result is not partly right (accuracy outside `accuracy_band`).
The result is a normal HF model directory, deterministic for a spec (single-threaded torch ops in the same order on
the same machine) and cached by it: $LEAPFROG_HOME/models/<task>-s<seed>/ for the task's default spec,
<task>-s<seed>-<spec hash>/ for any other. The spec is recorded in the directory (leapfrog_bootstrap.json); a
directory built with other settings is never reused silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from learner.models import BOOTSTRAP_RECORD, models_home
from rollout.engines.hf import HFEngine
from rollout.evaluate import greedy_accuracy
from rollout.prompts import PromptEncoder
from rollout.rewards import Scorer
from rollout.tasks import Task, load_task

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


@dataclass(frozen=True)
class BootstrapSpec:
    """How the default model of a task is built. Every field shapes the model: a spec other than the task's default
    is cached under its own name (see `default_model_dir`). A new field needs a default that reproduces the models
    built before it existed (cached models record the fields they were built with, and a missing one reads as its
    default)."""

    task: str = "arith"
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    vocab_size: int = 300
    sft_batch_size: int = 128
    sft_lr: float = 1e-3
    sft_steps: int = 2500
    eval_every: int = 100
    eval_size: int = 500
    accuracy_band: tuple[float, float] = (0.10, 0.70)


def default_spec(task: str = "arith", seed: int = 0) -> BootstrapSpec:
    """The spec of a task's default model: the defaults above with the task's `bootstrap_overrides`."""
    return BootstrapSpec(task=task, seed=seed, **load_task(task).bootstrap_overrides)


def spec_fields(spec: BootstrapSpec) -> dict:
    """The spec as recorded in a model dir (JSON types: tuples become lists)."""
    return json.loads(json.dumps(asdict(spec)))


def spec_hash(spec: BootstrapSpec) -> str:
    """12 hex digits of the sha256 of every spec field: the cache key of a non-default spec."""
    return hashlib.sha256(json.dumps(spec_fields(spec), sort_keys=True).encode()).hexdigest()[:12]


def default_model_dir(task: str = "arith", seed: int = 0, spec: BootstrapSpec | None = None) -> Path:
    """Where the model of a spec is cached: <task>-s<seed> for the task's default spec (no spec given means that
    one), <task>-s<seed>-<spec hash> for any other."""
    name = f"{task}-s{seed}"
    if spec is not None and spec != default_spec(task, seed):
        name += f"-{spec_hash(spec)}"
    return models_home() / name


def spec_mismatch(model_dir: Path, spec: BootstrapSpec) -> list[str] | None:
    """None when model_dir holds no finished bootstrap; else the fields whose recorded value differs from spec's
    ("sft_steps: 250 -> 300"), empty when it was built with this spec. A field the record lacks reads as its
    default (the model was built before the field existed)."""
    report = model_dir / BOOTSTRAP_RECORD  # the spec it was built with, accuracy, history
    if not report.is_file():
        return None
    recorded = json.loads(report.read_text()).get("spec", {})
    defaults = spec_fields(BootstrapSpec())
    wanted = spec_fields(spec)
    return [f"{k}: {recorded.get(k, defaults.get(k))!r} -> {wanted.get(k)!r}"
            for k in sorted(set(wanted) | set(recorded)) if recorded.get(k, defaults.get(k)) != wanted.get(k)]


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on `texts`; every digit is its own token; BOS prepended, EOS/PAD defined."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_model(spec: BootstrapSpec, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def sft_batch(task: Task, tokenizer, examples, rng: random.Random):
    """Right-padded prompt+completion+EOS rows; labels are -100 on the prompt and the padding."""
    rows, labels = [], []
    for ex in examples:
        p = tokenizer(ex.prompt)["input_ids"]
        c = tokenizer(task.warmstart_completion(ex, rng), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    lab = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels, strict=True)):
        ids[i, :len(r)] = torch.tensor(r)
        lab[i, :len(lb)] = torch.tensor(lb)
        mask[i, :len(r)] = 1
    return ids, mask, lab


def bootstrap(task_name: str = "arith", seed: int = 0, out_dir: Path | None = None, force: bool = False,
              spec: BootstrapSpec | None = None, progress: bool = True) -> Path:
    """Build (or reuse) the default model of a task; returns its HF model directory. `out_dir` defaults to the cache
    directory of the spec; a directory that holds a model built with other settings is an error unless `force`."""
    spec = spec or default_spec(task_name, seed)
    if (spec.task, spec.seed) != (task_name, seed):
        raise ValueError(f"bootstrap({task_name!r}, {seed}): the spec is for task {spec.task!r} seed {spec.seed}; "
                         f"give the same task and seed")
    out_dir = Path(out_dir) if out_dir else default_model_dir(task_name, seed, spec)
    if not force:
        changed = spec_mismatch(out_dir, spec)
        if changed == []:
            return out_dir
        if changed:
            raise ValueError(f"{out_dir} holds a default model built with other bootstrap settings "
                             f"({'; '.join(changed)}); rebuild it with `leapfrog bootstrap --task {task_name} "
                             f"--seed {seed} --force` (force=True), or build into another directory")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    task = load_task(task_name)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    train = task.examples("train", min(20_000, getattr(task, "max_train_pool", 20_000)), seed=seed)
    test = task.examples("test", spec.eval_size, seed=10_000 + seed)
    corpus = [ex.prompt + task.reference_completion(ex, rng) for ex in train[:5000]]
    tokenizer = train_tokenizer(corpus, spec.vocab_size)
    model = build_model(spec, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.sft_lr, betas=(0.9, 0.99), weight_decay=0.0)
    engine = HFEngine(model=model, tokenizer=tokenizer)
    encoder = PromptEncoder(tokenizer, chat_template="never")
    scorer = Scorer.for_job([], task, task.max_new_tokens)
    started, accuracy, step = time.time(), 0.0, 0
    history = []
    with Progress(TextColumn("bootstrap {task.fields[name]}"), BarColumn(), TextColumn("step {task.completed:.0f}"),
                  TextColumn("held-out acc {task.fields[acc]:.3f}"), TimeElapsedColumn(), disable=not progress) as bar:
        job = bar.add_task("sft", total=spec.sft_steps, name=task_name, acc=0.0)
        while step < spec.sft_steps:
            model.train()
            idx = [rng.randrange(len(train)) for _ in range(spec.sft_batch_size)]
            ids, mask, labels = sft_batch(task, tokenizer, [train[i] for i in idx], rng)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % spec.eval_every == 0 or step == spec.sft_steps:
                accuracy = greedy_accuracy(engine, scorer, test, encoder, task.max_new_tokens)
                history.append({"step": step, "loss": float(loss.detach()), "accuracy": accuracy})
                bar.update(job, completed=step, acc=accuracy)
            else:
                bar.update(job, completed=step)
    low, high = spec.accuracy_band
    if not low <= accuracy <= high:
        raise RuntimeError(f"bootstrap of {task_name!r} ended at {accuracy:.3f} greedy held-out accuracy after "
                           f"{spec.sft_steps} steps, outside the band {spec.accuracy_band} where RL has room; "
                           f"change sft_steps")
    report = {"spec": spec_fields(spec), "spec_hash": spec_hash(spec), "sft_steps": step,
              "heldout_accuracy": accuracy, "parameters": sum(p.numel() for p in model.parameters()),
              "seconds": time.time() - started, "history": history}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))  # unique per build
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model cache is readable like any other directory
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / BOOTSTRAP_RECORD).write_text(json.dumps(report, indent=2))
        install(tmp, out_dir, spec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def install(tmp: Path, out_dir: Path, spec: BootstrapSpec) -> None:
    """Move a finished build into place by renames: a directory already at out_dir (force, or an unfinished one) is
    replaced, unless a concurrent build of the same spec put it there first (then it is kept, tmp discarded)."""
    try:
        tmp.rename(out_dir)
    except OSError:
        if spec_mismatch(out_dir, spec) == []:
            return
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(old / out_dir.name)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
