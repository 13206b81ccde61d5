"""KL penalties and advantage estimators (GAE, discounted returns, GRPO, RLOO, REINFORCE++, ADVANTAGES),
checked against hand arithmetic."""

import inspect

import pytest
import torch

from rlhf.rl import (
    ADVANTAGES,
    discounted_returns,
    gae,
    grpo_advantages,
    kl_penalty,
    masked_whiten,
    rloo_advantages,
)


def test_kl_penalty_kinds() -> None:
    # d = logprobs - ref = [-0.5 - (-1), -2 - (-1)] = [0.5, -1]
    logprobs = torch.tensor([[-0.5, -2.0]])
    ref = torch.tensor([[-1.0, -1.0]])
    # k1 = d
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), torch.tensor([[0.5, -1.0]]))
    # k2 = d^2 / 2: 0.25 / 2 = 0.125, 1 / 2 = 0.5
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k2"), torch.tensor([[0.125, 0.5]]))
    # k3 = e^-d - 1 + d: e^-0.5 - 0.5 = 0.60653066 - 0.5 = 0.10653066; e^1 - 1 - 1 = e - 2 = 0.71828183
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"), torch.tensor([[0.10653066, 0.71828183]]))
    # abs = |d|
    torch.testing.assert_close(kl_penalty(logprobs, ref, "abs"), torch.tensor([[0.5, 1.0]]))


def test_kl_penalty_unknown_kind_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="k1, k2, k3, abs"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def test_gae_gamma_1_lam_095() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    # t=2: delta = 1 + 1 * 0 - 0.7 = 0.3           A2 = 0.3
    # t=1: delta = 0 + 0.7 - 0.6 = 0.1             A1 = 0.1 + 0.95 * 0.3 = 0.385
    # t=0: delta = 0 + 0.6 - 0.5 = 0.1             A0 = 0.1 + 0.95 * 0.385 = 0.46575
    # returns = A + V = [0.96575, 0.985, 1.0]
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    torch.testing.assert_close(adv, torch.tensor([[0.46575, 0.385, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.96575, 0.985, 1.0]]))


def test_gae_gamma_09_lam_05() -> None:
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[1.0, 2.0, 0.5]])
    # gamma * lam = 0.45
    # t=2: delta = 2 + 0.9 * 0 - 0.5 = 1.5          A2 = 1.5
    # t=1: delta = 0 + 0.9 * 0.5 - 2 = -1.55        A1 = -1.55 + 0.45 * 1.5 = -0.875
    # t=0: delta = 1 + 0.9 * 2 - 1 = 1.8            A0 = 1.8 + 0.45 * -0.875 = 1.40625
    # returns = [1.40625 + 1, -0.875 + 2, 1.5 + 0.5] = [2.40625, 1.125, 2.0]
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[1.40625, -0.875, 1.5]]))
    torch.testing.assert_close(ret, torch.tensor([[2.40625, 1.125, 2.0]]))


