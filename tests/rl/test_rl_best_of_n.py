"""Best-of-N as a policy (`rlhf.rl.best_of_n`): its selection weights and its KL to the reference, by hand, against
the closed form log N - (N-1)/N where rewards never tie, and within sampling error of the exact KL where they do."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.rl.best_of_n import best_of_n_kl, best_of_n_kl_bound, best_of_n_weights


def test_weights_and_kl_by_hand():
    # Pool [1, 2], N = 2: the best of two draws is 1 only if both are 1: 1/4; else 2: 3/4.
    # KL = 1/4 ln(0.25 / 0.5) + 3/4 ln(0.75 / 0.5) = -0.173287 + 0.304099 = 0.130812.
    assert best_of_n_weights(torch.tensor([1.0, 2.0]), 2).tolist() == pytest.approx([0.25, 0.75])
    assert best_of_n_kl(torch.tensor([1.0, 2.0]), 2) == pytest.approx(0.130812, abs=1e-6)
    # A tie: pool [1, 1, 2] (the response scoring 1 sampled twice). F(1) = 2/3, so pi(1) = 4/9, shared by the two
    # samples (2/9 each), pi(2) = 1 - 4/9 = 5/9. KL = 4/9 ln((4/9)/(2/3)) + 5/9 ln((5/9)/(1/3))
    # = 4/9 (-0.405465) + 5/9 (0.510826) = -0.180207 + 0.283792 = 0.103585 - below the closed form 0.193147.
    assert best_of_n_weights(torch.tensor([1.0, 1.0, 2.0]), 2).tolist() == pytest.approx(
        [2 / 9, 2 / 9, 5 / 9]
    )
    assert best_of_n_kl(torch.tensor([1.0, 1.0, 2.0]), 2) == pytest.approx(0.103585, abs=1e-6)
    assert best_of_n_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    # N = 1 is the reference itself; a pool of one repeated response leaves best-of-N nothing to choose.
    assert best_of_n_weights(torch.tensor([3.0, 1.0, 2.0]), 1).tolist() == pytest.approx([1 / 3] * 3)
    assert best_of_n_kl(torch.tensor([3.0, 1.0, 2.0]), 1) == pytest.approx(0.0, abs=1e-12)
    assert best_of_n_kl(torch.full((5,), 0.7), 8) == pytest.approx(0.0, abs=1e-12)
    for bad in (torch.tensor([]), torch.zeros(2, 2)):
        with pytest.raises(ValueError):
            best_of_n_kl(bad, 2)
    with pytest.raises(ValueError):
        best_of_n_weights(torch.tensor([1.0]), 0)


@pytest.mark.parametrize("n", [1, 2, 4, 32])
def test_weights_sum_to_one_and_favour_higher_rewards(n):
    rewards = torch.randn(50, generator=torch.Generator().manual_seed(n))
    w = best_of_n_weights(rewards, n)
    assert float(w.sum()) == pytest.approx(1.0)
    order = rewards.argsort()
    assert torch.all(w[order].diff() >= -1e-12)  # a higher reward is never less likely to be kept


@pytest.mark.parametrize("n", [2, 4, 8, 32])
def test_kl_matches_the_closed_form_when_rewards_never_tie(n):
    # Distinct rewards: the pool's discretisation is the only gap (2.6e-3 at N = 32 with M = 128; 3e-6 at M = 4000).
    rewards = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    assert best_of_n_kl(rewards, n) == pytest.approx(best_of_n_kl_bound(n), abs=1e-4)
    assert best_of_n_kl(rewards[:128], n) == pytest.approx(best_of_n_kl_bound(n), abs=3e-3)


def test_kl_with_ties_is_measured_within_sampling_error_and_below_the_closed_form():
    # A reference with three responses, probabilities 0.5 / 0.3 / 0.2 and rewards 0 < 1 < 2. Exact best-of-2:
    # F = 0.5, 0.8, 1.0, so pi = 0.25, 0.64 - 0.25 = 0.39, 1 - 0.64 = 0.36;
    # KL = 0.25 ln(0.25/0.5) + 0.39 ln(0.39/0.3) + 0.36 ln(0.36/0.2) = -0.173287 + 0.102322 + 0.211603 = 0.140638.
    exact = 0.140638
    gen = torch.Generator().manual_seed(1)
    p = torch.tensor([0.5, 0.3, 0.2])
    estimates = torch.tensor(
        [best_of_n_kl(torch.multinomial(p, 2000, True, generator=gen).double(), 2) for _ in range(40)]
    )
    # Each pool of 2,000 draws is one measurement (sd ~0.0017 by simulation); the mean of 40 is within 3 standard
    # errors of the exact value, and every single one far below the closed form 0.193 that ignores ties.
    se = float(estimates.std()) / math.sqrt(len(estimates))
    assert abs(float(estimates.mean()) - exact) < 3 * se + 1e-4
    assert float(estimates.max()) < best_of_n_kl_bound(2) - 0.03
