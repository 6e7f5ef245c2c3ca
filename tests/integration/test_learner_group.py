"""The learner group (learner/distributed.py): 2 ranks on gloo, each a Learner in its own process, compute on a split
batch the gradient 1 rank computes on the whole batch, for every loss type and aggregation, GSPO's sequence ratio,
the KL and entropy terms, Rank-GRPO's per-rank advantages and ratios (LoRA, ddp), and full-parameter training under
fsdp (float64, 1e-10 relative). The batch's 14 sequences in micro-batches of 3 make 5 micro-batches, 3 on rank 0
and 2 on rank 1 (the last one short), so the split is uneven in micro-batches and in sequences."""

from __future__ import annotations

import random

import pytest
import torch

from learner.distributed import block, micro_batch_plan
from tests.conftest import free_port

pytestmark = pytest.mark.integration

NUM_SEQ, MICRO, GROUP = 14, 3, 2


def test_blocks_cover_every_item_once_and_fsdp_ranks_run_in_lockstep():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            blocks = [block(n, world, r) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
            plans = [micro_batch_plan(n, world, r, lockstep=True) for r in range(world)]
            assert len({len(p) for p in plans}) == 1  # every rank runs as many forward passes
            assert sorted(k for p in plans for k, w in p if w) == list(range(n))  # weight-1 entries: each once


def group_configs(sharding: str, world: int) -> list[tuple[str, object]]:
    from learner.config import GRPOConfig, RankGRPOConfig

    common = dict(micro_batch_size=MICRO, max_grad_norm=1e9, num_workers=world,
                  sharding=sharding if world > 1 else "none")
    if sharding == "fsdp":
        return [("full/dapo", GRPOConfig(loss_type="dapo", lora=None, **common)),
                ("full/grpo+kl", GRPOConfig(loss_type="grpo", lora=None, beta=0.05, **common)),
                ("lora/bnpo+kl", GRPOConfig(loss_type="bnpo", beta=0.04, **common))]
    cases = [(f"lora/{loss}", GRPOConfig(loss_type=loss, epsilon_high=5.0 if loss == "cispo" else None, **common))
             for loss in ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo")]
    cases += [("lora/gspo", GRPOConfig(loss_type="grpo", importance_sampling_level="sequence", **common)),
              ("lora/dapo+kl+entropy", GRPOConfig(loss_type="dapo", beta=0.04, kl_estimator="k3", entropy_coef=0.01,
                                                  **common)),
              ("lora/bnpo+kl", GRPOConfig(loss_type="bnpo", beta=0.04, **common)),
              ("rank_grpo", RankGRPOConfig(**common))]
    return cases


def group_batch(cfg, vocab: int):
    """A seeded batch of NUM_SEQ ragged sequences, with stale-looking sampling log-probs (the ratio is not 1: old
    log-probs are the engine's) and per-sequence or, for Rank-GRPO, per-token advantages and segments."""
    from learner.algorithms import ALGORITHMS, RolloutBatch

    rng = random.Random(7)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(3, 12))] for _ in range(NUM_SEQ)]
    completions = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 14))] for _ in range(NUM_SEQ)]
    sampling = [[-rng.uniform(1.0, 6.0) for _ in c] for c in completions]
    fields = dict(prompt_ids=prompts, completion_ids=completions, rewards=[rng.random() for _ in range(NUM_SEQ)],
                  group_size=GROUP, loss=ALGORITHMS.get(cfg.algorithm)(cfg).loss_settings, sampling_logprobs=sampling,
                  policy_version=-1)  # an older version sampled it: pi_old = the engine's log-probs
    if cfg.algorithm == "rank_grpo":
        segments = [sorted(rng.randrange(0, 3) for _ in c) for c in completions]
        return RolloutBatch(**fields, token_advantages=[[rng.gauss(0, 1) for _ in c] for c in completions],
                            segments=segments)
    return RolloutBatch(**fields, advantages=[rng.gauss(0, 1) for _ in range(NUM_SEQ)])


