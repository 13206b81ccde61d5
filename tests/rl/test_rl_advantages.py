"""Masked statistics, KL penalties, GAE and explained variance, checked against hand arithmetic."""

import math

import pytest
import torch

from rlhf.rl import explained_variance, gae, kl_penalty, masked_mean, masked_var, masked_whiten

# Valid [1, 2, 3], then a huge padding value that must not matter.
X = torch.tensor([[1.0, 2.0, 3.0, 1e6]])
MASK = torch.tensor([[1, 1, 1, 0]])


def test_masked_stats_ignore_huge_padding() -> None:
    # mean = (1 + 2 + 3) / 3 = 2
    assert masked_mean(X, MASK).item() == pytest.approx(2.0)
    # squared deviations 1, 0, 1 -> sum 2; unbiased 2 / (3 - 1) = 1, biased 2 / 3
    assert masked_var(X, MASK).item() == pytest.approx(1.0)
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(2 / 3)
    # whiten: (x - 2) / sqrt(1 + 1e-8) = [-1, 0, 1]; padding -> 0
    torch.testing.assert_close(masked_whiten(X, MASK), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    # shift_mean=False only scales: (x - 2) / 1 + 2 = x on valid positions
    torch.testing.assert_close(masked_whiten(X, MASK, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]))


def test_masked_stats_survive_inf_and_nan_padding() -> None:
    # inf * 0 would be nan; masked positions must be selected away, not multiplied by 0.
    x = torch.tensor([[1.0, 2.0, 3.0, float("inf"), float("nan")]])
    mask = torch.tensor([[True, True, True, False, False]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_var(x, mask).item() == pytest.approx(1.0)
    assert torch.isfinite(masked_whiten(x, mask)).all()


def test_masked_mean_along_dim_and_float_mask() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 1e6], [4.0, 1e6, 1e6, 1e6]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # row means: (1 + 2 + 3) / 3 = 2, 4 / 1 = 4
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([2.0, 4.0]))
    # all four valid values: (1 + 2 + 3 + 4) / 4 = 2.5
    assert masked_mean(x, mask).item() == pytest.approx(2.5)


def test_masked_var_single_token_skips_bessel() -> None:
    # n = 1: n / (n - 1) would divide by zero; the variance of one value is 0.
    assert masked_var(torch.tensor([5.0, 7.0]), torch.tensor([1, 0])).item() == 0.0


def test_all_ones_mask_matches_unmasked() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5) * 2 + 1
    ones = torch.ones_like(x)
    torch.testing.assert_close(masked_mean(x, ones), x.mean())
    torch.testing.assert_close(masked_mean(x, ones, dim=0), x.mean(0))
    torch.testing.assert_close(masked_var(x, ones), x.var())
    torch.testing.assert_close(masked_var(x, ones, unbiased=False), x.var(unbiased=False))
    torch.testing.assert_close(masked_whiten(x, ones), (x - x.mean()) / torch.sqrt(x.var() + 1e-8))
    torch.testing.assert_close(
        masked_whiten(x, ones, shift_mean=False), (x - x.mean()) / torch.sqrt(x.var() + 1e-8) + x.mean()
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


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 1e6]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    # Perfect fit: Var(R - V) = 0 -> 1.
    assert explained_variance(returns.clone(), returns, mask).item() == pytest.approx(1.0)
    # V = [1, 2, 3, 3]: residual [0, 0, 0, 1], mean 0.25, Var = 0.25 - 0.0625 = 0.1875;
    # Var(R) = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25;  EV = 1 - 0.1875 / 1.25 = 0.85
    values = torch.tensor([[1.0, 2.0, 3.0, 3.0, -1e6]])
    assert explained_variance(values, returns, mask).item() == pytest.approx(0.85)
    # Constant returns: undefined -> nan.
    assert math.isnan(explained_variance(torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3)).item())
