"""Reward shaping and per-token rewards, checked against hand arithmetic."""

import pytest
import torch

from rlhf.rl import missing_eos_penalty, normalize_scores, per_token_rewards, weighted_scores


def test_per_token_rewards_by_hand() -> None:
    # beta = 0.5, kl [0.1, 0.2, (pad)]: non-score -0.5 * [0.1, 0.2] = [-0.05, -0.1], padding 0
    # score 1 on the last real token (t = 1): -0.1 + 1 = 0.9
    rewards, non_score = per_token_rewards(
        torch.tensor([1.0]), torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[1.0, 1.0, 0.0]]), 0.5
    )
    torch.testing.assert_close(non_score, torch.tensor([[-0.05, -0.1, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.9, 0.0]]))


def test_per_token_rewards_score_position() -> None:
    # Row 0 has no EOS (all True): score 2 on the last column. Row 1 ends after one token: -1 at t = 0.
    # Row 2 has a hole [1, 0, 1]: the last True is t = 2. kl = 0, so only the scores show.
    rewards, non_score = per_token_rewards(
        torch.tensor([2.0, -1.0, 3.0]),
        torch.zeros(3, 3),
        torch.tensor([[True, True, True], [True, False, False], [True, False, True]]),
        0.5,
    )
    assert rewards.tolist() == [[0.0, 0.0, 2.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
    assert non_score.abs().sum().item() == 0.0


def test_per_token_rewards_ignore_inf_padding() -> None:
    # kl at padding may be anything; -beta * inf * 0 would be nan. Non-score -0.1 * 1 = -0.1 at t = 0;
    # rewards there -0.1 + 5 = 4.9.
    rewards, non_score = per_token_rewards(
        torch.tensor([5.0]), torch.tensor([[1.0, float("inf")]]), torch.tensor([[1, 0]]), 0.1
    )
    torch.testing.assert_close(rewards, torch.tensor([[4.9, 0.0]]))
    torch.testing.assert_close(non_score, torch.tensor([[-0.1, 0.0]]))


def test_missing_eos_penalty() -> None:
    # Unfinished sequence 1 loses 1.5: [1, 2 - 1.5] = [1, 0.5]
    out = missing_eos_penalty(torch.tensor([1.0, 2.0]), torch.tensor([True, False]), 1.5)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.5]))


def test_normalize_scores() -> None:
    scores = torch.tensor([1.0, 3.0, 10.0])
    # (s - 2) / 0.5 = [-2, 2, 16]; clip 5 -> [-2, 2, 5]
    torch.testing.assert_close(normalize_scores(scores, 2.0, 0.5, 0.0), torch.tensor([-2.0, 2.0, 16.0]))
    torch.testing.assert_close(normalize_scores(scores, 2.0, 0.5, 5.0), torch.tensor([-2.0, 2.0, 5.0]))
    # No statistics, no clip: unchanged; clip only: [1, 3, 4]
    torch.testing.assert_close(normalize_scores(scores, None, None, 0.0), scores)
    torch.testing.assert_close(normalize_scores(scores, None, None, 4.0), torch.tensor([1.0, 3.0, 4.0]))
    # std 0 is floored at 1e-6: (3 - 2) / 1e-6 = 1e6
    assert normalize_scores(torch.tensor([3.0]), 2.0, 0.0, 0.0).item() == pytest.approx(1e6)


def test_weighted_scores() -> None:
    # 0.5 * [1, 2] + 2 * [3, -1] = [0.5 + 6, 1 - 2] = [6.5, -1]
    out = weighted_scores([torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])], [0.5, 2.0])
    torch.testing.assert_close(out, torch.tensor([6.5, -1.0]))
    with pytest.raises(ValueError, match="2 reward scores but 1 weights"):
        weighted_scores([torch.zeros(2), torch.zeros(2)], [1.0])
