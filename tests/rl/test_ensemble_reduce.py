"""Reward-model ensemble reductions (mean, min, mean - lam * std), checked against hand arithmetic."""

import pytest
import torch

from rlhf.rl import ENSEMBLE_REDUCTIONS, bradley_terry_loss, ensemble_std, reduce_ensemble

# K = 4 members (rows) x B = 3 sequences (columns).
SCORES = torch.tensor(
    [
        [1.0, 0.0, -1.0],
        [1.0, 0.0, 3.0],
        [3.0, 0.0, -1.0],
        [3.0, 0.0, 3.0],
    ]
)


def test_ensemble_std_is_the_population_std_by_hand() -> None:
    # Column 0: [1, 1, 3, 3], mean 2, deviations [-1, -1, 1, 1], squares sum 4, / K=4 -> var 1, std 1
    #   (the sample std would be sqrt(4/3) = 1.155).
    # Column 1: all 0 -> std 0.
    # Column 2: [-1, 3, -1, 3], mean 1, deviations [-2, 2, -2, 2], squares sum 16, / 4 -> var 4, std 2.
    torch.testing.assert_close(ensemble_std(SCORES), torch.tensor([1.0, 0.0, 2.0]))
    assert ensemble_std(SCORES[:1]).tolist() == [0.0, 0.0, 0.0]  # one member: no disagreement, not nan


def test_mean_by_hand() -> None:
    # (1 + 1 + 3 + 3) / 4 = 2; 0; (-1 + 3 - 1 + 3) / 4 = 1.
    torch.testing.assert_close(reduce_ensemble(SCORES, "mean"), torch.tensor([2.0, 0.0, 1.0]))


def test_min_by_hand() -> None:
    # The worst member of each column: 1, 0, -1.
    torch.testing.assert_close(reduce_ensemble(SCORES, "min"), torch.tensor([1.0, 0.0, -1.0]))


def test_mean_minus_std_by_hand() -> None:
    # lam = 0.5: [2 - 0.5 * 1, 0 - 0.5 * 0, 1 - 0.5 * 2] = [1.5, 0, 0].
    torch.testing.assert_close(reduce_ensemble(SCORES, "mean-minus-std", 0.5), torch.tensor([1.5, 0.0, 0.0]))
    # lam = 1: [2 - 1, 0, 1 - 2] = [1, 0, -1]; lam = 0: the mean.
    torch.testing.assert_close(reduce_ensemble(SCORES, "mean-minus-std", 1.0), torch.tensor([1.0, 0.0, -1.0]))
    torch.testing.assert_close(
        reduce_ensemble(SCORES, "mean-minus-std", 0.0), reduce_ensemble(SCORES, "mean")
    )


@pytest.mark.parametrize("how", ENSEMBLE_REDUCTIONS)
def test_one_member_is_returned_unchanged(how: str) -> None:
    # K = 1 (a plain reward model): every reduction is the identity, bit for bit.
    one = torch.tensor([[0.3, -1.7, 2.5]])
    assert torch.equal(reduce_ensemble(one, how, 0.5), one[0])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="unknown ensemble reduction 'median'"):
        reduce_ensemble(SCORES, "median")
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        reduce_ensemble(torch.zeros(3), "mean")


def test_bradley_terry_bootstrap_weights_by_hand() -> None:
    # A shared-trunk ensemble's loss: K = 2 heads x 2 pairs, each head weighting the pairs by its bootstrap counts.
    # d = chosen - rejected = [[1, 0], [0, 1]]; -log sigmoid(1) = softplus(-1) = 0.31326, -log sigmoid(0) = log 2.
    # weights [[2, 0], [1, 1]]: mean of [2 * 0.31326, 0, log 2, 0.31326] = (3 * 0.31326 + 0.69315) / 4.
    chosen, rejected = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2, 2)
    weights = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    sp1, log2 = float(torch.nn.functional.softplus(torch.tensor(-1.0))), float(torch.log(torch.tensor(2.0)))
    assert bradley_terry_loss(chosen, rejected, weights=weights).item() == pytest.approx((3 * sp1 + log2) / 4)
    # Weights of 1 everywhere: the plain mean.
    assert bradley_terry_loss(chosen, rejected, weights=torch.ones(2, 2)).item() == pytest.approx(
        bradley_terry_loss(chosen, rejected).item()
    )
