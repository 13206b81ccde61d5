"""Pure helpers the stage trainers share: run set-up, optimizer + schedule, progress, text generation.

No base classes: each stage reads top to bottom and calls these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from rlhf import run_dir, stop
from rlhf.allocator import keep_freed_memory
from rlhf.checkpoint import (
    latest_resume,
    load_optimizer_state,
    load_resume,
    optimizer_state,
    prefixed,
    rng_state,
    save_resume,
    save_resume_sharded,
    set_rng_state,
    split_prefixed,
)
from rlhf.config import OptimConfig, RunConfig, TrainConfig
from rlhf.data.collate import encode_prompt, pad
from rlhf.data.tokenizer import Tokenizer
from rlhf.distributed import init as init_distributed
from rlhf.distributed import is_main, is_sharded, share, world
from rlhf.errors import UserError
from rlhf.generation import sample
from rlhf.models.build import load_state


def setup_run(cfg: RunConfig) -> Path:
    """Seed every RNG, set CPU threads, keep freed memory in the process (`rlhf.allocator`), create the output
    directory, join torchrun's processes (if launched by torchrun) and pick the device (`rlhf.distributed.device()`).

    Every rank gets the same seed, so fresh models start identical on every process.
    """
    keep_freed_memory()
    init_distributed(cfg.device, cfg.dist_timeout)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    # One run per directory (rlhf.run_dir); rank 0 decides and moves files, every rank gets its verdict.
    refusal = None
    if is_main():
        try:
            run_dir.claim(out, resume=getattr(cfg, "resume", False), overwrite=cfg.overwrite)
        except UserError as e:
            refusal = str(e)
    refusal = share(refusal)
    if refusal:
        raise UserError(refusal)
    return out


def config_dict(cfg) -> dict:
    """The fully resolved config as JSON-ready data (stored in every checkpoint's config.json)."""
    return json_ready(dataclasses.asdict(cfg))


def json_ready(obj):
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def adapt_for_training(model: nn.Module, cfg: TrainConfig) -> dict | None:
    """--gradient-checkpointing and --lora-rank applied to `model` in place; the LoRA spec for config.json, or None.

    Pass a reward/value model's trunk rather than the whole model, so its scalar head stays fully trained.
    """
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora_rank <= 0:
        return None
    from rlhf.models.lora import apply_lora

    return apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)