def test_gae_right_padded_rows_ignore_padding() -> None:
    big = 1e6
    rewards = torch.tensor([[0.0, 0.0, 1.0, big], [0.0, 1.0, big, big]])
    values = torch.tensor([[0.5, 0.6, 0.7, big], [0.5, 0.6, big, big]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # Row 0 is the 1x3 example above plus padding.
    # Row 1: t=1: delta = 1 + 0 - 0.6 = 0.4  A1 = 0.4
    #        t=0: delta = 0 + 0.6 - 0.5 = 0.1  A0 = 0.1 + 0.95 * 0.4 = 0.48;  returns [0.98, 1.0]
    torch.testing.assert_close(adv, torch.tensor([[0.46575, 0.385, 0.3, 0.0], [0.48, 0.4, 0.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.96575, 0.985, 1.0, 0.0], [0.98, 1.0, 0.0, 0.0]]))


def test_gae_skips_masked_hole() -> None:
    # A masked middle token is removed from the sequence: same as rewards [0, 1], values [0.5, 0.7].
    # t=2: A = 1 - 0.7 = 0.3;  t=0: delta = 0 + 0.7 - 0.5 = 0.2, A = 0.2 + 0.95 * 0.3 = 0.485
    rewards = torch.tensor([[0.0, 1e6, 1.0]])
    values = torch.tensor([[0.5, 1e6, 0.7]])
    adv, _ = gae(rewards, values, torch.tensor([[True, False, True]]), gamma=1.0, lam=0.95)
    torch.testing.assert_close(adv, torch.tensor([[0.485, 0.0, 0.3]]))


def test_gae_outputs_are_detached() -> None:
    values = torch.tensor([[0.5, 0.6]], requires_grad=True)
    adv, ret = gae(torch.zeros(1, 2), values, torch.ones(1, 2), gamma=1.0, lam=1.0)
    assert not adv.requires_grad and not ret.requires_grad


def test_discounted_returns_gamma_half_with_hole_and_padding() -> None:
    rewards = torch.tensor([[1.0, 1e6, 2.0, 4.0, 1e6], [2.0, 2.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 0, 0]])
    # Row 0, the hole removed: rewards 1, 2, 4 at t = 0, 2, 3.
    #   G3 = 4;  G2 = 2 + 0.5 * 4 = 4;  G0 = 1 + 0.5 * G2 = 1 + 2 = 3
    # Row 1: G1 = 2;  G0 = 2 + 0.5 * 2 = 3
    expected = torch.tensor([[3.0, 0.0, 4.0, 4.0, 0.0], [3.0, 2.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(discounted_returns(rewards, mask, gamma=0.5), expected)


def test_discounted_returns_gamma_1_is_reward_to_go() -> None:
    # [1, 2, 3] -> [1 + 2 + 3, 2 + 3, 3] = [6, 5, 3]
    out = discounted_returns(torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3), gamma=1.0)
    torch.testing.assert_close(out, torch.tensor([[6.0, 5.0, 3.0]]))


def test_grpo_two_groups_by_hand() -> None:
    # Groups [1, 2] and [3, 4]: means 1.5 and 3.5, deviations -0.5, +0.5.
    # Sample std (Bessel): sqrt((0.25 + 0.25) / (2 - 1)) = sqrt(0.5) = 0.70710678
    # A = +-0.5 / (0.70710678 + 1e-4) = +-0.5 / 0.70720678 = +-0.70700680
    a = 0.70700680
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(grpo_advantages(scores, 2), torch.tensor([-a, a, -a, a]))
    # Dr. GRPO: only centred.
    torch.testing.assert_close(
        grpo_advantages(scores, 2, scale_by_std=False), torch.tensor([-0.5, 0.5, -0.5, 0.5])
    )


def test_grpo_equal_group_is_exactly_zero() -> None:
    # Group [2, 2] has no signal -> 0. Group [5, 7]: mean 6, deviations -+1, std sqrt(2) = 1.41421356,
    # A = -+1 / 1.41431356 = -+0.70705678
    out = grpo_advantages(torch.tensor([2.0, 2.0, 5.0, 7.0]), 2)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.70705678, 0.70705678]))
    assert out[0].item() == 0.0 and out[1].item() == 0.0
    # Seven copies of 0.3: in float32 their mean misses 0.3 by 3e-8 and their std is 3e-8, which would give
    # advantages of 3e-8 / (3e-8 + 1e-4) = 3e-4; an all-equal group must be exactly 0 instead.
    assert torch.equal(grpo_advantages(torch.full((7,), 0.3), 7), torch.zeros(7))
    assert torch.equal(grpo_advantages(torch.full((7,), 0.3), 7, scale_by_std=False), torch.zeros(7))


def test_grpo_group_size_1_is_zero_not_nan() -> None:
    # torch.std of one sample is nan; a single sample has no group baseline -> advantage 0.
    assert torch.equal(grpo_advantages(torch.tensor([3.0, 5.0]), 1), torch.zeros(2))


def test_grpo_rejects_partial_groups() -> None:
    with pytest.raises(ValueError, match="group_size=3"):
        grpo_advantages(torch.zeros(4), 3)


def test_rloo_by_hand() -> None:
    # Leave-one-out baselines: 1 - (2 + 4) / 2 = -2;  2 - (1 + 4) / 2 = -0.5;  4 - (1 + 2) / 2 = 2.5
    torch.testing.assert_close(
        rloo_advantages(torch.tensor([1.0, 2.0, 4.0]), 3), torch.tensor([-2.0, -0.5, 2.5])
    )
    # Two groups of 2: 1 - 2 = -1, 2 - 1 = 1;  5 - 5 = 0, 5 - 5 = 0
    torch.testing.assert_close(
        rloo_advantages(torch.tensor([1.0, 2.0, 5.0, 5.0]), 2), torch.tensor([-1.0, 1.0, 0.0, 0.0])
    )


def test_rloo_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="RLOO needs at least 2 samples per prompt"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="group_size=3"):
        rloo_advantages(torch.zeros(4), 3)


# Four sequences, two prompts x G = 2, with padding holding huge values that must not count.
# Sequence rewards s = sum over the mask: 0.5 + 0.5 = 1;  0 + 2 + 0 = 2;  3;  1 + 1 + 2 = 4
SEQ_REWARDS = torch.tensor([[0.5, 0.5, 1e6], [0.0, 2.0, 0.0], [3.0, 1e6, 1e6], [1.0, 1.0, 2.0]])
SEQ_MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])


def _per_token(a: list[float]) -> torch.Tensor:
    """Per-sequence advantages [a0, a1, a2, a3] on SEQ_MASK's tokens."""
    return torch.tensor([[a[0], a[0], 0.0], [a[1], a[1], a[1]], [a[2], 0.0, 0.0], [a[3], a[3], a[3]]])


def test_advantages_share_one_signature() -> None:
    assert set(ADVANTAGES) == {"gae", "grpo", "rloo", "reinforce++"}
    signatures = {str(inspect.signature(fn)) for fn in ADVANTAGES.values()}
    assert len(signatures) == 1


