"""RLHF math as small, pure tensor functions (torch only; no models, no process group).

- stats: masked mean / variance / whitening (optionally over all processes, via a caller's all_reduce) and
  explained variance;
- rewards: reward-model score shaping (missing-EOS penalty, fixed normalisation, weighted sums, ensemble
  reductions) and the per-token rewards (KL penalty on every token, score on the last);
- advantages: KL estimators, GAE, discounted returns, GRPO / Dr. GRPO, RLOO, REINFORCE++, and ADVANTAGES,
  the estimators behind one common signature;
- losses: PPO policy (with clip-higher) and value losses, the DPO family and SimPO, loss aggregation over tokens / sequences, clip
  diagnostics, reward-model losses;
- best_of_n: best-of-N sampling as a policy (selection weights, its KL to the reference, measured and bound);
- kl_control, logprobs, calibration: KL controllers, log-prob / entropy helpers, reward-model calibration.
"""

from rlhf.rl.advantages import (
    ADVANTAGES,
    discounted_returns,
    gae,
    grpo_advantages,
    kl_penalty,
    rloo_advantages,
)
from rlhf.rl.best_of_n import best_of_n_kl, best_of_n_kl_bound, best_of_n_weights
from rlhf.rl.kl_control import AdaptiveKLController, FixedKLController
from rlhf.rl.logprobs import entropy_from_logits, logprobs_from_logits
from rlhf.rl.losses import (
    DPO_LOSS_TYPES,
    LOSS_AGGS,
    aggregate_loss,
    approx_kl,
    bradley_terry_loss,
    center_rewards_loss,
    clip_ratio_regions,
    dpo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    simpo_loss,
)
from rlhf.rl.rewards import (
    ENSEMBLE_REDUCTIONS,
    ensemble_std,
    missing_eos_penalty,
    normalize_scores,
    per_token_rewards,
    reduce_ensemble,
    weighted_scores,
)
from rlhf.rl.stats import WHITEN_EPS, explained_variance, masked_mean, masked_var, masked_whiten

__all__ = [
    "best_of_n_kl",
    "best_of_n_kl_bound",
    "best_of_n_weights",
    "DPO_LOSS_TYPES",
    "ENSEMBLE_REDUCTIONS",
    "ensemble_std",
    "reduce_ensemble",
    "dpo_loss",
    "simpo_loss",
    "ADVANTAGES",
    "LOSS_AGGS",
    "WHITEN_EPS",
    "AdaptiveKLController",
    "FixedKLController",
    "aggregate_loss",
    "approx_kl",
    "bradley_terry_loss",
    "center_rewards_loss",
    "clip_ratio_regions",
    "discounted_returns",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "grpo_advantages",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "missing_eos_penalty",
    "normalize_scores",
    "per_token_rewards",
    "ppo_policy_loss",
    "ppo_value_loss",
    "rloo_advantages",
    "weighted_scores",
]

from rlhf.rl.calibration import expected_calibration_error, reliability_table  # noqa: E402

__all__ += ["expected_calibration_error", "reliability_table"]
