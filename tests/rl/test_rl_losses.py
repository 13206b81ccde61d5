"""PPO and reward-model losses, checked against hand arithmetic."""

import math

import pytest
import torch

from rlhf.rl import (
    LOSS_AGGS,
    aggregate_loss,
    approx_kl,
    bradley_terry_loss,
    center_rewards_loss,
    clip_ratio_regions,
    ppo_policy_loss,
    ppo_value_loss,
)

EPS = 0.2


def _policy_loss_for(ratio: float, advantage: float) -> tuple[float, float]:
    logprobs = torch.tensor([[math.log(ratio)]])
    loss, clipfrac = ppo_policy_loss(
        logprobs, torch.zeros(1, 1), torch.tensor([[advantage]]), torch.ones(1, 1), EPS
    )
    return loss.item(), clipfrac.item()


@pytest.mark.parametrize(
    ("ratio", "advantage", "expected_loss", "expected_clipfrac"),
    [
        # inside [0.8, 1.2]: -A * r = -1.1 either way
        (1.1, 1.0, -1.1, 0.0),
        # A > 0, r above range: max(-1.5, -1.2) = -1.2 (no reward for going further)
        (1.5, 1.0, -1.2, 1.0),
        # A > 0, r below range: max(-0.5, -0.8) = -0.5 (the worse, unclipped term)
        (0.5, 1.0, -0.5, 1.0),
        # A < 0, r above range: max(1.5, 1.2) = 1.5 (unclipped)
        (1.5, -1.0, 1.5, 1.0),
        # A < 0, r below range: max(0.5, 0.8) = 0.8 (clipped)
        (0.5, -1.0, 0.8, 1.0),
        # inside, A = -2: -(-2) * 0.9 = 1.8
        (0.9, -2.0, 1.8, 0.0),
    ],
)
def test_ppo_policy_loss_cases(
    ratio: float, advantage: float, expected_loss: float, expected_clipfrac: float
) -> None:
    loss, clipfrac = _policy_loss_for(ratio, advantage)
    assert loss == pytest.approx(expected_loss)
    assert clipfrac == expected_clipfrac


def test_ppo_policy_loss_masked_mean() -> None:
    # The six cases above in one row, plus a masked token with a huge ratio and advantage.
    ratios = torch.tensor([[1.1, 1.5, 0.5, 1.5, 0.5, 0.9, math.exp(5.0)]])
    advantages = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, -2.0, 1e6]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    loss, clipfrac = ppo_policy_loss(ratios.log(), torch.zeros_like(ratios), advantages, mask, EPS)
    # (-1.1 - 1.2 - 0.5 + 1.5 + 0.8 + 1.8) / 6 = 1.3 / 6;  clipped: 1.5, 0.5, 1.5, 0.5 -> 4 / 6
    assert loss.item() == pytest.approx(1.3 / 6)
    assert clipfrac.item() == pytest.approx(4 / 6)


def test_ppo_policy_loss_gradient_vanishes_when_clipped() -> None:
    # Token 0: r = 1.1, A = 1 -> d loss / d logprob = -A * r / 2 tokens = -0.55.
    # Token 1: r = 1.5, A = 1 -> the clipped constant -1.2 wins, gradient 0.
    logprobs = torch.tensor([[math.log(1.1), math.log(1.5)]], requires_grad=True)
    loss, _ = ppo_policy_loss(logprobs, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), EPS)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.55, 0.0]]))


def test_approx_kl() -> None:
    # 0.5 * (0.5^2 + (-1)^2) / 2 = 0.5 * 1.25 / 2 = 0.3125; the masked diff of 100 is ignored
    logprobs = torch.tensor([[0.5, -1.0, 100.0]])
    assert approx_kl(logprobs, torch.zeros(1, 3), torch.tensor([[1, 1, 0]])).item() == pytest.approx(0.3125)


