"""Per-token KL penalties and advantage estimators: GAE, discounted returns, GRPO, RLOO, REINFORCE++.

Conventions: every tensor is (batch, response_len) unless stated otherwise, and `mask` is 1/True on the
response tokens that count and 0/False on padding. A float mask is treated as 0/1 (nonzero = valid),
not as weights. Values outside the mask never reach a result: they are selected away with
`torch.where` rather than multiplied by 0, because `inf * 0` is `nan` and padding may hold anything.

Group estimators (GRPO, RLOO) see G samples per prompt as consecutive rows: rows [0, G) are one prompt's,
rows [G, 2G) the next one's, and so on. `ADVANTAGES` maps a name to an estimator with one common signature,
so the PPO loop can switch between them with a flag. The masked statistics live in `rl.stats` and are
re-exported here for older imports.
"""

from collections.abc import Callable

import torch

from rlhf.rl.stats import (
    WHITEN_EPS,
    AllReduce,
    _reduced_mean_var,
    explained_variance,
    masked_mean,
    masked_var,
    masked_whiten,
)

__all__ = [
    "ADVANTAGES",
    "KL_KINDS",
    "SCALE_REWARDS",
    "WHITEN_EPS",
    "discounted_returns",
    "explained_variance",
    "gae",
    "grpo_advantages",
    "kl_penalty",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "rloo_advantages",
]

KL_KINDS = ("k1", "k2", "k3", "abs")

SCALE_REWARDS = ("group", "batch", "none")

