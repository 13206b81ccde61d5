"""`rlhf experiment length-hack`: PPO against the flawed reward len(response)/100, with and without the KL leash.

Sub-runs: runs/sft (unless --sft), runs/reward (PPO's value model starts from it; it is also the proxy column of
the comparisons), runs/beta-<b> per beta (`rlhf ppo --reward-fn length --kl-coef b`), runs/beta-<b>-compare.
"""

from __future__ import annotations

from rlhf.config import LengthHackConfig
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
    tail_mean,
)

NAME = "length-hack"
DESCRIPTION = (
    "PPO maximises a flawed reward, len(response)/100 (rlhf ppo --reward-fn length), once without the KL "
    "penalty (beta = 0) and once with it. The gold judge, which prefers a concise correct answer, scores the same "
    "responses. Without the leash the policy learns to talk: length climbs toward the token budget and the gold "
    "score falls. With beta = 0.1 the KL penalty outweighs the few hundredths of reward a longer answer earns, so "
    "length stays near the SFT policy's."
)
RESPONSE_LENGTH = 64  # room to grow: the budget caps how far length can run


def run(cfg: LengthHackConfig) -> dict:
    ctx = begin(cfg, NAME)
    sft = sft_run(ctx)
    reward, _ = reward_run(ctx, "reward", sft)
    runs, rows_by_beta = [], {}
    for beta in cfg.betas:
        name = f"beta-{beta:g}"
        policy, rows = ppo_run(
            ctx, name, sft, reward, reward_fn="length", kl_coef=beta, response_length=RESPONSE_LENGTH
        )
        cmp = compare_run(ctx, name, sft, policy, reward, RESPONSE_LENGTH)
        rows_by_beta[beta] = rows
        runs.append(
            {
                "kl_coef": beta,
                "final_mean_length": tail_mean(rows, LENGTH),
                "final_gold": tail_mean(rows, GOLD),
                # Training KL is unmeasured at beta = 0 (no reference model is loaded); the held-out KL of the
                # comparison is measured for every run, on the same prompts.
                "final_kl": cmp["kl_ppo"],
                "final_length_reward": tail_mean(rows, PROXY),
                "heldout_gold": cmp.get("gold_ppo"),
                "heldout_length": cmp["length_ppo"],
                "samples": cmp["samples"][:6],
            }
        )
    first = next(iter(rows_by_beta.values()))[0]
    summary = {
        "start": {"mean_length": first.get(LENGTH), "gold": first.get(GOLD)},
        "runs": [{k: v for k, v in r.items() if k != "samples"} for r in runs],
        "samples": {f"beta = {r['kl_coef']:g}": r["samples"] for r in runs},
    }

    def lines(key):
        return [(f"beta = {b:g}", *series(rows, key)) for b, rows in rows_by_beta.items()]

    plots_dir = ctx.out / "plots"
    line_plot(plots_dir / "length.png", "Response length", "episode", "mean length (tokens)", lines(LENGTH))
    line_plot(plots_dir / "gold.png", "Gold score", "episode", "mean gold score", lines(GOLD))
    line_plot(plots_dir / "kl.png", "KL to the SFT reference", "episode", "KL (nats per response)", lines(KL))
    ends = ", ".join(f"beta = {r['kl_coef']:g}: {r['final_mean_length']:.1f}" for r in runs)
    golds = ", ".join(f"beta = {r['kl_coef']:g}: {r['final_gold']:+.2f}" for r in runs)
    kls = ", ".join(f"beta = {r['kl_coef']:g}: {r['final_kl']:.1f}" for r in runs)
    plots = {
        "length.png": f"Mean response length per PPO batch, from {first.get(LENGTH):.1f} tokens at the start; "
        f"final ({ends}).",
        "gold.png": f"Gold score of the same responses, from {first.get(GOLD):+.2f}: the truth beside the length "
        f"reward; final ({golds}).",
        "kl.png": f"KL of the policy to the SFT reference per response; final ({kls}).",
    }
    return finish(ctx, NAME, DESCRIPTION, summary, plots)
