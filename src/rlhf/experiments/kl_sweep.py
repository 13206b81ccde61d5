"""`rlhf experiment kl-sweep`: PPO against one reward model at several KL coefficients.

Sub-runs: runs/sft (unless --sft), runs/reward (unless --reward), runs/beta-<b> per beta, runs/beta-<b>-compare.
"""

from __future__ import annotations

from pathlib import Path

from rlhf.config import KLSweepConfig
from rlhf.experiments.common import (
    GOLD,
    KL,
    LENGTH,
    PROXY,
    begin,
    compare_run,
    finish,
    line_plot,
    ppo_run,
    reward_run,
    series,
    sft_run,
    smooth,
    tail_mean,
)

NAME = "kl-sweep"
DESCRIPTION = (
    "PPO against the same learned reward model at several KL coefficients beta. A tiny beta lets the policy "
    "travel far from the SFT reference: the proxy reward climbs while the gold score does not follow (reward "
    "hacking) and KL is large. A moderate beta improves with bounded KL. A large beta holds the policy at the "
    "reference: little KL, little change. Final KL falls as beta grows."
)


def run(cfg: KLSweepConfig) -> dict:
    ctx = begin(cfg, NAME)
    sft = sft_run(ctx)
    reward = Path(cfg.reward) if cfg.reward is not None else reward_run(ctx, "reward", sft)[0]
    runs, rows_by_beta, samples = [], {}, {}
    for beta in cfg.betas:
        name = f"beta-{beta:g}"
        policy, rows = ppo_run(ctx, name, sft, reward, kl_coef=beta)
        cmp = compare_run(ctx, name, sft, policy, reward)
        rows_by_beta[beta] = rows
        samples[f"beta = {beta:g}"] = cmp["samples"][:6]
        runs.append(
            {
                "kl_coef": beta,
                "final_kl": tail_mean(rows, KL),
                "final_proxy": tail_mean(rows, PROXY),
                "final_gold": tail_mean(rows, GOLD),
                "final_mean_length": tail_mean(rows, LENGTH),
                "heldout_gold": cmp.get("gold_ppo"),
                "heldout_proxy": cmp["proxy_ppo"],
                "heldout_kl": cmp["kl_ppo"],
            }
        )
    first = next(iter(rows_by_beta.values()))[0]
    summary = {
        "start": {"proxy": first.get(PROXY), "gold": first.get(GOLD)},
        "runs": runs,
        "samples": samples,
    }

    def lines(key):
        out = []
        for b, rows in rows_by_beta.items():
            xs, ys = series(rows, key)
            out.append((f"beta = {b:g}", xs, smooth(ys, 3)))
        return out

    plots_dir = ctx.out / "plots"
    line_plot(
        plots_dir / "proxy.png", "Learned reward (proxy)", "episode", "normalised RM score", lines(PROXY)
    )
    line_plot(plots_dir / "kl.png", "KL to the SFT reference", "episode", "KL (nats per response)", lines(KL))
    line_plot(plots_dir / "gold.png", "Gold score", "episode", "mean gold score", lines(GOLD))

    def finals(key, fmt):
        return ", ".join(f"beta = {r['kl_coef']:g}: {format(r[key], fmt)}" for r in runs)

    plots = {
        "proxy.png": "Reward-model score of each PPO batch (moving average of 3 updates) per beta; final "
        f"({finals('final_proxy', '+.2f')}).",
        "kl.png": f"KL of the policy to the SFT reference per beta; final ({finals('final_kl', '.2f')}).",
        "gold.png": f"Gold score of the same responses, from {first.get(GOLD):+.2f}; final "
        f"({finals('final_gold', '+.2f')}).",
    }
    return finish(ctx, NAME, DESCRIPTION, summary, plots)
