"""PPO and reward-model losses, checked against hand arithmetic."""

import math

import pytest
import torch

from rlhf.rl import approx_kl, bradley_terry_loss, center_rewards_loss, ppo_policy_loss, ppo_value_loss

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