def group_gradients(model_dir, sharding: str, world: int, rank: int, address: str | None, scratch) -> dict:
    """{case: (the gradients the optimizer steps with, full tensors by name; the step's loss and grad norm; the
    leap figures)} on this rank. The leap figures: the batch's mean log-probs under the weights before the step swapped
    in from their published adapter, after the step, and after a leap back to those weights (all ranks take part under
    fsdp, where the weights are gathered and scattered)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    from learner.config import ModelConfig
    from learner.learner import Learner

    torch.set_num_threads(1)
    out = {}
    for name, cfg in group_configs(sharding, world):
        learner = Learner(model_dir, ModelConfig(device="cpu", dtype="float64"), cfg, seed=0, total_steps=4,
                          max_new_tokens=16, rank=rank, group_address=address)
        with torch.no_grad():  # LoRA's B starts at 0, which leaves A without gradient: move it, the same on every rank
            gen = torch.Generator().manual_seed(3)
            for n, p in learner.trainable.items():
                if "lora_B" in n:
                    moved = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05
                    p.copy_(distribute_tensor(moved, p.device_mesh, p.placements) if isinstance(p, DTensor) else moved)
        before, _ = learner.publish_weights(f"{scratch}/{name.replace('/', '-')}")
        learner.group.barrier()  # (ddp: rank 0 alone writes it; the runtimes call the other ranks after that)
        grads = {}

        def capture(optimizer, args, kwargs, learner=learner, grads=grads):
            for n, p in learner.trainable.items():
                assert p.grad is not None, (n, rank, world)
                g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                grads[n] = g.detach().clone()

        learner.optimizer.register_step_pre_hook(capture)
        batch = group_batch(cfg, len(learner.tokenizer))
        stats = learner.step(batch)
        texts = (batch.prompt_ids[:4], batch.completion_ids[:4])
        swapped, after = learner.mean_logprobs(*texts, adapter_path=before), learner.mean_logprobs(*texts)
        learner.apply_leap(before, horizon=1)
        out[name] = (grads, stats["loss"], stats["grad_norm"], (swapped, after, learner.mean_logprobs(*texts)))
    return out


def _rank_main(rank: int, model_dir, sharding: str, world: int, address: str, out_dir: str) -> None:
    torch.save(group_gradients(model_dir, sharding, world, rank, address, f"{out_dir}/adapters"),
               f"{out_dir}/rank{rank}.pt")
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def two_rank_gradients(model_dir, sharding: str, tmp_path) -> list[dict]:
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(model_dir, sharding, 2, f"tcp://127.0.0.1:{free_port()}", str(tmp_path)), nprocs=2)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


def assert_same_gradients(one: dict, two: dict) -> None:
    assert one.keys() == two.keys()
    for case, (g1, loss1, norm1, leap1) in one.items():
        g2, loss2, norm2, leap2 = two[case]
        assert g1.keys() == g2.keys() and g1, case
        moved = 0
        for name, a in g1.items():
            b = g2[name]
            scale = float(a.abs().max())
            assert float((a - b).abs().max()) <= 1e-10 * max(scale, 1e-30), (case, name, float((a - b).abs().max()))
            moved += scale > 0
        assert moved, case  # the gradients are not all zero
        assert abs(loss1 - loss2) <= 1e-10 * max(abs(loss1), 1e-12), (case, loss1, loss2)
        assert abs(norm1 - norm2) <= 1e-10 * norm1, (case, norm1, norm2)
        swapped, after, leapt = leap2
        for a, b in zip(leap1, leap2, strict=True):
            assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-10, (case, a, b)
        assert max(abs(x - y) for x, y in zip(swapped, leapt, strict=True)) <= 1e-12  # the leap lands on the weights
        assert swapped != after  # the step moved the policy, and the swap put it back afterwards


def test_two_ddp_ranks_give_the_one_rank_lora_gradients_for_every_loss(tiny_model_dir, tmp_path):
    ranks = two_rank_gradients(tiny_model_dir, "ddp", tmp_path)
    one = group_gradients(tiny_model_dir, "ddp", 1, 0, None, tmp_path / "one")
    assert_same_gradients(one, ranks[0])
    assert_same_gradients(ranks[0], ranks[1])  # the replicas step with the same gradients


def test_two_fsdp_ranks_give_the_one_rank_full_parameter_gradients(tiny_model_dir, tmp_path):
    ranks = two_rank_gradients(tiny_model_dir, "fsdp", tmp_path)
    one = group_gradients(tiny_model_dir, "fsdp", 1, 0, None, tmp_path / "one")
    assert_same_gradients(one, ranks[0])
    assert_same_gradients(ranks[0], ranks[1])


def test_learner_group_bench_prints_its_figures():
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    res = subprocess.run([sys.executable, "bench/learner_group.py", "--smoke", "--threads", "2"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(out["group"]["peak_rss_mb"]) == out["ranks"] == 2 and out["speedup"] > 0
    # float32: the same update, up to summation order
    assert out["max_loss_rel_diff"] <= 1e-5 and out["max_grad_norm_rel_diff"] <= 1e-4
