"""The learner across devices: N ranks of one torch.distributed process group (gloo on CPU, NCCL on CUDA) that act
as one learner (docs/architecture.md#learner-group).

Every rank gets the whole step's batch and splits it the same way: the batch's micro-batches (learner.micro_batch_size
sequences each, the unit of gradient accumulation) go to the ranks in contiguous blocks, block r to rank r. Each
micro-batch's loss is normalised by the whole batch's counts (num_sequences, num_tokens, B x max_completion_length:
learner/losses.py), and bnpo's local token mean is a micro-batch's own, so the micro-batch losses sum to the whole
batch's loss whatever rank computes them, and the SUM of the ranks' gradients is the gradient one rank would compute
on the whole batch:

    g = sum_r sum_{k in block r} grad L_k          (one rank: sum_k grad L_k, the same terms)

ddp: every rank holds a replica; after the backward passes the gradients are all-reduced (SUM), so the replicas take
the same optimizer step and stay equal. fsdp: FSDP2's `fully_shard` on each decoder layer and the root; its
reduce-scatter sums (gradient divide factor 1) and each rank steps its own shard. FSDP's forward passes are
collectives, so under fsdp every rank runs as many micro-batches as the largest block: a short block repeats its
first micro-batch (or micro-batch 0) with loss weight 0.
"""

from __future__ import annotations

import torch

SHARDINGS = ("none", "ddp", "fsdp")


class ShardedForward(torch.nn.Module):
    """The FSDP2 root: the policy's log-prob functions (learner/policy.py) run inside its forward, so FSDP gathers the
    parameters outside the decoder layers (embeddings, final norm, the tied output head) for them and reduces their
    gradients, although those functions call the decoder body and the head separately."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        out = fn(self.model, *args, **kwargs)  # copies, not views: FSDP hooks the outputs for the backward pass
        return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()


def resharded(module: torch.nn.Module) -> None:
    """Every FSDP unit in `module` back to its shards: the root keeps its parameters gathered after a forward pass
    without backward (a no-grad scoring pass), and state-dict reads and writes expect the sharded DTensors."""
    from torch.distributed.fsdp import FSDPModule

    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


def block(num_items: int, world_size: int, rank: int) -> range:
    """Rank `rank`'s contiguous block of range(num_items): sizes differ by at most one, the larger blocks first."""
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def micro_batch_plan(num_micro: int, world_size: int, rank: int, lockstep: bool) -> list[tuple[int, float]]:
    """(micro-batch index, loss weight) pairs this rank runs: its block with weight 1; with lockstep (fsdp), padded to
    the largest block's length with weight-0 repeats so that every rank runs the same number of forward passes."""
    mine = [(k, 1.0) for k in block(num_micro, world_size, rank)]
    if lockstep:
        longest = len(block(num_micro, world_size, 0))
        filler = mine[0][0] if mine else 0
        mine += [(filler, 0.0)] * (longest - len(mine))
    return mine


class LearnerGroup:
    """This process's place in the learner group: rank, world size and sharding; one rank (`LearnerGroup()`) makes
    every collective a no-op."""

    def __init__(self, rank: int = 0, world_size: int = 1, sharding: str = "none", address: str | None = None,
                 device_type: str = "cpu"):
        """address: tcp://host:port of rank 0's rendezvous (every rank gives the same); joins the process group."""
        if sharding not in SHARDINGS:
            raise ValueError(f"unknown sharding {sharding!r}; valid: {', '.join(SHARDINGS)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a group of {world_size}")
        self.rank, self.world_size, self.sharding, self.device_type = rank, world_size, sharding, device_type
        if world_size > 1:
            import torch.distributed as dist

            if address is None:
                raise ValueError("a learner group of several ranks needs the rendezvous address tcp://host:port")
            if device_type == "cuda":  # one device per rank (under Ray each rank sees its own GPU only)
                torch.cuda.set_device(rank % torch.cuda.device_count())
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method=address, rank=rank,
                                        world_size=world_size)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def fsdp(self) -> bool:
        return self.sharding == "fsdp"

    @property
    def writes(self) -> bool:
        """Rank 0 writes checkpoints, published weights and leaps."""
        return self.rank == 0

    def plan(self, num_micro: int) -> list[tuple[int, float]]:
        return micro_batch_plan(num_micro, self.world_size, self.rank, lockstep=self.fsdp)

    def shard(self, model: torch.nn.Module) -> ShardedForward | None:
        """fsdp: fully_shard each decoder layer, then the root, a ShardedForward around the model, over all ranks
        (gradients summed, not averaged); the model's parameters become DTensor shards. Returns the root, through
        which every forward pass must go. Other shardings: None (the model is called as it is)."""
        if not self.fsdp:
            return None
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device_type, (self.world_size,))
        for module in model.modules():
            layers = getattr(module, "layers", None)
            if isinstance(layers, torch.nn.ModuleList):
                for layer in layers:
                    fully_shard(layer, mesh=mesh).set_gradient_divide_factor(1.0)
        root = fully_shard(ShardedForward(model), mesh=mesh)
        root.set_gradient_divide_factor(1.0)
        return root

    def reduce_gradients(self, params: list[torch.Tensor]) -> None:
        """ddp: every parameter's gradient <- the SUM over ranks (a rank that ran no micro-batch adds zeros), in one
        flat all-reduce. fsdp already reduced them in the backward pass; one rank has nothing to do."""
        if not self.distributed or self.fsdp:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        at = 0
        for p in params:
            p.grad.copy_(flat[at:at + p.numel()].view_as(p.grad))
            at += p.numel()

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (float64)."""
        if not self.distributed:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device_type)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def full_state(self, root: ShardedForward) -> dict[str, torch.Tensor] | None:
        """fsdp: the state dict of the policy under `root` (shard's return), whole and on the CPU, named as in the
        policy, on rank 0 (None on the others); a collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        resharded(root)
        state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k.removeprefix("model."): v for k, v in state.items()} if self.writes else None

    def load_full_state(self, root: ShardedForward, state: dict[str, torch.Tensor]) -> None:
        """fsdp: set the named parameters of `state` (full tensors named as in the policy, every rank gives the
        same) on the shards of the policy under `root` (shard's return)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        resharded(root)
        set_model_state_dict(root, {f"model.{k}": v for k, v in state.items()},
                             options=StateDictOptions(full_state_dict=True, strict=False))

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
