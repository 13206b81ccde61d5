"""The on-policy update every algorithm shares (PPO, GRPO, RLOO, REINFORCE++): K epochs over one rollout batch in M
shuffled minibatches, each split into micro-batches for gradient accumulation.

Per micro-batch: the clipped surrogate [D15] (clip-higher, loss aggregation), the KL term when --kl-in loss, an
entropy bonus, the clipped value loss [D16] when there is a value model. Every term of a micro-batch is normalised
by its whole minibatch's token and row counts (over every process under torchrun), so the summed gradients do
not depend on how a minibatch is split into micro-batches or processes (tests/test_onpolicy.py).
"""

from __future__ import annotations

import math

import torch

from rlhf.concurrent import run_concurrently
from rlhf.config import PPOConfig
from rlhf.distributed import all_reduce_sum, world
from rlhf.models.policy_value import PolicyValue
from rlhf.rl import (
    aggregate_loss,
    approx_kl,
    clip_ratio_regions,
    entropy_from_logits,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
)
from rlhf.rollout import Experience
from rlhf.stages.common import autocast, clip_grads, non_finite


def loss_mask(exp: Experience, mask_truncated: bool) -> torch.Tensor:
    """(B, N) the response tokens that get a loss: all of them, or (--mask-truncated, DAPO's overlong masking) only
    those of completions that ended with EOS."""
    if not mask_truncated:
        return exp.response_mask
    return exp.response_mask & exp.finished.unsqueeze(1)


