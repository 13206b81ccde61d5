"""Masked statistics (mean, variance, whitening, explained variance), alone and across simulated processes,
checked against hand arithmetic."""

import math

import pytest
import torch

from rlhf.rl import WHITEN_EPS, explained_variance, masked_mean, masked_var, masked_whiten

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


def test_old_import_paths_still_work() -> None:
    from rlhf.rl import advantages, stats

    assert advantages.masked_mean is stats.masked_mean
    assert advantages.masked_whiten is stats.masked_whiten
    assert advantages.WHITEN_EPS == stats.WHITEN_EPS == 1e-8


def test_whiten_without_all_reduce_is_bit_identical_to_the_formula() -> None:
    # all_reduce=None must be exactly the single-process code: (x - mean) * rsqrt(unbiased var + 1e-8).
    torch.manual_seed(0)
    x = torch.randn(4, 6) * 3 + 2
    mask = torch.rand(4, 6) > 0.3
    expected = (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + WHITEN_EPS)
    expected = torch.where(mask, expected, torch.zeros_like(expected))
    assert torch.equal(masked_whiten(x, mask), expected)
    assert torch.equal(masked_whiten(x, mask, all_reduce=None), expected)


def test_whiten_one_process_all_reduce_matches_local() -> None:
    # With one process the sum over processes is the identity: same statistics (in float64 instead).
    torch.manual_seed(1)
    x = torch.randn(3, 5)
    mask = torch.rand(3, 5) > 0.2
    torch.testing.assert_close(masked_whiten(x, mask, all_reduce=lambda t: t), masked_whiten(x, mask))


def test_whiten_two_processes_by_hand(run_processes) -> None:
    # Process 0 holds [1, 2, (pad 1e6)], process 1 holds [3, 6]: together 1, 2, 3, 6.
    # mean = 12 / 4 = 3; deviations -2, -1, 0, 3; squares 4 + 1 + 0 + 9 = 14; var = 14 / (4 - 1) = 4.6666667
    # std = sqrt(14 / 3) = 2.1602469:  -2 / 2.1602469 = -0.9258201, -1 / 2.1602469 = -0.4629100,
    # 0, 3 / 2.1602469 = 1.3887301
    parts = [
        (torch.tensor([[1.0, 2.0, 1e6]]), torch.tensor([[1, 1, 0]])),
        (torch.tensor([[3.0, 6.0]]), torch.tensor([[1, 1]])),
    ]
    out = run_processes(lambda p, ar: masked_whiten(*p, all_reduce=ar), parts)
    torch.testing.assert_close(out[0], torch.tensor([[-0.9258201, -0.4629100, 0.0]]))
    torch.testing.assert_close(out[1], torch.tensor([[0.0, 1.3887301]]))
    # shift_mean=False adds the global mean 3 back on the valid positions.
    out = run_processes(lambda p, ar: masked_whiten(*p, shift_mean=False, all_reduce=ar), parts)
    torch.testing.assert_close(out[0], torch.tensor([[3 - 0.9258201, 3 - 0.4629100, 0.0]]))
    torch.testing.assert_close(out[1], torch.tensor([[3.0, 3 + 1.3887301]]))


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_halves_with_global_stats_equal_whole_batch(run_processes, shift_mean: bool) -> None:
    # Two processes with half of the rows each must whiten exactly like one process with all of them,
    # even with unequal numbers of valid tokens per half and inf in the padding.
    torch.manual_seed(2)
    x = torch.randn(6, 7) * 2 + 5
    mask = torch.rand(6, 7) > 0.4
    mask[0] = True
    x = torch.where(mask, x, torch.full_like(x, float("inf")))
    whole = masked_whiten(x, mask, shift_mean)
    halves = run_processes(
        lambda p, ar: masked_whiten(*p, shift_mean, all_reduce=ar), [(x[:2], mask[:2]), (x[2:], mask[2:])]
    )
    torch.testing.assert_close(torch.cat(halves), whole, atol=1e-6, rtol=1e-6)