def test_ppo_value_loss_clipping() -> None:
    c = 0.2
    values = torch.tensor([[1.5, 1.1, 0.5, 1.5, 1e6]])
    old = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 0.0, 1.0, -1e6]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    # token 0: v_clip = 1 + 0.2 = 1.2; (1.5 - 2)^2 = 0.25, (1.2 - 2)^2 = 0.64 -> 0.64, clipped
    # token 1: v - old = 0.1 within c: both (1.1 - 2)^2 = 0.81 -> 0.81, not clipped (not strictly larger)
    # token 2: v_clip = 1 - 0.2 = 0.8; (0.5)^2 = 0.25, (0.8)^2 = 0.64 -> 0.64, clipped
    # token 3: v_clip = 1.2; (1.5 - 1)^2 = 0.25, (1.2 - 1)^2 = 0.04 -> 0.25, not clipped
    # loss = 0.5 * (0.64 + 0.81 + 0.64 + 0.25) / 4 = 0.5 * 0.585 = 0.2925; clipfrac = 2 / 4
    loss, clipfrac = ppo_value_loss(values, old, returns, mask, c)
    assert loss.item() == pytest.approx(0.2925)
    assert clipfrac.item() == pytest.approx(0.5)


def test_bradley_terry_equal_rewards_is_log2() -> None:
    # d = 0: -log sigmoid(0) = -log 0.5 = log 2, with or without smoothing
    zeros = torch.zeros(3)
    assert bradley_terry_loss(zeros, zeros).item() == pytest.approx(math.log(2))
    assert bradley_terry_loss(zeros, zeros, label_smoothing=0.1).item() == pytest.approx(math.log(2))


def test_bradley_terry_margin() -> None:
    chosen, rejected = torch.tensor([2.0]), torch.tensor([1.0])
    # no margin: d = 1, -log sigmoid(1) = log(1 + e^-1) = log 1.36787944 = 0.31326169
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(0.31326169)
    # margin 1: d = 2 - 1 - 1 = 0 -> log 2
    assert bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0])).item() == pytest.approx(
        math.log(2)
    )


def test_bradley_terry_label_smoothing() -> None:
    # d = 1, eps = 0.1: -log sigmoid(-1) = -log sigmoid(1) + 1 = 1.31326169
    # 0.9 * 0.31326169 + 0.1 * 1.31326169 = 0.31326169 + 0.1 = 0.41326169
    loss = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.41326169)


def test_bradley_terry_batch_mean_and_stability() -> None:
    # mean(0.31326169, log 2 = 0.69314718) = 0.50320444
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(0.50320444)
    # d = -1000: log(1 + e^1000) ~= 1000; a naive log(sigmoid(d)) would be log(0) = -inf
    assert bradley_terry_loss(torch.tensor([-1000.0]), torch.tensor([0.0])).item() == pytest.approx(1000.0)


def test_center_rewards_loss() -> None:
    # sums [1 + 2, -2 + 1] = [3, -1] -> squares [9, 1] -> mean 5
    assert center_rewards_loss(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 1.0])).item() == pytest.approx(
        5.0
    )


# Per-token losses of two rows, the last position of row 1 padding (inf: it must be selected away).
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, float("inf")]])
PER_TOKEN_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_aggregate_loss_modes_by_hand() -> None:
    # token-mean: (1 + 2 + 3 + 4 + 5) / 5 = 15 / 5 = 3
    assert aggregate_loss(PER_TOKEN, PER_TOKEN_MASK, "token-mean").item() == pytest.approx(3.0)
    # seq-mean-token-mean: row means 6 / 3 = 2 and 9 / 2 = 4.5 -> (2 + 4.5) / 2 = 3.25
    assert aggregate_loss(PER_TOKEN, PER_TOKEN_MASK, "seq-mean-token-mean").item() == pytest.approx(3.25)
    # seq-mean-token-sum-norm: 15 / (2 rows * 3 columns) = 2.5
    assert aggregate_loss(PER_TOKEN, PER_TOKEN_MASK, "seq-mean-token-sum-norm").item() == pytest.approx(2.5)


