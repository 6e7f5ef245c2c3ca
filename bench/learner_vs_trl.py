"""Seconds per RL step: our learner vs TRL 1.16's GRPOTrainer on the same model, task, batch and LoRA config.

Both sample with HF transformers on CPU (ours: rollout/engines/hf.py; TRL: model.generate), score with the same
verifier, and take one AdamW step per batch (mu = 1, beta = 0, loss_type dapo, lr equal, LoRA r=8/alpha=16 on
all 7 projections, temperature 1.0, max_new_tokens = the task's). A step = generation + scoring + optimizer step.
Both run `--steps` timed steps after `--warmup` untimed ones, one after the other in this process. With a chat
task (sums) both apply the model's chat template to the same messages (TRL's conversational prompts).

    .venv/bin/python bench/learner_vs_trl.py [--prompts 64] [--group 8] [--steps 10]
    .venv/bin/python bench/learner_vs_trl.py --model smollm2-135m-instruct --task sums --prompts 16 --group 4 --steps 3
Last line: JSON with ours_s_per_step, trl_s_per_step, speedup_vs_trl (= trl / ours) and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")


def ours(model_dir, task, examples, args) -> float:
    from learner.algorithms import GRPO
    from learner.config import GRPOConfig, LoraConfig, ModelConfig
    from learner.learner import Learner
    from rollout.engines.base import SamplingParams
    from rollout.engines.hf import HFEngine
    from rollout.prompts import PromptEncoder, stop_token_ids

    cfg = GRPOConfig(lr=args.lr, loss_type="dapo", lora=LoraConfig(r=8, alpha=16))
    learner = Learner(model_dir, ModelConfig(device="cpu"), cfg, seed=0, total_steps=args.warmup + args.steps,
                      max_new_tokens=task.max_new_tokens)
    engine = HFEngine(model=learner.model, tokenizer=learner.tokenizer, stop_ids=stop_token_ids(learner.tokenizer,
                                                                                               model_dir))
    encoder = PromptEncoder(learner.tokenizer, "auto", model_dir=model_dir)
    stamps = []
    for step in range(args.warmup + args.steps):
        batch_examples = examples[step * args.prompts:(step + 1) * args.prompts]
        groups = engine.generate(encoder.ids(batch_examples),
                                 SamplingParams(n=args.group, max_new_tokens=task.max_new_tokens, seed=step))
        rewards = [task.score(ex, c.text) for ex, g in zip(batch_examples, groups, strict=True) for c in g]
        learner.step(GRPO(cfg).make_batch(groups, rewards))
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[args.warmup - 1]) / args.steps


def trl(model_dir, task, examples, args) -> float:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer


    by_prompt = {ex.prompt_key: ex for ex in examples}

    def text(completion) -> str:  # conversational completions are [{"role": "assistant", "content": ...}]
        return completion if isinstance(completion, str) else completion[-1]["content"]

    def key(prompt) -> str:
        return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)

    def reward(prompts, completions, **kwargs):
        return [task.score(by_prompt[key(p)], text(c)) for p, c in zip(prompts, completions, strict=True)]

    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    n_steps = args.warmup + args.steps
    dataset = Dataset.from_dict({"prompt": [ex.prompt for ex in examples[:n_steps * args.prompts]]})
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_strategy="no",
            per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
            gradient_accumulation_steps=1, num_iterations=1, max_completion_length=task.max_new_tokens,
            temperature=1.0, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, beta=0.0,
            loss_type="dapo", max_steps=n_steps, shuffle_dataset=False, seed=0, adam_beta2=0.99,
            weight_decay=0.0, max_grad_norm=1.0, model_init_kwargs={"dtype": "float32"}, disable_tqdm=True)
        trainer = GRPOTrainer(
            model=str(model_dir), reward_funcs=reward, args=config, train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                       "gate_proj", "up_proj", "down_proj"],
                                   task_type="CAUSAL_LM"),
            callbacks=[Clock()])
        trainer.train()
    return (stamps[-1] - stamps[args.warmup - 1]) / args.steps


def main() -> None:
    import torch

    from learner.bootstrap import bootstrap
    from learner.models import resolve_model
    from rollout.tasks import load_task

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model dir, .gguf file or registered name (default: the bootstrapped "
                                        "arith model)")
    parser.add_argument("--task", default="arith", help="task of the batch (sums: chat prompts for instruct models)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model_dir = resolve_model(args.model) if args.model else bootstrap("arith", 0, progress=False)
    task = load_task(args.task)
    examples = task.examples("train", (args.warmup + args.steps) * args.prompts, seed=0)
    ours_s = ours(model_dir, task, examples, args)
    print(f"ours: {ours_s:.3f} s/step", flush=True)
    trl_s = trl(model_dir, task, examples, args)
    print(f"TRL 1.16 GRPOTrainer: {trl_s:.3f} s/step", flush=True)
    print(f"speed-up vs TRL: {trl_s / ours_s:.2f}x  ({args.prompts} prompts x {args.group}, {args.steps} timed steps)")
    print(json.dumps({"ours_s_per_step": round(ours_s, 4), "trl_s_per_step": round(trl_s, 4),
                      "speedup_vs_trl": round(trl_s / ours_s, 3), "prompts": args.prompts, "group": args.group,
                      "steps": args.steps, "max_new_tokens": task.max_new_tokens, "model": str(model_dir),
                      "task": task.name}))


if __name__ == "__main__":
    main()
