"""Masked statistics, per-token KL penalties and GAE.

Conventions: every tensor is (batch, response_len) unless stated otherwise, and `mask` is 1/True on the
response tokens that count and 0/False on padding. A float mask is treated as 0/1 (nonzero = valid),
not as weights. Values outside the mask never reach a result: they are selected away with
`torch.where` rather than multiplied by 0, because `inf * 0` is `nan` and padding may hold anything.
"""

import torch

# Added to the variance before the square root so a constant batch does not divide by zero.
WHITEN_EPS = 1e-8

KL_KINDS = ("k1", "k2", "k3", "abs")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is set.

    Args:
        x: any shape.
        mask: same shape as `x`, bool or 0/1 float.
        dim: reduce only this dimension; None reduces everything to a scalar.

    Returns:
        Scalar if `dim` is None, else `x.shape` without `dim`. An empty mask gives nan (0/0), on purpose:
        a mean of nothing should not silently read as 0.
    """
    valid = mask.bool()
    total = torch.where(valid, x, torch.zeros_like(x))
    if dim is None:
        return total.sum() / valid.sum()
    return total.sum(dim) / valid.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over the masked positions, as a scalar.

    Args:
        x: any shape.
        mask: same shape as `x`, bool or 0/1 float.
        unbiased: apply Bessel's correction n / (n - 1), as TRL does. With a single valid position the
            correction is skipped (the variance is then 0) instead of dividing by zero.

    Returns:
        Scalar tensor; nan for an empty mask.
    """
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        count = mask.bool().sum().to(variance.dtype)
        bessel = torch.where(count > 1, count / (count - 1), torch.ones_like(count))
        variance = variance * bessel
    return variance


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise `x` to unit variance (and zero mean) using statistics of the masked positions only.

    Computes (x - mean) / sqrt(var + 1e-8) with the unbiased masked variance (TRL's convention). With
    `shift_mean=False` the mean is added back, so `x` is only rescaled; TRL does this for rewards, whose
    sign carries meaning.

    Args:
        x: any shape.
        mask: same shape as `x`, bool or 0/1 float.
        shift_mean: subtract the mean (True) or keep it (False).

    Returns:
        Same shape as `x`; 0 at every position outside the mask.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs.

    With d = logprobs - ref_logprobs (tokens sampled from the policy), Schulman's estimators are:
      - "k1": d              (unbiased, high variance, can be negative)
      - "k2": d^2 / 2        (biased, low variance, >= 0)
      - "k3": e^(-d) - 1 + d (unbiased, low variance, >= 0)
      - "abs": |d|

    Args:
        logprobs, ref_logprobs: (batch, response_len).
        kind: one of "k1", "k2", "k3", "abs".

    Returns:
        (batch, response_len). Padding positions are not masked here; mask them where the values are used.

    Raises:
        ValueError: unknown `kind`.
    """
    d = logprobs - ref_logprobs
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        # expm1 keeps precision when d is near 0, where e^(-d) - 1 would cancel.
        return torch.expm1(-d) + d
    if kind == "abs":
        return d.abs()
    raise ValueError(f"unknown KL penalty kind {kind!r}; valid kinds: {', '.join(KL_KINDS)}")


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},   R_t = A_t + V_t,
    with V and A taken as 0 after the last valid token (the episode ends there).

    Masked-out positions are skipped as if removed from the sequence: their rewards and values never reach
    a valid position. For the usual right-padded rows (valid prefix, then zeros) this is exactly "the
    value after the last response token is 0".

    Args:
        rewards, values, mask: (batch, response_len); mask bool or 0/1 float.
        gamma: discount factor.
        lam: GAE lambda (bias/variance trade-off).

    Returns:
        (advantages, returns), each (batch, response_len), 0 outside the mask. Both are detached: they
        are regression/policy targets and must not carry gradient back into the value head.
    """
    valid = mask.bool()
    rewards = rewards.detach()
    values = values.detach()
    zeros = torch.zeros_like(values[:, 0])
    next_value = zeros  # V_{t+1} of the next *valid* token; 0 past the end
    next_adv = zeros  # A_{t+1} of the next valid token
    advantages_reversed = []
    for t in reversed(range(values.shape[1])):
        valid_t = valid[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        # At a masked position the running state passes through untouched, so nothing leaks.
        next_adv = torch.where(valid_t, adv_t, next_adv)
        next_value = torch.where(valid_t, values[:, t], next_value)
        advantages_reversed.append(torch.where(valid_t, adv_t, zeros))
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = torch.where(valid, advantages + values, torch.zeros_like(values))
    return advantages, returns


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How much of the variance of the returns the value head explains: 1 - Var(R - V) / Var(R).

    1 is a perfect fit, 0 is no better than predicting the mean, negative is worse than that.

    Args:
        values, returns, mask: (batch, response_len).

    Returns:
        Scalar float tensor; nan when the masked returns are constant (Var(R) == 0), where the ratio is
        undefined.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    ratio = var_residual / var_returns
    return torch.where(var_returns == 0, torch.full_like(ratio, float("nan")), 1 - ratio)
