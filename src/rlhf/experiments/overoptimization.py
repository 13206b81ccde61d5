"""`rlhf experiment overoptimization`: gold and proxy reward against sqrt(KL) for a length-biased reward model.

Sub-runs: runs/sft (unless --sft), runs/reward (unless --reward: pairs labelled by an annotator who likes longer
answers, `--task.length-bias`), runs/ppo (a small beta, so the policy travels far), runs/ppo-compare.
Every PPO update gives one point (sqrt of its mean KL to the reference, its gold score, its proxy score); the
points are averaged in equal-count bins along training to draw the curve, as in Gao et al. (2022), "Scaling
laws for reward model overoptimization".
"""

from __future__ import annotations

import math
from pathlib import Path

from rlhf.config import OverOptimizationConfig, TaskConfig
from rlhf.experiments.common import (
    GOLD,
    KL,
    LENGTH,
    PROXY,
    _plt,
    _save,
    begin,
    compare_run,
    finish,
    line_plot,
    ppo_run,
    reward_run,
    series,
    sft_run,
    tail_mean,
)

NAME = "overoptimization"
DESCRIPTION = (
    "A reward model trained on pairs from an annotator biased toward longer answers is optimised by PPO with a "
    "small KL coefficient. Plotted against the square root of the policy's KL to the reference (a distance "
    "travelled), the proxy reward keeps rising, while the gold score rises while PPO removes what both agree is "
    "bad, peaks, and falls once the policy buys proxy reward with length the gold judge penalises."
)


def binned_curve(rows: list[dict], n_bins: int) -> list[dict]:
    """Per-update (sqrt KL, gold, proxy) averaged over `n_bins` consecutive, equal-count groups of updates."""
    pts = [
        (math.sqrt(max(r[KL], 0.0)), r[GOLD], r[PROXY], r.get(LENGTH))
        for r in rows
        if r.get(KL) is not None and r.get(GOLD) is not None and r.get(PROXY) is not None
    ]
    n_bins = max(1, min(n_bins, len(pts)))
    curve = []
    for b in range(n_bins):
        chunk = pts[b * len(pts) // n_bins : (b + 1) * len(pts) // n_bins]
        curve.append(
            {
                "sqrt_kl": sum(p[0] for p in chunk) / len(chunk),
                "gold": sum(p[1] for p in chunk) / len(chunk),
                "proxy": sum(p[2] for p in chunk) / len(chunk),
                "mean_length": sum(p[3] or 0.0 for p in chunk) / len(chunk),
                "updates": len(chunk),
            }
        )
    return curve


def peak_of(curve: list[dict]) -> dict:
    """Where the gold curve peaks, and whether that is before the last point while proxy still rises past it."""
    i = max(range(len(curve)), key=lambda k: curve[k]["gold"])
    return {
        "index": i,
        "sqrt_kl": curve[i]["sqrt_kl"],
        "gold": curve[i]["gold"],
        "gold_peaks_before_end": i < len(curve) - 1,
        "proxy_rises_after_peak": curve[-1]["proxy"] > curve[i]["proxy"],
        "gold_drop_after_peak": curve[i]["gold"] - curve[-1]["gold"],
    }


def run(cfg: OverOptimizationConfig) -> dict:
    ctx = begin(cfg, NAME)
    sft = sft_run(ctx)
    if cfg.reward is not None:
        reward, rm = Path(cfg.reward), {}
    else:
        reward, rm = reward_run(ctx, "reward", sft, task=TaskConfig(length_bias=cfg.length_bias))
    policy, rows = ppo_run(ctx, "ppo", sft, reward, kl_coef=cfg.kl_coef)
    cmp = compare_run(ctx, "ppo", sft, policy, reward)
    curve = binned_curve(rows, 8 if cfg.quick else 12)
    peak = peak_of(curve)
    summary = {
        "runs": [
            {
                "kl_coef": cfg.kl_coef,
                "length_bias": cfg.length_bias,
                "final_kl": tail_mean(rows, KL),
                "final_proxy": tail_mean(rows, PROXY),
                "final_gold": tail_mean(rows, GOLD),
                "final_mean_length": tail_mean(rows, LENGTH),
                "peak_gold": peak["gold"],
                "peak_sqrt_kl": peak["sqrt_kl"],
            }
        ],
        "peak": peak,
        "rm_accuracy": rm.get("accuracy"),
        "rm_gold_agreement": rm.get("gold_agreement"),
        "heldout": {k: cmp.get(k) for k in ("gold_sft", "gold_ppo", "length_sft", "length_ppo", "kl_ppo")},
        "curve": curve,
        "samples": {"SFT vs PPO (held-out prompts)": cmp["samples"][:8]},
    }

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    raw = [(math.sqrt(max(r[KL], 0.0)), r[GOLD], r[PROXY]) for r in rows if r.get(GOLD) is not None]
    xs = [c["sqrt_kl"] for c in curve]
    ax.scatter([p[0] for p in raw], [p[1] for p in raw], s=6, alpha=0.25, color="tab:orange")
    ax.plot(xs, [c["gold"] for c in curve], marker="o", color="tab:orange", label="gold score (left)")
    ax.plot([peak["sqrt_kl"]], [peak["gold"]], marker="*", markersize=16, color="crimson", linestyle="none")
    ax.annotate(
        f"gold peak {peak['gold']:+.2f}\nat sqrt(KL) {peak['sqrt_kl']:.2f}",
        (peak["sqrt_kl"], peak["gold"]),
        textcoords="offset points",
        xytext=(8, -28),
        fontsize=8,
        color="crimson",
    )
    ax.set_xlabel("sqrt(KL to the SFT reference)  (nats^0.5)")
    ax.set_ylabel("gold score", color="tab:orange")
    ax2 = ax.twinx()
    ax2.scatter([p[0] for p in raw], [p[2] for p in raw], s=6, alpha=0.25, color="tab:blue")
    ax2.plot(xs, [c["proxy"] for c in curve], marker="s", color="tab:blue", label="proxy reward (right)")
    ax2.set_ylabel("proxy reward (normalised RM score)", color="tab:blue")
    ax.set_title(f"Over-optimisation: length-biased RM (bias {cfg.length_bias:g}), beta {cfg.kl_coef:g}")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    _save(fig, plt, ctx.out / "plots" / "gold_proxy_vs_sqrt_kl.png")
    line_plot(
        ctx.out / "plots" / "length.png",
        "Response length during PPO",
        "episode",
        "mean length (tokens)",
        [("length", *series(rows, LENGTH))],
    )
    plots = {
        "gold_proxy_vs_sqrt_kl.png": f"Gold (orange, left axis) and proxy (blue, right axis) against sqrt(KL); "
        f"dots are PPO updates, lines their {len(curve)}-bin means. Gold peaks at {peak['gold']:+.2f} "
        f"(sqrt KL {peak['sqrt_kl']:.2f}, point {peak['index'] + 1} of {len(curve)}) and ends at "
        f"{curve[-1]['gold']:+.2f}; proxy goes from {curve[0]['proxy']:+.2f} to {curve[-1]['proxy']:+.2f}.",
        "length.png": f"Mean response length per PPO batch: from {curve[0]['mean_length']:.1f} to "
        f"{curve[-1]['mean_length']:.1f} tokens (bin means): what the length-biased reward model pays for.",
    }
    return finish(ctx, NAME, DESCRIPTION, summary, plots)
