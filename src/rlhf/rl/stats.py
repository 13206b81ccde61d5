"""Masked statistics: mean, variance, whitening and explained variance over the positions a mask selects.

Conventions: `mask` has the shape of `x` and is 1/True where a value counts, 0/False on padding. A float mask
is treated as 0/1 (nonzero = valid), not as weights. Values outside the mask never reach a result: they are
selected away with `torch.where` rather than multiplied by 0, because `inf * 0` is `nan` and padding may hold
anything.

Cross-process statistics: `masked_whiten` takes an optional `all_reduce`, a callable that returns the SUM of a
tensor over all processes (e.g. a wrapper around `torch.distributed.all_reduce(op=SUM)`, supplied by the
caller: `rl/` itself never touches the process group). With it, every process whitens with the statistics of
the masked positions of all processes' tensors, so P processes x B/P rows give what 1 process x B rows gives.
"""

from collections.abc import Callable

import torch

# Added to the variance before the square root so a constant batch does not divide by zero.
WHITEN_EPS = 1e-8

AllReduce = Callable[[torch.Tensor], torch.Tensor]


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


def _reduced_mean_var(
    x: torch.Tensor, mask: torch.Tensor, all_reduce: AllReduce
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of the masked positions of `x` on ALL processes, in float64.

    mean = sum_p sum(x) / sum_p count;  var = sum_p sum((x - mean)^2) / max(count - 1, 1)  (Bessel, skipped
    for a single value as in `masked_var`). Two reductions, the second over deviations from the global mean,
    because sum(x^2) - count * mean^2 cancels catastrophically when the mean is large next to the spread.

    Args:
        x: any shape (this process's part).
        mask: same shape as `x`, bool or 0/1 float.
        all_reduce: returns the sum of a tensor over processes; called twice, on every process in the same
            order (it is a collective).

    Returns:
        (mean, var): float64 scalars on `x.device`; nan for a mask that is empty on every process.
    """
    valid = mask.bool()
    zero = torch.zeros_like(x)
    # float64: a count of millions of tokens and their sum must survive the reduction exactly enough.
    stats = torch.stack([torch.where(valid, x, zero).sum().double(), valid.sum().double()])
    total, count = all_reduce(stats).to(x.device).unbind()
    mean = total / count
    sq = all_reduce(torch.where(valid, (x.double() - mean) ** 2, zero.double()).sum()).to(x.device)
    return mean, sq / torch.clamp(count - 1, min=1)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, all_reduce: AllReduce | None = None
) -> torch.Tensor:
    """Normalise `x` to unit variance (and zero mean) using statistics of the masked positions only.

    whitened = (x - mean) / sqrt(var + 1e-8) with the unbiased masked variance (TRL's convention). With
    `shift_mean=False` the mean is added back (whitened + mean), so `x` is only rescaled; TRL does this for
    rewards, whose sign carries meaning.

    Args:
        x: any shape.
        mask: same shape as `x`, bool or 0/1 float.
        shift_mean: subtract the mean (True) or keep it (False).
        all_reduce: None for this tensor's own statistics; else a callable summing a tensor over processes,
            and mean and variance are those of the masked positions of all processes' tensors (reduced in
            float64, see `_reduced_mean_var`). Every process must call this together.

    Returns:
        Same shape and dtype as `x`; 0 at every position outside the mask.
    """
    if all_reduce is None:
        mean = masked_mean(x, mask)
        var = masked_var(x, mask)
    else:
        # Statistics in float64, the whitening itself in x's dtype, like the single-process path.
        mean64, var64 = _reduced_mean_var(x, mask, all_reduce)
        mean, var = mean64.to(x.dtype), var64.to(x.dtype)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


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
