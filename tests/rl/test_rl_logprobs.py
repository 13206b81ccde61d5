"""Log-prob and entropy helpers against hand softmax values."""

import math

import pytest
import torch

from rlhf.rl import entropy_from_logits, logprobs_from_logits


def test_logprobs_temperature_2_by_hand() -> None:
    logits = torch.tensor([[[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]])
    ids = torch.tensor([[0, 1]])
    # logits / 2 = [1, 0, 0]; log Z = log(e + 2) = log 4.71828183 = 1.55144471
    # log p(0) = 1 - 1.55144471 = -0.55144471;  log p(1) = 0 - 1.55144471 = -1.55144471
    out = logprobs_from_logits(logits, ids, temperature=2.0)
    torch.testing.assert_close(out, torch.tensor([[-0.55144471, -1.55144471]]))


def test_logprobs_match_log_softmax_and_upcast_bf16() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    ids = torch.randint(0, 5, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, ids), expected)

    bf16 = logits.to(torch.bfloat16)
    out = logprobs_from_logits(bf16, ids)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out, torch.log_softmax(bf16.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    )


def test_logprobs_gradient_flows() -> None:
    logits = torch.zeros(1, 1, 4, requires_grad=True)
    logprobs_from_logits(logits, torch.tensor([[2]])).sum().backward()
    # d log p(2) / d z = onehot(2) - softmax = [-0.25, -0.25, 0.75, -0.25]
    torch.testing.assert_close(logits.grad, torch.tensor([[[-0.25, -0.25, 0.75, -0.25]]]))


def test_entropy_uniform_is_log_v() -> None:
    # softmax of equal logits is uniform over V = 4: H = log 4 = 1.38629436, at any temperature
    logits = torch.full((2, 3, 4), 7.0)
    torch.testing.assert_close(entropy_from_logits(logits), torch.full((2, 3), math.log(4)))
    torch.testing.assert_close(entropy_from_logits(logits, temperature=2.0), torch.full((2, 3), math.log(4)))


def test_entropy_by_hand() -> None:
    # logits [0, log 3] -> p = [1/4, 3/4]
    # H = 0.25 * log 4 + 0.75 * log(4/3) = 0.34657359 + 0.21576155 = 0.56233514
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert entropy_from_logits(logits).item() == pytest.approx(0.56233514)


def test_bad_temperature() -> None:
    with pytest.raises(ValueError):
        logprobs_from_logits(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), temperature=0.0)