# Added to a standard deviation before dividing by it (TRL's GRPO value), so a near-constant group does not
# blow its tiny differences up to huge advantages.
GRPO_EPS = 1e-4


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


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted reward-to-go of every response token (REINFORCE's return, no value baseline).

    G_t = r_t + gamma * G_{t'}, with t' the next valid token after t and G = 0 after the last one; i.e.
    G_t = sum_{s >= t, s valid} gamma^(k(s) - k(t)) r_s with k counting valid tokens only. Masked-out positions
    are skipped as if removed from the sequence, as in `gae`.

    Args:
        rewards, mask: (batch, response_len); mask bool or 0/1 float.
        gamma: discount factor.

    Returns:
        (batch, response_len), detached, 0 outside the mask.
    """
    valid = mask.bool()
    rewards = rewards.detach()
    zeros = torch.zeros_like(rewards[:, 0])
    next_return = zeros  # G of the next *valid* token; 0 past the end
    returns_reversed = []
    for t in reversed(range(rewards.shape[1])):
        valid_t = valid[:, t]
        g = rewards[:, t] + gamma * next_return
        # A masked position leaves the running return untouched, so its reward never leaks in.
        next_return = torch.where(valid_t, g, next_return)
        returns_reversed.append(torch.where(valid_t, g, zeros))
    return torch.stack(returns_reversed[::-1], dim=1)


def _groups(scores: torch.Tensor, group_size: int, name: str) -> torch.Tensor:
    """scores (N,) as (N / G, G), one prompt's samples per row; ValueError when N is not a multiple of G."""
    if group_size < 1:
        raise ValueError(f"{name}: group_size must be >= 1, got {group_size}")
    if scores.dim() != 1 or scores.numel() % group_size != 0:
        raise ValueError(
            f"{name}: {scores.numel()} scores (shape {tuple(scores.shape)}) do not split into groups of "
            f"group_size={group_size}; the batch must hold whole groups, one prompt's samples in consecutive rows"
        )
    return scores.reshape(-1, group_size)


def grpo_advantages(
    scores: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = GRPO_EPS
) -> torch.Tensor:
    """Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath, eq. for outcome supervision).

    For sample i of group g: A_i = (r_i - mean_g) / (std_g + eps), std_g the sample standard deviation
    (Bessel's correction, torch.std's default), as TRL's GRPOTrainer._generate_and_score_completions. With
    `scale_by_std=False`, A_i = r_i - mean_g only (Dr. GRPO, Liu et al. 2025: dividing by std_g up-weights
    prompts that are nearly always solved or always failed).

    A group whose scores are all equal carries no signal and gets exactly 0 - also for group_size 1, where
    torch's std of one sample is nan. (Exact, because the float mean of equal values can miss them by an ulp,
    which 1 / eps = 1e4 would turn into a visible advantage.)

    Args:
        scores: (N,) one scalar reward per sample, the G samples of a prompt in consecutive positions.
        group_size: G; N must be a multiple of it.
        scale_by_std: divide by std_g + eps (GRPO) or only centre (Dr. GRPO).
        eps: added to std_g.

    Returns:
        (N,) advantages.

    Raises:
        ValueError: N is not a multiple of group_size.
    """
    groups = _groups(scores, group_size, "grpo")
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std and group_size > 1:  # one sample has no std; its advantage is 0 below anyway
        advantages = advantages / (groups.std(dim=1, keepdim=True) + eps)
    constant = groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)
    return torch.where(constant, torch.zeros_like(advantages), advantages).reshape(-1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, "Back to Basics").

    A_i = r_i - (1 / (G - 1)) * sum_{j != i in the group} r_j: each sample's baseline is the mean of the other
    samples of its prompt, which does not depend on the sample itself, so the gradient stays unbiased.

    Args:
        scores: (N,) one scalar reward per sample, the G samples of a prompt in consecutive positions.
        group_size: G >= 2; N must be a multiple of it.

    Returns:
        (N,) advantages.

    Raises:
        ValueError: G < 2, or N is not a multiple of G.
    """
    if group_size < 2:
        raise ValueError(
            f"rloo: group_size={group_size}; RLOO needs at least 2 samples per prompt (its baseline is the "
            "mean of the other samples of the prompt)"
        )
    groups = _groups(scores, group_size, "rloo")
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


def _sequence_scores(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """s_b = sum_t mask * r_t: (B, N) per-token rewards -> (B,) one reward per sequence."""
    return torch.where(mask.bool(), rewards, torch.zeros_like(rewards)).sum(dim=1)


def _broadcast(per_sequence: torch.Tensor, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, N): the sequence's value on each of its masked tokens, 0 elsewhere."""
    per_token = per_sequence.to(like.dtype).unsqueeze(1).expand_as(like)
    return torch.where(mask.bool(), per_token, torch.zeros_like(like))


def _gae_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    values: torch.Tensor | None = None,
    *,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_rewards: str = "group",
    all_reduce: AllReduce | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PPO's estimator: `gae` with the value model, advantages whitened over the (global) batch's masked
    tokens (TRL PPOTrainer). Returns (advantages, returns). group_size and scale_rewards are unused."""
    if values is None:
        raise ValueError("gae needs a value model; use --value-model separate|shared or another --advantage")
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    return masked_whiten(advantages, mask, all_reduce=all_reduce), returns


def _reinforce_pp_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    values: torch.Tensor | None = None,
    *,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_rewards: str = "group",
    all_reduce: AllReduce | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """REINFORCE++ (Hu 2025; OpenRLHF `get_cumulative_returns` then batch whitening): A_t =
    whiten(discounted_returns(r, gamma))_t over the masked tokens of the (global) batch. No critic: returns
    None. values, group_size, lam and scale_rewards are unused."""
    returns = discounted_returns(rewards, mask, gamma)
    return masked_whiten(returns, mask, all_reduce=all_reduce), None


def _grpo_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    values: torch.Tensor | None = None,
    *,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_rewards: str = "group",
    all_reduce: AllReduce | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GRPO (Shao et al. 2024; TRL GRPOTrainer._generate_and_score_completions) on s_b = sum_t mask * r_t, broadcast to
    every masked token of sequence b. scale_rewards (TRL's names):
      "group": (s - mean_g) / (std_g + 1e-4);
      "batch": (s - mean_g) / (std_batch + 1e-4), std_batch over all B sequences (of all processes when
               all_reduce is given; Bessel's correction);
      "none":  s - mean_g (Dr. GRPO, Liu et al. 2025).
    Groups never span processes, so only "batch" reduces. No critic: returns None. values, gamma and lam are
    unused (the sequence reward is undiscounted)."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; valid: {', '.join(SCALE_REWARDS)}")
    s = _sequence_scores(rewards, mask)
    advantages = grpo_advantages(s, group_size, scale_by_std=scale_rewards == "group")
    if scale_rewards == "batch":
        _, var = _reduced_mean_var(s, torch.ones_like(s, dtype=torch.bool), all_reduce or (lambda t: t))
        advantages = advantages / (var.sqrt().to(s.dtype) + GRPO_EPS)
    return _broadcast(advantages, mask, rewards), None


def _rloo_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    values: torch.Tensor | None = None,
    *,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_rewards: str = "group",
    all_reduce: AllReduce | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RLOO (Ahmadian et al. 2024) on s_b = sum_t mask * r_t, broadcast to every masked token of sequence b.
    No critic: returns None. values, gamma, lam, scale_rewards and all_reduce are unused (the baseline is
    within the group, which never spans processes)."""
    return _broadcast(rloo_advantages(_sequence_scores(rewards, mask), group_size), mask, rewards), None


# name -> fn(rewards (B, N), mask (B, N), values (B, N) | None = None, *, group_size=1, gamma=1.0, lam=0.95,
#            scale_rewards="group", all_reduce=None) -> (advantages (B, N), returns (B, N) | None).
# `rewards` are the assembled per-token rewards (`rl.rewards.per_token_rewards`); rows of one group consecutive;
# returns is None for the estimators without a critic (no value loss then).
ADVANTAGES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor | None]]] = {
    "gae": _gae_advantages,
    "grpo": _grpo_advantages,
    "rloo": _rloo_advantages,
    "reinforce++": _reinforce_pp_advantages,
}
