"""RLHF math as small, pure tensor functions: masked statistics, KL penalties, GAE, PPO and
reward-model losses, KL controllers and log-prob helpers."""

from rlhf.rl.advantages import (
    explained_variance,
    gae,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
)
from rlhf.rl.kl_control import AdaptiveKLController, FixedKLController
from rlhf.rl.logprobs import entropy_from_logits, logprobs_from_logits
from rlhf.rl.losses import (
    approx_kl,
    bradley_terry_loss,
    center_rewards_loss,
    ppo_policy_loss,
    ppo_value_loss,
)

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "approx_kl",
    "bradley_terry_loss",
    "center_rewards_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "ppo_value_loss",
]

from rlhf.rl.calibration import expected_calibration_error, reliability_table  # noqa: E402

__all__ += ["expected_calibration_error", "reliability_table"]
