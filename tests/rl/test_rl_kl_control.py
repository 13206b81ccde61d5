"""KL controllers: hand-computed adaptive updates, fixed stays fixed, exact resume."""

import pytest
import torch

from rlhf.rl import AdaptiveKLController, FixedKLController


def test_adaptive_two_steps() -> None:
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # kl 9: error 9 / 6 - 1 = 0.5 -> clipped to 0.2; mult = 1 + 0.2 * 1000 / 10000 = 1.02 -> 0.102
    ctl.update(9.0, n_steps=1000)
    assert ctl.value == pytest.approx(0.102)
    # kl 5.4: error 5.4 / 6 - 1 = -0.1 (inside the clip); mult = 1 - 0.1 * 500 / 10000 = 0.995
    # 0.102 * 0.995 = 0.10149
    ctl.update(torch.tensor(5.4), n_steps=500)
    assert ctl.value == pytest.approx(0.10149)


def test_adaptive_clips_negative_error() -> None:
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # kl 0: error -1 -> clipped to -0.2; mult = 1 - 0.2 * 10000 / 10000 = 0.8 -> 0.08
    ctl.update(0.0, n_steps=10000)
    assert ctl.value == pytest.approx(0.08)


def test_fixed_stays_fixed() -> None:
    ctl = FixedKLController(0.05)
    ctl.update(100.0, n_steps=1000)
    assert ctl.value == 0.05


def test_state_dict_round_trip_is_bit_identical() -> None:
    a = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    a.update(7.3, 256)
    b = AdaptiveKLController(1.0, target=1.0, horizon=1)
    b.load_state_dict(a.state_dict())
    for kl in (3.1, 8.7, 6.2):
        a.update(kl, 256)
        b.update(kl, 256)
    assert a.value == b.value and a.state_dict() == b.state_dict()

    f = FixedKLController(0.3)
    g = FixedKLController(0.0)
    g.load_state_dict(f.state_dict())
    assert g.value == f.value


def test_adaptive_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10000)