def autocast(dtype: str, device: torch.device | str = "cpu"):
    """The context for a forward pass at --dtype: bf16 autocast (matmuls in bfloat16, weights kept float32), or
    nothing for fp32. Losses, log-probs and advantages are computed from `.float()` outputs, outside it."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def make_optimizer(
    model: nn.Module, cfg: OptimConfig, lr_mult: dict[str, float] | None = None
) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases, LayerNorms and embeddings are not decayed, as in GPT-2).

    `lr_mult` maps a parameter-name prefix to a learning-rate multiplier (PPO: the value model learns faster).
    """
    lr_mult = lr_mult or {}
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.dim() >= 2 and "wte" not in name and "wpe" not in name
        mult = next((m for prefix, m in lr_mult.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((decay, mult), []).append(p)
    param_groups = [
        {"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr_mult": mult}
        for (decay, mult), ps in groups.items()
    ]
    # fused: one kernel for the whole update, ~5x faster than the per-parameter loop on CPU (1.5 vs 7.7 ms for
    # PPO's two 0.86M-parameter models, benchmarks/README.md) and as deterministic: a resumed run stays
    # bit-identical to a straight one (tests/test_checkpoint.py, test_sft.py, test_ppo.py).
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from 1 to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


def clip_grads(model: nn.Module, max_norm: float) -> float:
    """Clip the gradients' global L2 norm to `max_norm` (0: no clipping); returns the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif params:  # one foreach kernel, not a norm per parameter (SFT and the reward model log it every step)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    else:
        return 0.0
    # Sharded (FSDP) gradients give a DTensor norm: the global one is its full value.
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def progress(total: int, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        initial=initial,
        disable=not (enabled and is_main()),  # one bar, from rank 0, under torchrun
        file=sys.stderr,
        dynamic_ncols=True,
    )


def say(msg: str) -> None:
    """Status lines go to stderr so stdout stays clean for the final table / JSON (rank 0 only under torchrun)."""
    if is_main():
        print(msg, file=sys.stderr, flush=True)


@torch.inference_mode()
def generate_texts(
    model: nn.Module,
    tok: Tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    max_prompt_length: int,
    temperature: float,
    seed: int,
    batch_size: int = 64,
    top_k: int = 0,
    top_p: float = 1.0,
) -> list[dict]:
    """Sample one response per prompt; each result has `text`, `finished` (EOS produced) and `n_tokens`."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        ids, mask = pad([encode_prompt(tok, p, max_prompt_length)[0] for p in chunk], tok.pad_id, side="left")
        ids, mask = ids.to(device), mask.to(device)
        r = sample(model, ids, mask, max_new_tokens, tok.eos_id, tok.pad_id, temperature, top_k, top_p, gen)
        for row, m, fin in zip(r.response_ids, r.response_mask, r.finished):
            toks = row[m].tolist()
            out.append({"text": tok.decode(toks), "finished": bool(fin), "n_tokens": len(toks)})
    model.train(was_training)
    return out


def save_training_state(
    out: Path,
    step: int,
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra: dict | None = None,
) -> None:
    """A resume checkpoint: every trained model, optimizer state, RNG states, plus `extra` JSON (data position,
    KL controller, ...)."""
    tensors, rng_meta = rng_state()
    meta = {"rng": rng_meta, "optim": {}, "extra": extra or {}}
    if any(is_sharded(m) for m in models.values()):  # FSDP: every process writes its shards (call on all)
        from torch.distributed.checkpoint.state_dict import get_state_dict

        sharded = {}
        for name, m in models.items():
            sharded[f"model.{name}"], sharded[f"optim.{name}"] = get_state_dict(m, optimizers[name])
        save_resume_sharded(out, step, sharded, tensors, {**meta, "world": world()})
        return
    for name, m in models.items():
        tensors.update(prefixed(m.state_dict(), f"model.{name}"))
    for name, opt in optimizers.items():
        t, meta["optim"][name] = optimizer_state(opt, f"optim.{name}")
        tensors.update(t)
    save_resume(out, step, tensors, meta)


def end_of_step(
    name: str,
    out: Path,
    step: int,
    total: int,
    save_every: int,
    save_state: Callable[[], None] | None,
    every_rank: bool = False,
):
    """After optimizer step `step` of `total`: the periodic resume checkpoint, and - when SIGTERM / SIGINT asked the
    run to stop (rlhf.stop) - one now, then `stop.Stopped` naming it. Call it on every rank: rank 0 saves, or
    every rank when `every_rank` (sharded state: each writes its shards). `save_state` None: no checkpoint."""
    signum = stop.requested()
    due = signum or (save_every and step % save_every == 0 and step < total)
    if due and save_state is not None and (is_main() or every_rank):
        save_state()
    if signum:
        where = share(str(latest_resume(out)) if is_main() else None)  # after rank 0 wrote it
        raise stop.Stopped(
            signum,
            f"{name}: stopped by {stop.name(signum)} after step {step} of {total}; resume checkpoint: {where}",
        )


def non_finite(name: str, what: str, step: int, out: Path) -> UserError:
    """The one-line error that stops a diverged run, before its optimizer step: nothing of it was applied."""
    last = latest_resume(out)
    where = str(last) if last else "none yet - --save-every N writes one every N steps"
    return UserError(
        f"{name}: non-finite {what} at step {step} (last good checkpoint: {where}); lower --optim.lr or check "
        "the data and rewards for extreme values - nothing of this step was applied and no weights were saved"
    )


def restore_training_state(
    out: Path, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> tuple[int, dict] | None:
    """Load the newest resume checkpoint of `out` into the given models/optimizers: (step, extra) or None."""
    state = load_resume(out)
    if state is None:
        return None
    tensors, meta = state
    path = latest_resume(out)
    sharded = any(is_sharded(m) for m in models.values())
    if bool(meta.get("sharded")) != sharded or (sharded and meta.get("world") != world()):
        wrote = (
            f"--strategy fsdp with {meta.get('world')} processes" if meta.get("sharded") else "--strategy ddp"
        )
        raise UserError(
            f"{path}: written by a run with {wrote}; resume it the same way (resharding to another "
            "process count is not supported yet)"
        )
    if sharded:  # every process reads its own shards
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        for name, m in models.items():
            msd, osd = get_state_dict(m, optimizers[name])
            state_dicts = {f"model.{name}": msd, f"optim.{name}": osd}
            dcp.load(state_dicts, checkpoint_id=str(path / "shards"))
            set_state_dict(m, optimizers[name], model_state_dict=msd, optim_state_dict=osd)
        set_rng_state(tensors, meta["rng"])
        return meta["step"], meta["extra"]
    for name, m in models.items():
        load_state(m, split_prefixed(tensors, f"model.{name}"), out / "resume")
    for name, opt in optimizers.items():
        load_optimizer_state(opt, f"optim.{name}", tensors, meta["optim"][name])
    set_rng_state(tensors, meta["rng"])
    return meta["step"], meta["extra"]
