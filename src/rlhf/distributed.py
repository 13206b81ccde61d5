"""Many processes through `torchrun` (torch.distributed DDP), and the device each process runs on.

`torchrun --standalone --nproc-per-node 2 -m rlhf sft ...` starts two copies of the command with RANK, WORLD_SIZE
and LOCAL_RANK in their environment; `init()` (called by every command's set-up) joins them into one process group:
gloo on CPU, nccl on CUDA (each process on GPU LOCAL_RANK). Without those variables everything here is a no-op
for one process, so the stages read the same either way.

The stages' contract: `--batch-size` (PPO: `--rollout-batch`) is the GLOBAL batch. Every rank walks the same
global order and takes its slice of each global batch (`shard`); losses are scaled so that DDP's gradient mean is
exactly the one-process gradient; only rank 0 logs, saves and evaluates, and hands its summary to the others
(`share`).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import sys
import warnings
import weakref
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from rlhf.errors import UserError

T = TypeVar("T")

_device = torch.device("cpu")


# ------------------------------------------------------------------------------------------------ set-up
def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (cuda when a GPU is visible, else cpu) -> this process's device.

    Under torchrun each process takes GPU LOCAL_RANK, so N processes on one machine use N GPUs.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be one of cpu, cuda, auto; got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu (or auto)")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if local >= torch.cuda.device_count():
        raise UserError(
            f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s): start at most that many processes "
            "per node with --device cuda"
        )
    return torch.device("cuda", local)


def init(device: str = "auto", timeout: float = 1800.0) -> torch.device:
    """Join torchrun's process group when launched by torchrun, and pick this process's device (returned, and
    remembered for `device()`). Safe to call more than once (a demo runs several stages in one process).

    `timeout` (--dist-timeout) bounds every collective: when a process or a node dies, the others stop with an
    error after at most that long instead of waiting for ever.
    """
    global _device
    _device = resolve_device(device)
    if _device.type == "cuda":
        torch.cuda.set_device(_device)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        # gloo is the CPU backend; nccl needs every process on its own GPU (set above).
        dist.init_process_group(
            backend="nccl" if _device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout)
        )
        atexit.register(_shutdown)
    return _device


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_after_success() -> None:
    """End a process of a finished torchrun job now, skipping the interpreter's teardown (no-op without torchrun).

    With torch 2.13's gloo backend, 1 in 10 to 1 in 30 two-process jobs had a process aborted (SIGABRT, "terminate
    called without an active exception") by a C++ destructor during interpreter teardown, even after
    `destroy_process_group()` returned; torchrun then reports the finished job as failed (0 in 60 with this exit).
    Every output is written and closed by now.
    """
    if not dist.is_initialized():
        return
    _shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def lost_contact(e: BaseException) -> str | None:
    """What to tell the user when `e` is a collective that failed because another process died or timed out
    (gloo and NCCL raise RuntimeError / DistError with these texts), else None."""
    if not dist.is_initialized() or not isinstance(e, RuntimeError | dist.DistError):
        return None
    text = str(e)
    if "Timed out" in text or "timed out" in text or "Timeout" in text:
        why = "another process did not answer within --dist-timeout"
    elif "Connection closed by peer" in text or "Connection reset" in text or "Broken pipe" in text:
        why = "another process or node stopped (its connection closed)"
    elif isinstance(e, dist.DistError):
        why = "a collective failed"
    else:
        return None
    first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
    return f"rank {rank()}: {why}; check the other processes' logs for the cause ({first})"


def device() -> torch.device:
    """This process's device, as chosen by the last `init()` (cpu before any)."""
    return _device


def world() -> int:
    """Number of processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank, 0 .. world()-1 (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that logs, saves, evaluates and prints (rank 0)."""
    return rank() == 0


def barrier() -> None:
    if world() > 1:
        dist.barrier()


# ------------------------------------------------------------------------------------------------ data
def shard(items: Sequence[T]) -> tuple[list[T], bool]:
    """This rank's slice of one global batch: items rank, rank + world, ... (strided, so length-bucketed batches,
    sorted by length, give every rank similar lengths). Same order as one process, so 2 x b == 1 x 2b.

    Returns (local items, real). When the global batch has fewer items than processes, a rank with none gets the
    first item as a stand-in and real=False: it must still run forward and backward (every DDP all-reduce needs
    every rank) but multiply its loss by 0.
    """
    local = list(items[rank() :: world()])
    if local or not items:
        return local, True
    return [items[0]], False