def ppo_update(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    exp: Experience,
    advantages: torch.Tensor,
    returns: torch.Tensor | None,
    cfg: PPOConfig,
    update: int,
    kl_coef: float,
) -> dict:
    """K epochs x M minibatches of optimizer steps on `exp`; returns the update's mean statistics.

    `exp.graph` (the rollout's forward with its graph, one minibatch, no accumulation, one process): the first
    epoch backpropagates through it instead of running the forward again.
    """
    B = exp.ids.size(0)
    mb = B // cfg.mini_batches
    micro = max(1, mb // cfg.optim.grad_accum)
    m_all = loss_mask(exp, cfg.mask_truncated)
    acc = {k: [] for k in ("pg", "vf", "kl", "pg_clip", "vf_clip", "approxkl", "ratio", "region")}
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(
            B, generator=torch.Generator().manual_seed(cfg.seed * 31 + update * 1009 + epoch)
        )
        if epoch == 0 and exp.graph is not None:
            assert mb == micro == B, (
                "the rollout's forward is the first epoch's only when it is one minibatch"
            )
            perm = torch.arange(B)  # the order the forward ran in (one minibatch: the loss is the same)
        for start in range(0, B, mb):
            mb_idx = perm[start : start + mb]
            # The minibatch's counts over every process: each micro-batch's loss is its part of the whole.
            num_tokens = m_all[mb_idx].sum()
            if world() > 1:  # DDP averages gradients over processes: T / W makes that average the global loss
                num_tokens = all_reduce_sum(num_tokens.double()).to(num_tokens.device) / world()
            num_tokens = num_tokens.clamp(min=1)  # no token gets a loss (all masked): the loss is 0, not 0/0
            num_rows = len(mb_idx)  # equal on every process
            parts = {"pg": 0.0, "vf": 0.0, "kl": 0.0}
            for ms in range(0, len(mb_idx), micro):
                i = mb_idx[ms : ms + micro]
                outputs = exp.graph if epoch == 0 else None
                stats = micro_batch_backward(
                    model, exp, advantages, returns, m_all, i, num_tokens, num_rows, cfg, kl_coef, outputs
                )
                for k in parts:
                    parts[k] += stats.pop(k)
                if m_all[i].any():  # a micro-batch without loss tokens has no ratio to report
                    for k, v in stats.items():
                        acc[k].append(v)
            bad = [k for k, v in parts.items() if not math.isfinite(v)]
            if world() > 1:  # every process stops together (a lone stop would leave the others waiting)
                bad = bad or (["other process's"] if float(all_reduce_sum(float(bool(bad)))) else [])
            if bad:  # checked before the step: the weights stay finite
                what = {"pg": "policy loss", "vf": "value loss", "kl": "KL loss"}.get(bad[0], "loss")
                raise non_finite(cfg.stage, f"{what} ({parts.get(bad[0])})", update + 1, cfg.out)
            for k, v in parts.items():
                acc[k].append(v)
            # A finite loss can still give a non-finite gradient (an overflow in the backward): checked too, on
            # the norm every process shares after DDP's all-reduce (one foreach kernel when not clipping).
            if not math.isfinite(clip_grads(model, cfg.optim.grad_clip)):
                raise non_finite(cfg.stage, "gradient norm", update + 1, cfg.out)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def avg(k):
        return sum(acc[k]) / len(acc[k]) if acc[k] else float("nan")

    row = {
        "policy/approxkl_avg": avg("approxkl"),
        "policy/clipfrac_avg": avg("pg_clip"),
        "clip_ratio/region_mean": avg("region"),
        "loss/policy_avg": avg("pg"),
        "val/ratio": avg("ratio"),
    }
    if returns is not None:
        row |= {"loss/value_avg": avg("vf"), "val/clipfrac_avg": avg("vf_clip")}
    if cfg.kl_in == "loss" and kl_coef > 0:
        row["loss/kl_avg"] = avg("kl")
    return row


def micro_batch_backward(
    model: torch.nn.Module,
    exp: Experience,
    advantages: torch.Tensor,
    returns: torch.Tensor | None,
    m_all: torch.Tensor,
    i: torch.Tensor,
    num_tokens: torch.Tensor,
    num_rows: int,
    cfg: PPOConfig,
    kl_coef: float,
    outputs: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> dict:
    """Backward of the loss on rows `i` (normalised by the minibatch's `num_tokens` / `num_rows`); its stats.

    Loss = clipped surrogate [D15] + kl_coef * agg(kl_t) (--kl-in loss) - entropy_coef * entropy
    + vf_coef * clipped value loss [D16]. `outputs`: the rows' (logits, values) at the response, already computed
    with their graph (else a forward runs here).
    """
    m = m_all[i]
    old = exp.logprobs[i]
    dev = exp.ids.device

    def policy_loss(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(loss term, pg_loss, kl_loss, pg_clip, logprobs) from the logits (B, N, V) at the response."""
        logprobs = logprobs_from_logits(logits, exp.targets[i], cfg.temperature)
        pg_loss, pg_clip = ppo_policy_loss(
            logprobs,
            old,
            advantages[i],
            m,
            cfg.cliprange,
            cfg.cliprange_high,
            cfg.loss_agg,
            num_tokens,
            num_rows,
        )
        loss, kl_loss = pg_loss, torch.zeros(())
        if (
            cfg.kl_in == "loss" and kl_coef > 0
        ):  # GRPO: beta * agg(kl_t), its gradient through the policy's logprobs
            kl_t = kl_penalty(logprobs, exp.ref_logprobs[i], cfg.kl_estimator)
            kl_loss = aggregate_loss(kl_t, m, cfg.loss_agg, num_tokens, num_rows)
            loss = loss + kl_coef * kl_loss
        if cfg.entropy_coef > 0:
            entropy = entropy_from_logits(logits, cfg.temperature)
            loss = loss - cfg.entropy_coef * aggregate_loss(entropy, m, "token-mean", num_tokens)
        return loss, pg_loss, kl_loss, pg_clip, logprobs

    if outputs is None and isinstance(model, PolicyValue):
        outputs = model.forward_concurrently(
            exp.ids[i], exp.mask[i], exp.positions[i], lambda: autocast(cfg.dtype, dev)
        )
    elif outputs is None:  # a DDP-wrapped model: its own forward, which prepares the gradient sync
        with autocast(cfg.dtype, dev):
            outputs = model(exp.ids[i], exp.mask[i], exp.positions[i])
    p_loss, pg_loss, kl_loss, pg_clip, logprobs = policy_loss(outputs[0])
    vf_loss = vf_clip = None
    if returns is not None:
        vf_loss, vf_clip = ppo_value_loss(
            outputs[1].float(), exp.values[i], returns[i], m, cfg.cliprange_value, num_tokens
        )
        v_loss = cfg.vf_coef * vf_loss
    if returns is not None and isinstance(model, PolicyValue) and model.runs_concurrently:
        # Separate policy and value models share no parameter: their backward passes are independent and run
        # side by side on the CPU cores (rlhf.concurrent), with the same gradients as one summed loss.
        run_concurrently(lambda: p_loss.backward(), lambda: v_loss.backward())
    elif returns is not None:  # a shared trunk, DDP or FSDP (one backward, which syncs the gradients)
        (p_loss + v_loss).backward()
    else:
        p_loss.backward()
    with torch.no_grad():
        ratio = torch.exp(logprobs - old)
        regions = clip_ratio_regions(ratio, advantages[i], m, cfg.cliprange, cfg.cliprange_high)
        return {
            "pg": float(pg_loss),
            "kl": float(kl_loss),
            "vf": float(vf_loss) if vf_loss is not None else 0.0,
            "pg_clip": float(pg_clip),
            "vf_clip": float(vf_clip) if vf_clip is not None else 0.0,
            "approxkl": float(approx_kl(logprobs, old, m)),
            "ratio": float(masked_mean(ratio, m)),
            "region": float(regions["region_mean"]),
        }
