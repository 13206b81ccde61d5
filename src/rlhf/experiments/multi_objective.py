"""`rlhf experiment multi-objective`: helpfulness + conciseness reward models combined, vs helpfulness alone.

Sub-runs: runs/sft (unless --sft); runs/rm-helpful and runs/rm-concise, reward models trained on pairs labelled by
the `helpful` and the `concise` part of the gold judge (`--task.label-by`); runs/helpful-only (PPO on the helpful
RM) and runs/combined (PPO on `w_h * R_helpful + w_c * R_concise`, `rlhf ppo --extra-rewards --reward-weights`),
each with a -compare run on held-out prompts.
"""

from __future__ import annotations

from rlhf.config import MultiObjectiveConfig, TaskConfig
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

NAME = "multi-objective"
DESCRIPTION = (
    "The gold judge's 'helpful' part mildly rewards fuller answers (a verbosity bonus), its 'concise' part rewards "
    "brevity alone. A reward model trained on helpfulness labels alone leads PPO into the verbosity trap: longer "
    "answers that the full gold judge scores lower. Adding a conciseness reward model, R = w_h*R_helpful + "
    "w_c*R_concise (each normalised), keeps answers short at no cost in gold score."
)


def run(cfg: MultiObjectiveConfig) -> dict:
    ctx = begin(cfg, NAME)
    sft = sft_run(ctx)
    rm_h, sum_h = reward_run(ctx, "rm-helpful", sft, task=TaskConfig(label_by="helpful"))
    rm_c, sum_c = reward_run(ctx, "rm-concise", sft, task=TaskConfig(label_by="concise"))
    variants = {
        "helpful-only": {},
        "combined": {"extra_rewards": [rm_c], "reward_weights": [cfg.helpful_weight, cfg.concise_weight]},
    }
    runs, rows_by_run, samples = [], {}, {}
    for name, extra in variants.items():
        policy, rows = ppo_run(ctx, name, sft, rm_h, **extra)
        cmp = compare_run(ctx, name, sft, policy, rm_h)
        rows_by_run[name] = rows
        samples[name] = cmp["samples"][:6]
        weights = extra.get("reward_weights", [1.0, 0.0])
        runs.append(
            {
                "run": name,
                "helpful_weight": weights[0],
                "concise_weight": weights[1],
                "final_mean_length": tail_mean(rows, LENGTH),
                "final_gold": tail_mean(rows, GOLD),
                "final_kl": tail_mean(rows, KL),
                "final_reward": tail_mean(rows, PROXY),
                "heldout_gold": cmp.get("gold_ppo"),
                "heldout_length": cmp["length_ppo"],
            }
        )
    first = rows_by_run["helpful-only"][0]
    summary = {
        "start": {"mean_length": first.get(LENGTH), "gold": first.get(GOLD)},
        "runs": runs,
        "reward_models": {
            "helpful": {k: sum_h.get(k) for k in ("accuracy", "gold_agreement", "ece")},
            "concise": {k: sum_c.get(k) for k in ("accuracy", "gold_agreement", "ece")},
        },
        "samples": samples,
    }

    def lines(key):
        return [(name, *_smoothed(rows, key)) for name, rows in rows_by_run.items()]

    plots_dir = ctx.out / "plots"
    line_plot(plots_dir / "length.png", "Response length", "episode", "mean length (tokens)", lines(LENGTH))
    line_plot(plots_dir / "gold.png", "Gold score", "episode", "mean gold score", lines(GOLD))
    combined = rows_by_run["combined"]
    line_plot(
        plots_dir / "combined_parts.png",
        "Combined run: each reward model's score",
        "episode",
        "normalised RM score",
        [
            ("R_helpful", *_smoothed(combined, "objective/scores_0")),
            ("R_concise", *_smoothed(combined, "objective/scores_1")),
        ],
    )
    h, c = runs
    plots = {
        "length.png": f"Mean response length per PPO batch (moving average of 3 updates): helpful-only ends at "
        f"{h['final_mean_length']:.1f} tokens, combined at {c['final_mean_length']:.1f}.",
        "gold.png": f"Gold score of the same responses: helpful-only ends at {h['final_gold']:+.2f}, combined at "
        f"{c['final_gold']:+.2f}.",
        "combined_parts.png": "The two reward models' normalised scores inside the combined run "
        f"(weights {cfg.helpful_weight:g} and {cfg.concise_weight:g}).",
    }
    return finish(ctx, NAME, DESCRIPTION, summary, plots)


def _smoothed(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = series(rows, key)
    return xs, smooth(ys, 3)
