"""DPO-family and SimPO losses against values worked out by hand."""

import math

import pytest
import torch

from rlhf.rl import dpo_loss, simpo_loss


def _lsig(x: float) -> float:
    return -math.log1p(math.exp(-x))  # log sigmoid(x)


# Pair 0: pi_c = -10, pi_r = -12, ref_c = ref_r = -11 -> z = (-10 + 12) - 0 = 2.
# Pair 1: pi_c = -5, pi_r = -4, ref_c = -5, ref_r = -5 -> z = (-5 + 4) - 0 = -1.
PC, PR, RC, RR = (torch.tensor(v) for v in ([-10.0, -5.0], [-12.0, -4.0], [-11.0, -5.0], [-11.0, -5.0]))


def test_sigmoid_by_hand():
    losses, chosen, rejected = dpo_loss(PC, PR, RC, RR, beta=0.1)
    # -log sigmoid(0.2) = log(1 + e^-0.2) = 0.598139; -log sigmoid(-0.1) = log(1 + e^0.1) = 0.744397
    assert losses.tolist() == pytest.approx([0.598139, 0.744397], abs=1e-6)
    # chosen rewards 0.1 * (-10 + 11) = 0.1, 0.1 * (-5 + 5) = 0; rejected 0.1 * (-12 + 11) = -0.1, 0.1 * 1 = 0.1
    assert chosen.tolist() == pytest.approx([0.1, 0.0]) and rejected.tolist() == pytest.approx([-0.1, 0.1])


def test_cdpo_and_robust_by_hand():
    eps = 0.1
    cdpo, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=eps)
    # pair 0: -0.9 log sig(0.2) - 0.1 log sig(-0.2) = 0.9 * 0.598139 + 0.1 * 0.798139 = 0.618139
    assert float(cdpo[0]) == pytest.approx(0.618139, abs=1e-6)
    robust, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="robust", label_smoothing=eps)
    # pair 0: (0.9 * 0.598139 - 0.1 * 0.798139) / 0.8 = (0.538325 - 0.079814) / 0.8 = 0.573139
    assert float(robust[0]) == pytest.approx(0.573139, abs=1e-6)
    # Unbiased: (1 - eps) * robust(z) + eps * robust(-z) = the clean loss -log sigmoid(beta z).
    flipped, _, _ = dpo_loss(PR, PC, RR, RC, beta=0.1, loss_type="robust", label_smoothing=eps)
    clean = torch.tensor([-_lsig(0.2), -_lsig(-0.1)])
    torch.testing.assert_close((1 - eps) * robust + eps * flipped, clean)


def test_ipo_and_hinge_by_hand():
    ipo, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo")
    # target 1 / (2 * 0.1) = 5: (2 - 5)^2 = 9, (-1 - 5)^2 = 36
    assert ipo.tolist() == pytest.approx([9.0, 36.0])
    at_target, _, _ = dpo_loss(
        torch.tensor([5.0]), torch.tensor([0.0]), torch.zeros(1), torch.zeros(1), 0.1, "ipo"
    )
    assert float(at_target) == 0.0
    hinge, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="hinge")
    # relu(1 - 0.2) = 0.8, relu(1 + 0.1) = 1.1; beyond z = 1 / beta = 10 the loss is 0
    assert hinge.tolist() == pytest.approx([0.8, 1.1])
    beyond, _, _ = dpo_loss(
        torch.tensor([11.0]), torch.tensor([0.0]), torch.zeros(1), torch.zeros(1), 0.1, "hinge"
    )
    assert float(beyond) == 0.0


def test_gradient_reaches_the_policy_only():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    rc, rr = RC.clone().requires_grad_(), RR.clone().requires_grad_()
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1)
    losses.sum().backward()
    # d/dpi_c of -log sigmoid(beta z) = -beta * sigmoid(-beta z): pair 0: -0.1 * sigmoid(-0.2) = -0.045017
    assert float(pc.grad[0]) == pytest.approx(-0.1 * (1 / (1 + math.exp(0.2))), abs=1e-6)
    assert float(pr.grad[0]) == pytest.approx(0.1 * (1 / (1 + math.exp(0.2))), abs=1e-6)
    assert rc.grad is None and rr.grad is None  # the reference is a constant


def test_simpo_by_hand():
    # beta 2, gamma 0.5: c = -1.0, r = -1.5 -> 2 * 0.5 - 0.5 = 0.5: -log sigmoid(0.5) = 0.474077
    losses = simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.5]), beta=2.0, gamma=0.5)
    assert float(losses[0]) == pytest.approx(0.474077, abs=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(PC, PR, RC, RR, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, loss_type="robust", label_smoothing=0.5)
