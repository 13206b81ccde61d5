"""KL-coefficient controllers for the PPO reward penalty  reward - beta * KL(policy || reference).

Both expose `.value` (the current beta), `update(current_kl, n_steps)`, and `state_dict()` /
`load_state_dict()` holding plain Python floats, so a resumed run continues with bit-identical betas.
"""

import math


class FixedKLController:
    """A constant KL coefficient; `update` is a no-op so both controllers can be used interchangeably."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019), steering the observed KL towards `target`.

    After each batch of `n_steps` samples:
        error = clip(current_kl / target - 1, -0.2, 0.2);  value *= 1 + error * n_steps / horizon
    KL above target raises beta (pulling the policy back), below target lowers it. Clipping the error
    bounds how fast beta can move on one noisy KL estimate; `horizon` sets the time scale in samples.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if not target > 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move `value` by the clipped proportional error; `current_kl` may be a 0-d tensor."""
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl must be finite, got {current_kl}")
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = state["horizon"]
