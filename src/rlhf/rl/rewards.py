"""From reward-model scores to the rewards PPO optimises: per-sequence score shaping and per-token rewards.

Scores are (batch,) one scalar per sequence; per-token tensors are (batch, response_len) with a
`response_mask` that is 1/True on response tokens (bool or 0/1 float).
"""

import torch


def _last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last True position of each row of `mask` (B, N); N - 1 for a row with none.

    Searched from the right, so it is right for any layout (True prefix then False, holes, no padding).
    """
    n = mask.size(1)
    # argmax returns the first maximum: in the flipped row that is the last True of the original row.
    return n - 1 - mask.bool().long().flip(1).argmax(1)


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of RLHF PPO (Ziegler et al. 2019; TRL): a KL penalty on every token, the score at the end.

    non_score_t = -kl_coef * kl_t on response tokens (0 on padding);
    r_t = non_score_t + score * [t == last response token of the row].
    The score goes on the last True position of each row: the EOS, or the last column when generation was
    cut off. A row with an empty mask gets it on the last column.

    Args:
        scores: (B,) one reward-model score per sequence.
        kl: (B, N) per-token KL estimate (`kl_penalty`); padding may hold anything.
        response_mask: (B, N) bool or 0/1 float.
        kl_coef: beta.

    Returns:
        (rewards, non_score_reward), each (B, N), 0 on padding except where the score lands.
    """
    valid = response_mask.bool()
    penalty = -kl_coef * kl
    # where, not * mask: padding may hold inf, and inf * 0 is nan.
    non_score = torch.where(valid, penalty, torch.zeros_like(penalty))
    rewards = non_score.clone()
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, _last_true_index(valid)] += scores
    return rewards, non_score


def missing_eos_penalty(scores: torch.Tensor, finished: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract a fixed penalty from the score of every sequence that did not end with EOS (TRL's
    `missing_eos_penalty`): s'_b = s_b - penalty * [not finished_b]. Discourages truncated answers.

    Args:
        scores: (B,).
        finished: (B,) bool, True where the sequence ended with EOS.
        penalty: >= 0 normally.

    Returns:
        (B,).
    """
    return scores - penalty * (~finished.bool()).to(scores.dtype)


def normalize_scores(
    scores: torch.Tensor, mean: float | None, std: float | None, clip: float
) -> torch.Tensor:
    """Standardise reward-model scores with fixed statistics, then clip:
    s' = clamp((s - mean) / max(std, 1e-6), -clip, clip).

    The statistics are fixed (measured once, e.g. on the reward model's training data), not batch ones, so
    a score means the same thing at every step.

    Args:
        scores: (B,).
        mean: None to skip standardising.
        std: scale; None (with a mean) only shifts. Floored at 1e-6 so a degenerate std cannot blow up.
        clip: clamp to [-clip, clip] when > 0; 0 (or less) leaves scores unclipped.

    Returns:
        (B,).
    """
    if mean is not None:
        scores = (scores - mean) / max(1.0 if std is None else std, 1e-6)
    return scores.clamp(-clip, clip) if clip > 0 else scores


def weighted_scores(parts: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Multi-objective score sum_i w_i * s_i of several reward models' scores.

    Args:
        parts: k tensors, each (B,).
        weights: k floats.

    Returns:
        (B,).

    Raises:
        ValueError: the lists differ in length, or are empty.
    """
    if len(parts) != len(weights):
        raise ValueError(f"{len(parts)} reward scores but {len(weights)} weights")
    if not parts:
        raise ValueError("weighted_scores needs at least one score")
    return sum(w * s for w, s in zip(weights, parts, strict=True))


ENSEMBLE_REDUCTIONS = ("mean", "min", "mean-minus-std")


def ensemble_std(scores: torch.Tensor) -> torch.Tensor:
    """The members' disagreement on each sequence: the population std across K members,
    sqrt(1/K * sum_k (s_k - mean)^2) (0 for one member, never nan).

    Args:
        scores: (K, B), member k's scores in row k.

    Returns:
        (B,).
    """
    return scores.std(0, correction=0)


def reduce_ensemble(scores: torch.Tensor, how: str = "mean", lam: float = 1.0) -> torch.Tensor:
    """One score per sequence from K reward models' scores (each already normalised with its own statistics).

    - "mean": (1/K) sum_k s_k.
    - "min": min_k s_k: worst-case optimisation (WCO, Coste et al. 2023), no hyperparameter.
    - "mean-minus-std": mean - lam * std, std the population std across members (`ensemble_std`): the
      uncertainty penalty of Eisenstein et al. 2023's "mean minus std" (lam = 1). Coste et al.'s UWO subtracts
      lam * variance instead; on normalised scores (std ~ 1) the two rank alike where members mostly agree.
    With K = 1 every reduction returns the one member's scores unchanged.

    Args:
        scores: (K, B).
        how: one of ENSEMBLE_REDUCTIONS.
        lam: the weight of the std ("mean-minus-std" only), >= 0.

    Returns:
        (B,).

    Raises:
        ValueError: an unknown `how`, or scores that are not (K, B) with K >= 1.
    """
    if how not in ENSEMBLE_REDUCTIONS:
        raise ValueError(f"unknown ensemble reduction {how!r}; one of {', '.join(ENSEMBLE_REDUCTIONS)}")
    if scores.dim() != 2 or scores.size(0) < 1:
        raise ValueError(f"ensemble scores must be (K, B) with K >= 1, got shape {tuple(scores.shape)}")
    if scores.size(0) == 1:
        return scores[0]
    if how == "mean":
        return scores.mean(0)
    if how == "min":
        return scores.min(0).values
    return scores.mean(0) - lam * ensemble_std(scores)