# ------------------------------------------------------------------------------------------------ collectives
def all_reduce_sum(x: torch.Tensor | float) -> torch.Tensor:
    """Sum over all processes (a new tensor; a float comes back as a float64 tensor). Identity for one process."""
    t = torch.as_tensor(x, dtype=torch.float64 if not torch.is_tensor(x) else None).clone()
    if world() > 1:
        t = t.to(_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(x: torch.Tensor | float) -> torch.Tensor:
    """Mean over all processes (of equal-weight values, e.g. means over equal-size shards)."""
    return all_reduce_sum(x) / world()


def reduce_metrics(row: dict[str, float], sums: Sequence[str] = ()) -> dict[str, float]:
    """A metrics row averaged over processes in one all-reduce (keys in `sums` are summed instead: counts).

    Every rank must call it with the same keys. Non-numeric values pass through from this rank.
    """
    if world() == 1:
        return row
    keys = [k for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    if not keys:
        return row
    total = all_reduce_sum(torch.tensor([float(row[k]) for k in keys], dtype=torch.float64)).cpu()
    out = dict(row)
    for k, v in zip(keys, total.tolist()):
        value = v if k in sums else v / world()
        out[k] = int(round(value)) if isinstance(row[k], int) else value
    return out


def share(obj: T | None) -> T:
    """Rank 0's `obj` on every rank (e.g. the summary dict only rank 0 computed). Also a barrier."""
    if world() == 1:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------------------ models
class _Method(nn.Module):
    """Makes `forward` call another method of `inner` (DDP only synchronises gradients of work done through its
    own forward, so e.g. `ScalarModel.score` must run as the forward of the wrapped module)."""

    def __init__(self, inner: nn.Module, method: str):
        super().__init__()
        self.inner = inner
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.inner, self.method)(*args, **kwargs)


def wrap_ddp(model: nn.Module, method: str | None = None) -> nn.Module:
    """The module to run training forwards through: DDP (gradients averaged over processes in backward) when
    world > 1, else `model` itself. `method` names a method to run instead of `forward` (e.g. "score").

    Optimizer, checkpoints and generation keep using `model` (the same parameters, unwrapped).
    """
    module = _Method(model, method) if method else model
    if world() == 1 or is_sharded(model):  # FSDP reduces the gradients itself
        return module
    ids = [_device.index] if _device.type == "cuda" else None
    # Hugging Face trunks can compute layers no loss reads (BERT's pooler): their parameters get no gradient, and
    # DDP must then look for them every step. The built-in GPT uses every parameter, so it skips that search.
    hf = any(type(m).__module__.startswith("transformers.") for m in module.modules())
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=hf)


def no_sync(ddp_model: nn.Module, sync: bool):
    """Context for one micro-batch's backward: skip DDP's all-reduce (FSDP's reduce-scatter) unless `sync` (the
    step's last micro-batch), so gradient accumulation communicates once per optimizer step."""
    if sync:
        return contextlib.nullcontext()
    if isinstance(ddp_model, nn.parallel.DistributedDataParallel):
        return ddp_model.no_sync()
    root = ddp_model.inner if isinstance(ddp_model, _Method) else ddp_model
    if is_sharded(root):
        return _fsdp_no_sync(root)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# ------------------------------------------------------------------------------------------------ FSDP
