"""Calibration of a Bradley-Terry reward model: is sigma(r+ - r-) a trustworthy P(chosen preferred)?"""

from __future__ import annotations

import torch


def reliability_table(probs: torch.Tensor, outcomes: torch.Tensor, n_bins: int = 10) -> list[dict]:
    """Equal-width bins over [0, 1] of predicted probabilities.

    probs (N,): predicted P(event); outcomes (N,): 1 where the event happened. Each row: the bin's edges, mean
    prediction, observed frequency and count (empty bins are kept with count 0, so tables line up).
    """
    probs, outcomes = probs.double().flatten(), outcomes.double().flatten()
    idx = (probs * n_bins).long().clamp(0, n_bins - 1)  # p = 1.0 falls in the last bin
    rows = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        rows.append(
            {
                "bin": b,
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "predicted": float(probs[sel].mean()) if n else None,
                "observed": float(outcomes[sel].mean()) if n else None,
                "count": n,
            }
        )
    return rows


def expected_calibration_error(probs: torch.Tensor, outcomes: torch.Tensor, n_bins: int = 10) -> float:
    """ECE = sum over bins of (count / N) * |observed - predicted| (Guo et al. 2017)."""
    rows = reliability_table(probs, outcomes, n_bins)
    total = sum(r["count"] for r in rows)
    return (
        sum(r["count"] / total * abs(r["observed"] - r["predicted"]) for r in rows if r["count"])
        if total
        else 0.0
    )
