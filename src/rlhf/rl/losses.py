"""Reward-model and PPO losses, and how per-token losses become one scalar.

PPO tensors are (batch, response_len) with a `mask` that is 1/True on response tokens (bool or 0/1
float); reward-model tensors are (batch,) scalar rewards.
"""

import torch
import torch.nn.functional as F

from rlhf.rl.stats import masked_mean

LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pairwise reward-model loss: -log P(chosen beats rejected) under the Bradley-Terry model.

    With d = chosen - rejected - margin and smoothing eps:
        loss = -(1 - eps) * log sigmoid(d) - eps * log sigmoid(-d)
    The margin (Llama 2) asks for a larger reward gap on pairs rated as clearly different; label smoothing
    hedges against a fraction eps of flipped preference labels. `F.logsigmoid` stays finite for large |d|,
    where log(sigmoid(d)) would underflow to log(0).

    Args:
        chosen, rejected: (batch,) rewards, or (K, batch) for K heads on one trunk (a shared-trunk ensemble).
        margin: (batch,) or None (no margin).
        label_smoothing: eps in [0, 0.5).
        weights: None, or per-pair weights shaped like `chosen` (e.g. each head's bootstrap counts): the loss is
            then mean(weights * loss), a weight of 2 counting a pair twice, 0 leaving it out.

    Returns:
        Scalar mean loss (over heads and pairs).
    """
    d = chosen - rejected
    if margin is not None:
        d = d - margin
    loss = -(1 - label_smoothing) * F.logsigmoid(d) - label_smoothing * F.logsigmoid(-d)
    if weights is not None:
        loss = loss * weights
    return loss.mean()


def center_rewards_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Auxiliary loss mean((chosen + rejected)^2) that pulls rewards towards zero mean.

    The Bradley-Terry loss only sees differences, so the reward offset drifts freely; this pins it
    (Eisenstein et al. 2023). The caller multiplies by its coefficient (0.01 recommended).

    Args:
        chosen, rejected: (batch,) rewards.

    Returns:
        Scalar.
    """
    return ((chosen + rejected) ** 2).mean()


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_agg: str = "token-mean",
    num_tokens: int | torch.Tensor | None = None,
    num_rows: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar over the masked tokens.

    With T = num_tokens (default sum(mask)), R = num_rows (default B), N = per_token.size(1), m = mask:
      "token-mean":              sum_{b,t} m l / T  (every token weighs the same; long answers weigh more);
      "seq-mean-token-mean":     sum_b [sum_t m l / sum_t m] / R  (every sequence weighs the same; a row with
                                 an empty mask contributes 0);
      "seq-mean-token-sum-norm": sum_{b,t} m l / (R * N)  (Dr. GRPO, Liu et al. 2025: a constant normaliser,
                                 so no length bias).
    Every aggregate is a sum of per-row terms over a constant, so a caller that splits one minibatch into
    micro-batches (or over processes) and passes the WHOLE minibatch's T and R to every part gets losses, and
    gradients, that sum to the unsplit loss exactly.

    Args:
        per_token: (B, N) loss per token; padding may hold anything (selected away, never multiplied by 0).
        mask: (B, N) bool or 0/1 float.
        loss_agg: one of LOSS_AGGS.
        num_tokens: T for "token-mean"; None uses this mask's count.
        num_rows: R for the "seq-mean-*" modes; None uses B.

    Returns:
        Scalar. "token-mean" of an empty mask (with num_tokens None) is nan, as `masked_mean`.

    Raises:
        ValueError: unknown loss_agg.
    """
    valid = mask.bool()
    masked = torch.where(valid, per_token, torch.zeros_like(per_token))
    if loss_agg == "token-mean":
        return masked.sum() / (valid.sum() if num_tokens is None else num_tokens)
    rows = per_token.size(0) if num_rows is None else num_rows
    if loss_agg == "seq-mean-token-mean":
        # clamp: an empty row is 0 / 1 = 0 instead of 0 / 0.
        row_means = masked.sum(dim=1) / valid.sum(dim=1).clamp(min=1)
        return row_means.sum() / rows
    if loss_agg == "seq-mean-token-sum-norm":
        return masked.sum() / (rows * per_token.size(1))
    raise ValueError(f"unknown loss_agg {loss_agg!r}; valid: {', '.join(LOSS_AGGS)}")


def _clipped_sides(
    ratio: torch.Tensor, clip_range: float, clip_range_high: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(below, above): ratio < 1 - low, ratio > 1 + high, tested on ratio - 1 so the symmetric case is the
    exact |ratio - 1| > eps of before."""
    high = clip_range if clip_range_high is None else clip_range_high
    d = ratio - 1
    return d < -clip_range, d > high


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    clip_range_high: float | None = None,
    loss_agg: str = "token-mean",
    num_tokens: int | torch.Tensor | None = None,
    num_rows: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate loss (Schulman et al. 2017), per token, then aggregated.

    ratio = exp(logprobs - old_logprobs); l_t = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps_low,
    1 + eps_high)); loss = aggregate_loss(l, mask, loss_agg, num_tokens, num_rows). Taking the max of the two
    losses (min of the objectives) is pessimistic: moving the ratio beyond the clip range in the direction the
    advantage rewards earns nothing, so it has zero gradient, while moves that make things worse are never
    clipped away. eps_high > eps_low is DAPO's clip-higher (Yu et al. 2025): more room to raise the
    probability of unlikely tokens with A > 0, against entropy collapse.

    Args:
        logprobs: (batch, response_len) under the current policy (carries gradient).
        old_logprobs: (batch, response_len) under the policy that sampled the tokens.
        advantages: (batch, response_len).
        mask: (batch, response_len).
        clip_range: eps_low (and eps_high when clip_range_high is None).
        clip_range_high: eps_high; None for the symmetric clip.
        loss_agg, num_tokens, num_rows: see `aggregate_loss`.

    Returns:
        (loss, clipfrac): scalar loss; scalar fraction of this call's valid tokens with the ratio outside
        [1 - eps_low, 1 + eps_high] (a detached diagnostic, a plain masked mean whatever loss_agg is).
    """
    high = clip_range if clip_range_high is None else clip_range_high
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + high)
    loss = aggregate_loss(torch.maximum(unclipped, clipped), mask, loss_agg, num_tokens, num_rows)
    below, above = _clipped_sides(ratio, clip_range, clip_range_high)
    clipfrac = masked_mean((below | above).to(ratio.dtype), mask).detach()
    return loss, clipfrac


def clip_ratio_regions(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    clip_range_high: float | None = None,
) -> dict[str, torch.Tensor]:
    """Where the PPO clip actually removes gradient, as TRL GRPO's clip_ratio/{low,high,region}_mean.

    low = (ratio < 1 - eps_low) & (A < 0);  high = (ratio > 1 + eps_high) & (A > 0);  region = low | high.
    Outside these (e.g. ratio above range with A < 0) the unclipped term is the larger loss and still has a
    gradient, so `clipfrac` over-counts what the clip does; these count only the clipped-away tokens.

    Args:
        ratio: (batch, response_len) exp(logprobs - old_logprobs).
        advantages, mask: (batch, response_len).
        clip_range: eps_low (and eps_high when clip_range_high is None).
        clip_range_high: eps_high; None for the symmetric clip.

    Returns:
        {"low_mean", "high_mean", "region_mean"}: detached scalar masked means of the three indicators.
    """
    below, above = _clipped_sides(ratio, clip_range, clip_range_high)
    low = below & (advantages < 0)
    high = above & (advantages > 0)
    return {
        name: masked_mean(flag.to(ratio.dtype), mask).detach()
        for name, flag in (("low_mean", low), ("high_mean", high), ("region_mean", low | high))
    }


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Approximate KL between the old and current policy: masked mean of 0.5 * (logprobs - old)^2.

    This is TRL's `policy/approxkl_avg`; a diagnostic for how far one PPO epoch moved the policy.

    Args:
        logprobs, old_logprobs, mask: (batch, response_len).

    Returns:
        Scalar.
    """
    return masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask)


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
    num_tokens: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value-head loss as in PPO2 / TRL.

    v_clipped = old + clamp(v - old, -c, c); loss = 0.5 * sum_t m max((v - R)^2, (v_clipped - R)^2) / T, with
    T = num_tokens (default: this mask's count; pass the whole minibatch's to split it, see `aggregate_loss`).
    The max keeps the value head from gaining by jumping further than c from its old prediction.

    Args:
        values: (batch, response_len) current predictions (carry gradient).
        old_values: (batch, response_len) predictions at rollout time.
        returns: (batch, response_len) targets.
        mask: (batch, response_len).
        clip_range_value: c.
        num_tokens: T; None uses sum(mask).

    Returns:
        (loss, clipfrac): scalar loss; scalar fraction of valid tokens where the clipped error is the
        larger one (strictly).
    """
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * aggregate_loss(torch.maximum(loss_unclipped, loss_clipped), mask, num_tokens=num_tokens)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask).detach()
    return loss, clipfrac


DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses of DPO and its relatives, from summed response log-probs.

    With z = (pi_c - pi_r) - (ref_c - ref_r) (the implicit reward margin over beta) and smoothing eps:
      "sigmoid": -(1 - eps) * log sigmoid(beta z) - eps * log sigmoid(-beta z)   (DPO, Rafailov et al. 2023;
                 eps > 0 is cDPO: labels assumed flipped with probability eps)
      "ipo":     (z - 1 / (2 beta))^2   (Azar et al. 2023; TRL's IPO averages log-probs over tokens by default,
                 this takes whatever log-probs it is given - sums from `rlhf dpo`)
      "hinge":   relu(1 - beta z)   (SLiC, Zhao et al. 2023)
      "robust":  (-(1 - eps) log sigmoid(beta z) + eps log sigmoid(-beta z)) / (1 - 2 eps)   (Chowdhury et al.
                 2024: unbiased under label flips with probability eps)
    The reference is a constant: its log-probs are detached.

    Args:
        policy_chosen_logps, policy_rejected_logps: (N,) summed log-probs under the policy (carry gradient).
        ref_chosen_logps, ref_rejected_logps: (N,) the same under the frozen reference.
        beta: strength of the implicit KL leash.
        loss_type: one of DPO_LOSS_TYPES.
        label_smoothing: eps in [0, 0.5).

    Returns:
        (losses, chosen_rewards, rejected_rewards), each (N,): rewards beta (pi - ref), detached (metrics).

    Raises:
        ValueError: unknown loss_type; label_smoothing outside [0, 0.5) for "robust".
    """
    ref_c, ref_r = ref_chosen_logps.detach(), ref_rejected_logps.detach()
    z = (policy_chosen_logps - policy_rejected_logps) - (ref_c - ref_r)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * z) - eps * F.logsigmoid(-beta * z)
    elif loss_type == "ipo":
        losses = (z - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * z)
    elif loss_type == "robust":
        if not 0 <= eps < 0.5:
            raise ValueError(f"robust DPO needs label_smoothing in [0, 0.5), got {eps}")
        losses = (-(1 - eps) * F.logsigmoid(beta * z) + eps * F.logsigmoid(-beta * z)) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(DPO_LOSS_TYPES)}")
    chosen_rewards = (beta * (policy_chosen_logps - ref_c)).detach()
    rejected_rewards = (beta * (policy_rejected_logps - ref_r)).detach()
    return losses, chosen_rewards, rejected_rewards


def simpo_loss(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, beta: float = 2.0, gamma: float = 0.5
) -> torch.Tensor:
    """SimPO (Meng et al. 2024), per pair: -log sigmoid(beta (c - r) - gamma), no reference model.

    c and r are length-normalised (per-token mean) log-probs. `gamma` is the target margin itself (TRL's CPO
    trainer writes it as gamma_beta_ratio * beta).

    Args:
        chosen_avg_logps, rejected_avg_logps: (N,).

    Returns:
        (N,) losses.
    """
    return -F.logsigmoid(beta * (chosen_avg_logps - rejected_avg_logps) - gamma)