# FSDP2 gathers a module's parameters in hooks around `forward`, so every other entry point the training forwards
# use must be registered too: the root's (a policy's `hidden`, a reward model's `score` / `score_pairs`), and the
# blocks' token path, `on_tokens` (the built-in GPT's transformer blocks are the modules that have one).
ROOT_METHODS = ("hidden", "score", "score_pairs")
BLOCK_METHOD = "on_tokens"


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: the built-in GPT's blocks (the modules with a token path), else a Hugging
    Face model's decoder / encoder layers (the classes its `_no_split_modules` names, as accelerate and TRL wrap)."""
    blocks = [m for m in model.modules() if hasattr(type(m), BLOCK_METHOD)]
    if blocks:
        return blocks
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or ())}
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_model(
    model: nn.Module, strategy: str, mixed_precision: bool = False, rank0_copy: bool = True
) -> nn.Module:
    """--strategy fsdp under torchrun: FSDP2 (`fully_shard`) on each transformer block and on the root, so each
    process holds 1/world of the parameters, gradients and optimizer state. Call it before building the optimizer
    (sharding replaces the parameters). No-op for ddp or without torchrun.

    `mixed_precision` (--dtype bf16): blocks compute in bfloat16 and gradients are reduced in float32, over float32
    sharded weights (FSDP's MixedPrecisionPolicy). Frozen LoRA bases shard like any weight (FSDP2 shards per
    parameter, so trainable and frozen parameters share a block).

    With `rank0_copy`, rank 0 keeps a plain copy of the model taken before sharding: `unsharded()` loads the
    gathered weights into it for what rank 0 does alone (evaluation, sampling, the checkpoint), so those paths stay
    as they are. A frozen model no one saves (the PPO reference) needs none.
    """
    if strategy != "fsdp" or not dist.is_initialized():  # torchrun with one process shards too (a GPU check)
        return model
    import copy

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    blocks = transformer_blocks(model)
    if not blocks:
        raise UserError(
            f"--strategy fsdp found no transformer blocks to shard in {type(model).__name__}; use --strategy ddp"
        )
    # Copied before sharding, so it holds plain tensors.
    plain = copy.deepcopy(model).eval() if rank0_copy and is_main() else None
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if mixed_precision else None,
        reduce_dtype=torch.float32 if mixed_precision else None,
    )
    # A Hugging Face model's `hidden` returns a view (GPT-2's last_hidden_state), which FSDP warns about in case
    # the caller writes into it in place; nothing here does (the gradients equal DDP's, tests/test_fsdp.py).
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for block in blocks:
        fully_shard(block, mp_policy=policy)
        if hasattr(type(block), BLOCK_METHOD):
            register_fsdp_forward_method(block, BLOCK_METHOD)
    fully_shard(model, mp_policy=policy)
    for name in ROOT_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    _rank0_copies[model] = plain
    return model


@contextlib.contextmanager
def gathered(*models: nn.Module | None):
    """Sharded models held whole on every process for the duration (generation; no-op for unsharded models).

    A rollout samples a different number of tokens on each process, so its forwards cannot each gather their
    block's weights (a collective every process must join equally often): the weights are gathered once here,
    kept through every forward (no reshard after forward, as FSDP's docs suggest for evaluation), and freed after.
    """
    roots = [m for m in models if m is not None and is_sharded(m)]
    if not roots:
        yield
        return
    from torch.distributed.fsdp import FSDPModule, fully_shard

    units = []
    for root in roots:
        # The first forward through an FSDP tree must be the root's: it decides the tree (generation would
        # otherwise start at a block, which would then take itself for a root). Decide it now.
        fully_shard.state(root)._lazy_init()
        units += [m for m in root.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()  # collective: every process gathers the same units in the same order
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()  # local: frees the gathered weights
            if unit not in roots:  # roots never reshard after forward (their weights serve the backward next)
                unit.set_reshard_after_forward(True, recurse=False)


# A sharded model -> rank 0's plain copy of it (None on the other ranks). Kept outside the module: a module set as
# an attribute would become a submodule, and be sharded and saved with it.
_rank0_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_sharded(model: nn.Module) -> bool:
    return model in _rank0_copies


def unsharded(model: nn.Module) -> nn.Module | None:
    """The model whole, for work rank 0 does alone: `model` itself unless sharded; sharded, the gathered weights
    in rank 0's copy (a collective: every process calls it at the same point; the others get None)."""
    if not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    copy = _rank0_copies[model]
    if copy is None:
        return None
    copy.load_state_dict(state)
    copy.train(model.training)
    return copy


def local_param_bytes(model: nn.Module) -> int:
    """Bytes of parameters this process holds (its shards under FSDP; everything under DDP)."""
    return sum(
        (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size() for p in model.parameters()
    )
