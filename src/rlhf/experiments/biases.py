"""`rlhf experiment biases`: one arm per annotator bias (length, sycophancy, hedging, format) against a control.

Every arm shares one SFT checkpoint and one prompt distribution (premise prompts and decorated demonstrations on in
every arm, the control included); arms differ only in the annotator that labelled their reward model's pairs.

Sub-runs: runs/sft (unless --sft), runs/reward-<arm> per arm, runs/<arm>-beta-<b> (PPO) and runs/<arm>-beta-<b>-compare
(`rlhf compare` on held-out prompts with the same premise share) per arm and beta.

"The reward model learns the bias" is measured directly: on held-out pairs of the task where exactly one response has
the arm's property (`task.detect`), the share where the arm's reward model scores the flagged response higher, beside
the control reward model's share on the same pairs (and both on the subset where the gold judge prefers the other).
"""

from __future__ import annotations

from pathlib import Path

from rlhf.config import BiasesConfig, TaskConfig
from rlhf.data.pairs import encode_pairs
from rlhf.distributed import device
from rlhf.experiments.common import (
    GOLD,
    KL,
    LENGTH,
    PROXY,
    Ctx,
    bar_plot,
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
from rlhf.models.build import load_reward_ensemble
from rlhf.stages.common import say
from rlhf.stages.reward import score_pairs
from rlhf.tasks import BIASES, get_task, task_options

NAME = "biases"
DESCRIPTION = (
    "One arm per annotator bias - length (a length bonus), sycophancy (agreeing with a wrong premise), hedging and "
    "format (markdown decoration) - against an unbiased control, all from one SFT policy on one prompt "
    "distribution. Each arm's reward model is trained on pairs from an annotator with that bias; it learns the bias "
    "when it prefers the biased response of held-out pairs more often than the control's reward model does. PPO at "
    "a small beta then exploits it: the share of completions the arm's detector flags (the hack rate) rises, the "
    "proxy reward goes up and the gold score does not follow. At a larger beta the KL penalty holds the hack rate "
    "near the SFT policy's."
)
ARM_ORDER = ("control", "length", "sycophancy", "hedging", "format")
QUICK_LARGE_BETA_ARMS = ["hedging", "format"]  # the arms whose hack showed at --quick size


def arm_task(cfg: BiasesConfig, arm: str) -> TaskConfig:
    """The task of one arm: the shared prompt options, plus the arm's annotator bias (none for 'control')."""
    t = TaskConfig(
        premise_fraction=cfg.premise_fraction,
        format_fraction=cfg.format_fraction,
        agree_fraction=cfg.agree_fraction,
    )
    if arm == "length":
        t.length_bias = cfg.length_bias
    elif arm != "control":
        setattr(t, f"bias_{arm}", cfg.strength)
    return t


def run(cfg: BiasesConfig) -> dict:
    ctx = begin(cfg, NAME)
    shared = arm_task(cfg, "control")
    sft = sft_run(ctx, shared)
    arms = [a for a in ARM_ORDER if a in cfg.arms]
    large = cfg.large_beta_arms or (QUICK_LARGE_BETA_ARMS if cfg.quick else arms)
    small_beta, larger = cfg.betas[0], cfg.betas[1:]

    # 1. A reward model per arm, on pairs labelled by that arm's annotator.
    rewards, rm_summaries = {}, {}
    for arm in arms:
        rewards[arm], rm_summaries[arm] = reward_run(ctx, f"reward-{arm}", sft, arm_task(cfg, arm))

    # 2. What each reward model learned: its preference for the flagged response of held-out pairs.
    preference = rm_bias_preference(ctx, cfg, rewards)

    # 3. PPO per arm and beta, then `rlhf compare` on held-out prompts of the same distribution.
    runs, rows_of, samples = [], {}, {}
    for arm in arms:
        detector = BIASES.get(arm)
        for beta in [small_beta, *(larger if arm in large else [])]:
            name = f"{arm}-beta-{beta:g}"
            policy, rows = ppo_run(ctx, name, sft, rewards[arm], kl_coef=beta, task=shared)
            cmp = compare_run(ctx, name, sft, policy, rewards[arm], task=shared)
            rows_of[(arm, beta)] = rows
            samples[f"{arm}, beta = {beta:g}"] = cmp["samples"][:6]
            key = f"hack/{detector}_rate" if detector else None
            runs.append(
                {
                    "arm": arm,
                    "kl_coef": beta,
                    "detector": detector or "-",
                    "start_hack": rows[0].get(key) if key else None,
                    "final_hack": tail_mean(rows, key) if key else None,
                    "heldout_hack_sft": cmp["hack_sft"][key] if key else None,
                    "heldout_hack": cmp["hack_ppo"][key] if key else None,
                    "final_proxy": tail_mean(rows, PROXY),
                    "final_gold": tail_mean(rows, GOLD),
                    "final_kl": tail_mean(rows, KL),
                    "final_mean_length": tail_mean(rows, LENGTH),
                    "heldout_length": cmp["length_ppo"],
                    "heldout_eos_rate": cmp["eos_rate_ppo"],
                    "heldout_gold_sft": cmp.get("gold_sft"),
                    "heldout_gold": cmp.get("gold_ppo"),
                    "heldout_kl": cmp["kl_ppo"],
                    "heldout_hack_all": cmp["hack_ppo"],
                    "rm_prefers_biased": preference[arm].get(detector, {}).get("share") if detector else None,
                }
            )

    # 4. Per bias arm: the directions the experiment is about.
    def run_of(arm, beta):
        return next((r for r in runs if r["arm"] == arm and r["kl_coef"] == beta), None)

    findings = {}
    for arm in arms:
        detector = BIASES.get(arm)
        if detector is None:
            continue
        small = run_of(arm, small_beta)
        big = run_of(arm, cfg.betas[-1]) if len(cfg.betas) > 1 else None
        control = run_of("control", small_beta) if "control" in arms else None
        key = f"hack/{detector}_rate"
        f = {
            "detector": detector,
            "rm_prefers_biased": preference[arm][detector]["share"],
            "rm_prefers_biased_against_gold": preference[arm][detector]["share_against_gold"],
            "heldout_hack_sft": small["heldout_hack_sft"],
            "heldout_hack_small_beta": small["heldout_hack"],
            "final_hack_small_beta": small["final_hack"],
        }
        if "control" in preference:
            f["control_rm_prefers_biased"] = preference["control"][detector]["share"]
            f["control_rm_prefers_biased_against_gold"] = preference["control"][detector][
                "share_against_gold"
            ]
            f["rm_learned_bias"] = f["rm_prefers_biased"] > f["control_rm_prefers_biased"]
        if control is not None:
            f["control_heldout_hack_small_beta"] = control["heldout_hack_all"][key]
        if big is not None:
            f["heldout_hack_large_beta"] = big["heldout_hack"]
            f["final_hack_large_beta"] = big["final_hack"]
            f["hack_higher_at_small_beta"] = small["final_hack"] > big["final_hack"]
        findings[arm] = f

    summary = {
        "betas": cfg.betas,
        "large_beta_arms": [a for a in arms if a in large],
        "findings": findings,
        "rm_bias_preference": preference,
        "rm_accuracy": {arm: s.get("accuracy") for arm, s in rm_summaries.items()},
        "runs": [{k: v for k, v in r.items() if k != "heldout_hack_all"} for r in runs],
        "samples": samples,
    }
    plots = make_plots(ctx, cfg, arms, runs, rows_of, findings)
    return finish(ctx, NAME, DESCRIPTION, summary, plots)


def rm_bias_preference(ctx: Ctx, cfg: BiasesConfig, rewards: dict[str, Path]) -> dict:
    """{arm: {detector: {share, share_against_gold, n, n_against_gold}}}: on `n` held-out pairs per detector where
    exactly one response has its property, the share where the arm's reward model scores that response higher
    (`share_against_gold`: only pairs whose gold judge prefers the other response)."""
    n = cfg.bias_pairs or (400 if cfg.quick else 1000)
    # Every capital prompt with a premise here (premise_fraction 1), else too few pairs would put a sycophantic
    # answer beside another: pairs are drawn until each detector has `n` (or 20 n were drawn).
    options = task_options(arm_task(cfg, "control")) | {"premise_fraction": 1.0}
    task = get_task("instruct", seed=cfg.seed + 1, **options)
    by_detector = {detector: [] for detector in BIASES.values()}
    for p in task.preference_pairs(20 * n, split="test"):
        found = {r: task.detect(p["prompt"], p[r]) for r in ("chosen", "rejected")}
        for detector, rows in by_detector.items():
            if found["chosen"][detector] == found["rejected"][detector] or len(rows) >= n:
                continue
            flagged, other = ("chosen", "rejected") if found["chosen"][detector] else ("rejected", "chosen")
            rows.append(
                {
                    "prompt": p["prompt"],
                    "chosen": p[flagged],
                    "rejected": p[other],
                    "against_gold": p[f"gold_{flagged}"] < p[f"gold_{other}"],
                }
            )
        if all(len(rows) >= n for rows in by_detector.values()):
            break
    out = {}
    for arm, path in rewards.items():
        say(f"== reward model bias preference: {arm}")
        model, tok, config, _ = load_reward_ensemble(path)
        model.to(device())
        max_length = config.get("max_length", 256)
        out[arm] = {}
        for detector, rows in by_detector.items():
            if not rows:
                continue
            c, r = score_pairs(model, tok, encode_pairs(tok, rows, max_length))
            prefers = (c[0] > r[0]).tolist()
            against = [row["against_gold"] for row in rows]
            k = sum(against)
            out[arm][detector] = {
                "share": sum(prefers) / len(rows),
                "share_against_gold": (sum(x for x, a in zip(prefers, against) if a) / k) if k else None,
                "n": len(rows),
                "n_against_gold": k,
            }
    return out


def make_plots(ctx: Ctx, cfg: BiasesConfig, arms, runs, rows_of, findings) -> dict[str, str]:
    plots_dir = ctx.out / "plots"
    bias_arms = [a for a in arms if a in findings]
    small_beta = cfg.betas[0]

    # Hack rate of each arm's own detector over PPO updates, per beta.
    lines = []
    for (arm, beta), rows in rows_of.items():
        if arm in findings:
            xs, ys = series(rows, f"hack/{findings[arm]['detector']}_rate")
            lines.append((f"{arm} ({findings[arm]['detector']}), beta = {beta:g}", xs, smooth(ys, 3)))
    line_plot(
        plots_dir / "hack_rate.png", "Hack rate under PPO", "episode", "share of completions flagged", lines
    )
    ends = "; ".join(
        f"{r['arm']} beta = {r['kl_coef']:g}: {r['start_hack']:.2f} -> {r['final_hack']:.2f}"
        for r in runs
        if r["final_hack"] is not None
    )

    # The reward models' preference for the biased response, arm vs control.
    bars = {"arm's reward model": [findings[a]["rm_prefers_biased"] for a in bias_arms]}
    if "control" in arms:
        bars["control reward model"] = [findings[a]["control_rm_prefers_biased"] for a in bias_arms]
    labels = [f"{a}\n({findings[a]['detector']})" for a in bias_arms]
    bar_plot(
        plots_dir / "rm_bias.png",
        "Reward model prefers the biased response",
        labels,
        bars,
        ylabel="share of held-out pairs",
    )
    prefs = ", ".join(
        f"{a}: {findings[a]['rm_prefers_biased']:.2f}"
        + (
            f" vs {findings[a]['control_rm_prefers_biased']:.2f}"
            if "control_rm_prefers_biased" in findings[a]
            else ""
        )
        for a in bias_arms
    )

    # Held-out hack rate: SFT, the control's PPO policy and the arm's PPO policy (small beta), and the larger beta.
    held = {"SFT": [findings[a]["heldout_hack_sft"] for a in bias_arms]}
    if "control" in arms:
        held[f"control RM, beta = {small_beta:g}"] = [
            findings[a]["control_heldout_hack_small_beta"] for a in bias_arms
        ]
    held[f"arm's RM, beta = {small_beta:g}"] = [findings[a]["heldout_hack_small_beta"] for a in bias_arms]
    if len(cfg.betas) > 1 and all("heldout_hack_large_beta" in findings[a] for a in bias_arms):
        held[f"arm's RM, beta = {cfg.betas[-1]:g}"] = [
            findings[a]["heldout_hack_large_beta"] for a in bias_arms
        ]
    bar_plot(
        plots_dir / "heldout_hack.png",
        "Hack rate on held-out prompts",
        labels,
        held,
        ylabel="share of completions flagged",
    )

    # Gold vs proxy per arm at the small beta (and the larger one where it ran).
    smalls = [next(r for r in runs if r["arm"] == a and r["kl_coef"] == small_beta) for a in arms]
    bar_plot(
        plots_dir / "gold_proxy.png",
        f"Proxy and gold at the end of PPO (beta = {small_beta:g})",
        list(arms),
        {
            "proxy (normalised RM score)": [r["final_proxy"] for r in smalls],
            "gold": [r["final_gold"] for r in smalls],
            "gold of SFT (held-out)": [r["heldout_gold_sft"] for r in smalls],
        },
        ylabel="score",
    )
    large_runs = [r for r in runs if r["kl_coef"] != small_beta and r["heldout_hack"] is not None]
    large_caption = (
        "; at the larger beta: " + ", ".join(f"{r['arm']} {r['heldout_hack']:.2f}" for r in large_runs)
        if large_runs
        else ""
    )
    golds = ", ".join(
        f"{r['arm']}: proxy {r['final_proxy']:+.2f}, gold {r['final_gold']:+.2f}" for r in smalls
    )
    return {
        "rm_bias.png": "Share of held-out pairs (exactly one response with the property) where the reward model "
        f"scores the biased response higher, each arm's model vs the control's ({prefs}).",
        "hack_rate.png": "Share of PPO completions flagged by each arm's own detector over training (moving average "
        f"of 3 updates), per beta; first update -> final ({ends}).",
        "heldout_hack.png": "The same detectors on held-out prompts (rlhf compare): the SFT policy, the PPO policy "
        f"against the control reward model and against the arm's biased one{large_caption}.",
        "gold_proxy.png": f"Final proxy reward and gold score of each arm's PPO run at beta = {small_beta:g} beside "
        f"the SFT policy's gold ({golds}).",
    }
