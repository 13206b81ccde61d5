"""Best-of-N sampling as a policy: draw N responses from the reference policy, keep the one the reward model scores
highest. No training; the classic baseline of the over-optimisation literature (Gao et al. 2022, Stiennon et al.
2020).

Its KL to the reference has the closed form `log N - (N-1)/N` only when no two responses can score the same
(a continuous reward distribution). A small policy repeats itself: identical responses score identically, and
best-of-N over a distribution with ties moves less mass, so its KL is lower - possibly far lower (Beirami et al.
2024, "Theoretical guarantees on the best-of-n alignment policy": the formula is an upper bound). These functions
measure it on a pool of M reference samples of one prompt, treating the pool as the reference distribution (each
sample 1/M; equal rewards one outcome), which is exact for that distribution and tends to the truth as M grows.
"""

from __future__ import annotations

import math

import torch


def best_of_n_kl_bound(n: int) -> float:
    """`log n - (n - 1) / n`: best-of-n's KL to the reference for a continuous reward (no ties); an upper bound."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def _groups(rewards: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, pi, inverse): per distinct reward value (ascending), the pool's mass q and best-of-n's mass pi; and each
    sample's group index."""
    if rewards.dim() != 1 or rewards.numel() == 0:
        raise ValueError(f"rewards must be a non-empty 1-D tensor, got shape {tuple(rewards.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _, inverse, counts = torch.unique(rewards.double(), sorted=True, return_inverse=True, return_counts=True)
    q = counts.double() / rewards.numel()
    cdf = q.cumsum(0).clamp(max=1.0)
    # The best of n draws has a reward <= v with probability F(v)^n, so exactly the value v with F(v)^n - F(v-)^n.
    pi = cdf**n - (cdf - q).clamp(min=0.0) ** n
    return q, pi, inverse


def best_of_n_weights(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """The probability that best-of-n, drawing n times with replacement from the pool `rewards` (M samples of one
    prompt, each 1/M), returns each sample. Samples with equal rewards share their value's mass equally (a tie
    is broken uniformly). Sums to 1; n = 1 gives 1/M each. Expectations under best-of-n (its gold score, length,
    hack rates) are these weights times the pool's values."""
    q, pi, inverse = _groups(rewards, n)
    counts = q * rewards.numel()
    return (pi / counts)[inverse]


def best_of_n_kl(rewards: torch.Tensor, n: int) -> float:
    """KL(best-of-n || pool) in nats, the pool `rewards` taken as the reference distribution: sum over distinct
    reward values of pi log(pi / q). Equals `best_of_n_kl_bound(n)` as M grows when rewards never tie; ties
    (repeated responses) make it smaller."""
    q, pi, _ = _groups(rewards, n)
    keep = pi > 0
    return float((pi[keep] * (pi[keep] / q[keep]).log()).sum())