def test_aggregate_loss_given_counts() -> None:
    # num_tokens = 10: 15 / 10 = 1.5;  num_rows = 4: 6.5 / 4 = 1.625 and 15 / (4 * 3) = 1.25
    assert aggregate_loss(PER_TOKEN, PER_TOKEN_MASK, "token-mean", num_tokens=10).item() == pytest.approx(1.5)
    got = aggregate_loss(PER_TOKEN, PER_TOKEN_MASK, "seq-mean-token-mean", num_rows=4)
    assert got.item() == pytest.approx(1.625)
    got = aggregate_loss(PER_TOKEN, PER_TOKEN_MASK, "seq-mean-token-sum-norm", num_rows=4)
    assert got.item() == pytest.approx(1.25)


def test_aggregate_loss_empty_row_counts_zero() -> None:
    # Row 1 has no valid token: its mean is 0, not nan. (2 + 0) / 2 = 1
    per_token = torch.tensor([[1.0, 2.0, 3.0], [float("nan")] * 3])
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    assert aggregate_loss(per_token, mask, "seq-mean-token-mean").item() == pytest.approx(1.0)
    # token-mean: 6 / 3 = 2;  sum-norm: 6 / (2 * 3) = 1
    assert aggregate_loss(per_token, mask, "token-mean").item() == pytest.approx(2.0)
    assert aggregate_loss(per_token, mask, "seq-mean-token-sum-norm").item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("loss_agg", "whole", "row0", "row1"),
    [
        # each row over the whole's 5 tokens: 6 / 5 + 9 / 5 = 1.2 + 1.8 = 3
        ("token-mean", 3.0, 1.2, 1.8),
        # each row's mean over the whole's 2 rows: 2 / 2 + 4.5 / 2 = 1 + 2.25 = 3.25
        ("seq-mean-token-mean", 3.25, 1.0, 2.25),
        # each row's sum over 2 * 3: 6 / 6 + 9 / 6 = 1 + 1.5 = 2.5
        ("seq-mean-token-sum-norm", 2.5, 1.0, 1.5),
    ],
)
def test_aggregate_loss_split_rows_sum_to_whole(
    loss_agg: str, whole: float, row0: float, row1: float
) -> None:
    counts = {"num_tokens": 5, "num_rows": 2}
    parts = [
        aggregate_loss(PER_TOKEN[i : i + 1], PER_TOKEN_MASK[i : i + 1], loss_agg, **counts) for i in (0, 1)
    ]
    assert [p.item() for p in parts] == pytest.approx([row0, row1])
    assert aggregate_loss(PER_TOKEN, PER_TOKEN_MASK, loss_agg).item() == pytest.approx(whole)


def test_aggregate_loss_unknown_mode_lists_valid_ones() -> None:
    assert LOSS_AGGS == ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean, seq-mean-token-sum-norm"):
        aggregate_loss(PER_TOKEN, PER_TOKEN_MASK, "seq-sum")


def test_ppo_policy_loss_clip_higher() -> None:
    # ratio 1.25, A = 1: with eps_high = 0.2 the ratio is clipped to 1.2 -> max(-1.25, -1.2) = -1.2, clipped;
    # with eps_high = 0.28 it is inside [0.8, 1.28] -> -1.25, not clipped.
    logprobs = torch.tensor([[math.log(1.25)]])
    args = (torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    loss, clipfrac = ppo_policy_loss(logprobs, *args, clip_range_high=0.2)
    assert (loss.item(), clipfrac.item()) == (pytest.approx(-1.2), 1.0)
    loss, clipfrac = ppo_policy_loss(logprobs, *args, clip_range_high=0.28)
    assert (loss.item(), clipfrac.item()) == (pytest.approx(-1.25), 0.0)
    # The low side keeps eps_low = 0.2: ratio 0.75, A = -1 -> max(0.75, 0.8) = 0.8, clipped.
    loss, clipfrac = ppo_policy_loss(
        torch.tensor([[math.log(0.75)]]), torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1), 0.2, 0.28
    )
    assert (loss.item(), clipfrac.item()) == (pytest.approx(0.8), 1.0)