def test_advantages_grpo_broadcasts_over_the_mask() -> None:
    # s = [1, 2, 3, 4], G = 2: the grpo_advantages example above, +-0.70700680, on every masked token.
    a = 0.70700680
    adv, returns = ADVANTAGES["grpo"](SEQ_REWARDS, SEQ_MASK, group_size=2)
    torch.testing.assert_close(adv, _per_token([-a, a, -a, a]))
    assert returns is None
    adv, _ = ADVANTAGES["grpo"](SEQ_REWARDS, SEQ_MASK, group_size=2, scale_rewards="none")
    torch.testing.assert_close(adv, _per_token([-0.5, 0.5, -0.5, 0.5]))


def test_advantages_grpo_batch_scaling_by_hand() -> None:
    # Centred by the group means 1.5, 3.5: [-0.5, 0.5, -0.5, 0.5].
    # Batch std of s = [1, 2, 3, 4]: mean 2.5, squares 2.25 + 0.25 + 0.25 + 2.25 = 5, var = 5 / 3,
    # std = 1.29099445;  0.5 / (1.29099445 + 1e-4) = 0.5 / 1.29109445 = 0.38726834
    a = 0.38726834
    adv, _ = ADVANTAGES["grpo"](SEQ_REWARDS, SEQ_MASK, group_size=2, scale_rewards="batch")
    torch.testing.assert_close(adv, _per_token([-a, a, -a, a]))


def test_advantages_grpo_batch_over_processes_equals_whole(run_processes) -> None:
    # Each process holds one whole group; the batch std must be that of all four sequences.
    whole, _ = ADVANTAGES["grpo"](SEQ_REWARDS, SEQ_MASK, group_size=2, scale_rewards="batch")
    parts = [(SEQ_REWARDS[:2], SEQ_MASK[:2]), (SEQ_REWARDS[2:], SEQ_MASK[2:])]
    halves = run_processes(
        lambda p, ar: ADVANTAGES["grpo"](*p, group_size=2, scale_rewards="batch", all_reduce=ar)[0], parts
    )
    torch.testing.assert_close(torch.cat(halves), whole, atol=1e-6, rtol=1e-6)


def test_advantages_grpo_unknown_scale_rewards() -> None:
    with pytest.raises(ValueError, match="group, batch, none"):
        ADVANTAGES["grpo"](SEQ_REWARDS, SEQ_MASK, group_size=2, scale_rewards="global")


def test_advantages_rloo_broadcasts_over_the_mask() -> None:
    # s = [1, 2 | 3, 4], G = 2: 1 - 2 = -1, 2 - 1 = 1, 3 - 4 = -1, 4 - 3 = 1
    adv, returns = ADVANTAGES["rloo"](SEQ_REWARDS, SEQ_MASK, group_size=2)
    torch.testing.assert_close(adv, _per_token([-1.0, 1.0, -1.0, 1.0]))
    assert returns is None


def test_advantages_gae_is_gae_then_whiten() -> None:
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    adv, ret = gae(rewards, values, mask, 0.9, 0.8)
    got_adv, got_ret = ADVANTAGES["gae"](rewards, mask, values, gamma=0.9, lam=0.8)
    assert torch.equal(got_adv, masked_whiten(adv, mask))
    assert torch.equal(got_ret, ret)


def test_advantages_gae_needs_values() -> None:
    with pytest.raises(ValueError, match="gae needs a value model"):
        ADVANTAGES["gae"](SEQ_REWARDS, SEQ_MASK)


def test_advantages_reinforce_pp_by_hand() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 1e6]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # gamma = 1 returns-to-go: [1, 1, 1] and [2, 2, -]
    # valid 1, 1, 1, 2, 2: mean 7 / 5 = 1.4; deviations -0.4 (x3), 0.6 (x2);
    # squares 3 * 0.16 + 2 * 0.36 = 1.2; var = 1.2 / 4 = 0.3; std = 0.54772256
    # -0.4 / 0.54772256 = -0.73029674;  0.6 / 0.54772256 = 1.09544512
    adv, returns = ADVANTAGES["reinforce++"](rewards, mask)
    lo, hi = -0.73029674, 1.09544512
    torch.testing.assert_close(adv, torch.tensor([[lo, lo, lo], [hi, hi, 0.0]]))
    assert returns is None
    # It is exactly the whitened discounted returns.
    assert torch.equal(adv, masked_whiten(discounted_returns(rewards, mask, 1.0), mask))


@pytest.mark.parametrize("name", ["gae", "reinforce++"])
def test_advantages_whitening_over_processes_equals_whole(run_processes, name: str) -> None:
    torch.manual_seed(3)
    rewards, values = torch.randn(4, 5), torch.randn(4, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    whole, _ = ADVANTAGES[name](rewards, mask, values, gamma=0.9)
    parts = [(rewards[:2], mask[:2], values[:2]), (rewards[2:], mask[2:], values[2:])]
    halves = run_processes(lambda p, ar: ADVANTAGES[name](*p, gamma=0.9, all_reduce=ar)[0], parts)
    torch.testing.assert_close(torch.cat(halves), whole, atol=1e-6, rtol=1e-6)
