"""Reward-model and PPO losses.

PPO tensors are (batch, response_len) with a `mask` that is 1/True on response tokens (bool or 0/1
float); reward-model tensors are (batch,) scalar rewards.
"""

import torch
import torch.nn.functional as F

from rlhf.rl.advantages import masked_mean


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Pairwise reward-model loss: -log P(chosen beats rejected) under the Bradley-Terry model.

    With d = chosen - rejected - margin and smoothing eps:
        loss = -(1 - eps) * log sigmoid(d) - eps * log sigmoid(-d)
    The margin (Llama 2) asks for a larger reward gap on pairs rated as clearly different; label smoothing
    hedges against a fraction eps of flipped preference labels. `F.logsigmoid` stays finite for large |d|,
    where log(sigmoid(d)) would underflow to log(0).

    Args:
        chosen, rejected: (batch,) rewards.
        margin: (batch,) or None (no margin).
        label_smoothing: eps in [0, 0.5).

    Returns:
        Scalar mean loss.
    """
    d = chosen - rejected
    if margin is not None:
        d = d - margin
    loss = -(1 - label_smoothing) * F.logsigmoid(d) - label_smoothing * F.logsigmoid(-d)
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


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate loss (Schulman et al. 2017), per token.

    ratio = exp(logprobs - old_logprobs); loss = masked mean of max(-A * ratio, -A * clip(ratio, 1 - eps,
    1 + eps)). Taking the max of the two losses (min of the objectives) is pessimistic: moving the ratio
    beyond the clip range in the direction the advantage rewards earns nothing, so it has zero gradient,
    while moves that make things worse are never clipped away.

    Args:
        logprobs: (batch, response_len) under the current policy (carries gradient).
        old_logprobs: (batch, response_len) under the policy that sampled the tokens.
        advantages: (batch, response_len).
        mask: (batch, response_len).
        clip_range: eps.

    Returns:
        (loss, clipfrac): scalar loss; scalar fraction of valid tokens with |ratio - 1| > eps.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean(((ratio - 1).abs() > clip_range).to(ratio.dtype), mask).detach()
    return loss, clipfrac


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value-head loss as in PPO2 / TRL.

    v_clipped = old + clamp(v - old, -c, c); loss = 0.5 * masked mean of max((v - R)^2, (v_clipped - R)^2).
    The max keeps the value head from gaining by jumping further than c from its old prediction.

    Args:
        values: (batch, response_len) current predictions (carry gradient).
        old_values: (batch, response_len) predictions at rollout time.
        returns: (batch, response_len) targets.
        mask: (batch, response_len).
        clip_range_value: c.

    Returns:
        (loss, clipfrac): scalar loss; scalar fraction of valid tokens where the clipped error is the
        larger one (strictly).
    """
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask).detach()
    return loss, clipfrac