def test_ppo_policy_loss_clip_higher_gradient() -> None:
    # ratio 1.25, A = 1: d(-A * r) / d logprob = -A * r = -1.25 when not clipped (eps_high 0.28), 0 when
    # clipped (eps_high 0.2).
    for high, grad in ((0.28, -1.25), (0.2, 0.0)):
        logprobs = torch.tensor([[math.log(1.25)]], requires_grad=True)
        loss, _ = ppo_policy_loss(logprobs, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2, high)
        loss.backward()
        assert logprobs.grad.item() == pytest.approx(grad)


def test_ppo_policy_loss_symmetric_high_is_the_default() -> None:
    torch.manual_seed(0)
    logprobs, old, adv = torch.randn(3, 4) * 0.3, torch.randn(3, 4) * 0.3, torch.randn(3, 4)
    mask = torch.rand(3, 4) > 0.3
    default = ppo_policy_loss(logprobs, old, adv, mask, 0.2)
    explicit = ppo_policy_loss(logprobs, old, adv, mask, 0.2, clip_range_high=0.2, loss_agg="token-mean")
    assert torch.equal(default[0], explicit[0]) and torch.equal(default[1], explicit[1])


def test_clip_ratio_regions_by_hand() -> None:
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1, 100.0]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    # eps 0.2: low = r < 0.8 and A < 0: token 3 only -> 1 / 5; high = r > 1.2 and A > 0: token 0 -> 1 / 5;
    # region = 2 / 5. (clipfrac would be 4 / 5: tokens 1 and 2 are outside the range but keep a gradient.)
    out = clip_ratio_regions(ratios, advantages, mask, 0.2)
    assert {k: v.item() for k, v in out.items()} == pytest.approx(
        {"low_mean": 0.2, "high_mean": 0.2, "region_mean": 0.4}
    )
    # eps_high 0.6: 1.5 < 1.6, token 0 no longer clipped -> high 0, region 1 / 5.
    out = clip_ratio_regions(ratios, advantages, mask, 0.2, clip_range_high=0.6)
    assert {k: v.item() for k, v in out.items()} == pytest.approx(
        {"low_mean": 0.2, "high_mean": 0.0, "region_mean": 0.2}
    )


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_ppo_policy_loss_split_with_whole_counts_equals_whole(loss_agg: str) -> None:
    # Two row-halves (micro-batches), each normalised by the whole minibatch's token and row counts: their
    # losses and their gradients sum to the unsplit loss and its gradient.
    torch.manual_seed(1)
    old, adv = torch.randn(4, 5) * 0.3, torch.randn(4, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    logprobs = (old + torch.randn(4, 5) * 0.3).requires_grad_()
    whole, _ = ppo_policy_loss(logprobs, old, adv, mask, 0.2, 0.28, loss_agg)
    (whole_grad,) = torch.autograd.grad(whole, logprobs)
    counts = {"num_tokens": int(mask.sum()), "num_rows": 4}
    total = sum(
        ppo_policy_loss(logprobs[rows], old[rows], adv[rows], mask[rows], 0.2, 0.28, loss_agg, **counts)[0]
        for rows in (slice(0, 2), slice(2, 4))
    )
    (split_grad,) = torch.autograd.grad(total, logprobs)
    torch.testing.assert_close(total, whole)
    torch.testing.assert_close(split_grad, whole_grad)


def test_ppo_value_loss_split_with_whole_token_count() -> None:
    torch.manual_seed(2)
    old, returns = torch.randn(4, 3), torch.randn(4, 3)
    values = (old + torch.randn(4, 3) * 0.3).requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    whole, _ = ppo_value_loss(values, old, returns, mask, 0.2)
    (whole_grad,) = torch.autograd.grad(whole, values)
    total = sum(
        ppo_value_loss(values[r], old[r], returns[r], mask[r], 0.2, num_tokens=9)[0]
        for r in (slice(0, 2), slice(2, 4))
    )
    (split_grad,) = torch.autograd.grad(total, values)
    torch.testing.assert_close(total, whole)
    torch.testing.assert_close(split_grad, whole_grad)
