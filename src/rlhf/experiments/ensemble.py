"""`rlhf experiment ensemble`: the over-optimisation curve (gold and proxy against sqrt(KL)) of PPO against a single
reward model and against reward-model ensembles of each size with each reduction (issue 22, item 4).

Sub-runs: runs/sft (unless --sft); runs/reward-1 (one reward model on all the pairs); runs/reward-<K> for the largest
K (`rlhf reward --ensemble K`: K members, each on its own bootstrap resample of the same pairs, seed + k); each
smaller ensemble runs/reward-<k> is the first k members of that one (copied, with its own config.json and
`rlhf reward eval` summary), so the sizes differ only by the members added. Then one PPO run per reward: `single`,
and `ens<K>-<reduction>` for each size and reduction (PPO's --ensemble-reduce), all from the same SFT checkpoint
at the same small beta; each followed by `rlhf compare` on held-out prompts (the proxy there is the same reduced
score). The curves are the over-optimisation experiment's (`binned_curve`, `peak_of`): every update is a point
(sqrt KL, gold, proxy), averaged in equal-count bins along training; a run's gold peak is the highest bin.

Coste et al. (2023), "Reward model ensembles help mitigate overoptimization"; Eisenstein et al. (2023), "Helping or
herding? Reward model ensembles mitigate but do not eliminate reward hacking".
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

from rlhf.checkpoint import read_json, write_json
from rlhf.config import CompareConfig, EnsembleExperimentConfig, RewardConfig, RewardEvalConfig, TaskConfig
from rlhf.eval.compare import run_compare
from rlhf.experiments.common import (
    GOLD,
    KL,
    PROXY,
    Ctx,
    _plt,
    _save,
    bar_plot,
    begin,
    export_metrics,
    finish,
    line_plot,
    ppo_run,
    reward_run,
    series,
    sft_run,
    smooth,
    tail_mean,
)
from rlhf.experiments.overoptimization import binned_curve, peak_of
from rlhf.stages.common import say
from rlhf.stages.reward import run_reward_eval, train_reward

NAME = "ensemble"
DESCRIPTION = (
    "PPO with a small KL coefficient against one reward model and against ensembles of reward models (each "
    "member on its own bootstrap resample of the same pairs), with each way of reducing the members' scores to "
    "one: mean, min (worst case) and mean minus std (uncertainty-penalised). Plotted against sqrt(KL to the SFT "
    "reference), the gold score rises, peaks and falls as the policy over-optimises its proxy; the literature "
    "(Coste et al. 2023) finds that an ensemble, and most of all a conservative reduction, peaks higher or later."
)
STD = "objective/ensemble_std"


def run_name(size: int, reduction: str | None) -> str:
    return "single" if size == 1 else f"ens{size}-{reduction}"


def ensemble_run(ctx: Ctx, name: str, sft: Path, task: TaskConfig, k: int) -> tuple[Path, dict]:
    """`rlhf reward --ensemble k` from the SFT checkpoint under runs/<name>, the setting's size (as `reward_run`);
    each member's metrics go to metrics/<name>-member-<i>.jsonl."""
    s = ctx.setting
    out = ctx.runs / name
    say(f"== reward model ensemble: {name} ({k} members)")
    summary = train_reward(
        RewardConfig(
            out=out,
            init=sft,
            task=dataclasses.replace(task, n_train=s.rm_pairs, n_eval=s.eval_pairs),
            epochs=s.rm_epochs,
            ensemble=k,
            **ctx.common(),
        )
    )
    for m in read_json(out / "config.json")["ensemble"]["members"]:
        export_metrics(ctx, f"{name}-{m}", out / m)
    return out, summary


def subset_ensemble(src: Path, dst: Path, k: int) -> Path:
    """The first `k` members of the ensemble run directory `src` as an ensemble of its own in `dst` (members
    copied, so `dst` stands alone; config.json lists them with their statistics)."""
    config = read_json(src / "config.json")
    spec = config["ensemble"]
    assert not spec.get("shared_trunk") and spec["size"] >= k, f"{src}: cannot take {k} members of {spec}"
    dst.mkdir(parents=True, exist_ok=True)
    for name in spec["members"][:k]:
        shutil.copytree(src / name, dst / name, dirs_exist_ok=True)
    config["ensemble"] = {
        **spec,
        "size": k,
        "members": spec["members"][:k],
        "reward_norm": spec["reward_norm"][:k],
    }
    config["subset_of"] = str(src)
    write_json(dst / "config.json", config)
    return dst


def peak_se(rows: list[dict], n_bins: int, index: int) -> float | None:
    """Standard error of the gold score of bin `index` of `binned_curve(rows, n_bins)`: the std of its updates'
    gold means over sqrt(their count) (None with fewer than 2 updates)."""
    gold = [
        r[GOLD]
        for r in rows
        if r.get(KL) is not None and r.get(GOLD) is not None and r.get(PROXY) is not None
    ]
    n_bins = max(1, min(n_bins, len(gold)))
    chunk = gold[index * len(gold) // n_bins : (index + 1) * len(gold) // n_bins]
    if len(chunk) < 2:
        return None
    m = sum(chunk) / len(chunk)
    return math.sqrt(sum((g - m) ** 2 for g in chunk) / (len(chunk) - 1) / len(chunk))


def gold_at(curve: list[dict], x: float) -> float:
    """The gold score of a binned curve at sqrt KL = `x`: linear between its bins ordered by sqrt KL (the ends held
    flat), so runs that travelled different distances are compared at the same one (Gao et al.'s x-axis)."""
    pts = sorted((c["sqrt_kl"], c["gold"]) for c in curve)
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return pts[-1][1]


def verdict(rows: list[dict], common: float | None = None) -> dict:
    """Whether an ensemble's gold peak is at least the single model's, with the gap and its noise, in words."""
    single = next((r for r in rows if r["size"] == 1), None)
    ens = [r for r in rows if r["size"] > 1]
    if single is None or not ens:
        return {"note": "no single reward model and ensemble to compare (see --sizes)"}
    best = max(ens, key=lambda r: r["peak_gold"])
    gap = best["peak_gold"] - single["peak_gold"]
    noise = math.sqrt((best["peak_gold_se"] or 0.0) ** 2 + (single["peak_gold_se"] or 0.0) ** 2)
    at_least = [r["run"] for r in ens if r["peak_gold"] >= single["peak_gold"]]
    if gap >= 0:
        how = "clearly" if gap > 2 * noise else "but within noise (less than 2 standard errors)"
        note = (
            f"{best['run']}'s gold peak {best['peak_gold']:+.3f} (sqrt KL {best['peak_sqrt_kl']:.2f}) is at least "
            f"the single model's {single['peak_gold']:+.3f} (sqrt KL {single['peak_sqrt_kl']:.2f}), {how}: "
            f"+{gap:.3f} vs a standard error of {noise:.3f}. Ensemble runs at or above the single model: "
            f"{len(at_least)} of {len(ens)}."
        )
    else:
        note = (
            f"It was not: no ensemble's gold peak reached the single model's {single['peak_gold']:+.3f}; the best, "
            f"{best['run']}, peaked at {best['peak_gold']:+.3f} ({gap:+.3f}, standard error {noise:.3f})."
        )
    if common is not None:  # gold at one distance: how fast each run lost (or gained) it
        at = sorted(rows, key=lambda r: r["gold_at_common_sqrt_kl"], reverse=True)
        note += (
            f" At the same sqrt KL {common:.2f} (the farthest every run reached) gold is "
            + ", ".join(f"{r['run']} {r['gold_at_common_sqrt_kl']:+.3f}" for r in at)
            + "."
        )
    return {
        "single_peak_gold": single["peak_gold"],
        "best_ensemble": best["run"],
        "best_ensemble_peak_gold": best["peak_gold"],
        "peak_gap": gap,
        "peak_gap_se": noise,
        "ensemble_peak_at_least_single": gap >= 0,
        "ensembles_at_least_single": at_least,
        "note": note,
    }


def run(cfg: EnsembleExperimentConfig) -> dict:
    ctx = begin(cfg, NAME)
    s = ctx.setting
    sft = sft_run(ctx)
    task = TaskConfig(length_bias=cfg.length_bias)

    # 1. Reward models: one on all the pairs; the largest ensemble once; smaller ensembles = its first members.
    rewards: dict[int, Path] = {}
    rm: dict[int, dict] = {}
    if 1 in cfg.sizes:
        rewards[1], rm[1] = reward_run(ctx, "reward-1", sft, task=task)
    ens_sizes = [k for k in cfg.sizes if k > 1]
    if ens_sizes:
        big = max(ens_sizes)
        rewards[big], rm[big] = ensemble_run(ctx, f"reward-{big}", sft, task, big)
        for k in ens_sizes[:-1]:
            rewards[k] = subset_ensemble(rewards[big], ctx.runs / f"reward-{k}", k)
            say(f"== reward eval: reward-{k} (the first {k} members of reward-{big})")
            rm[k] = run_reward_eval(
                RewardEvalConfig(
                    out=rewards[k] / "eval",
                    checkpoint=rewards[k],
                    task=TaskConfig(length_bias=cfg.length_bias, n_eval=s.eval_pairs),
                    **ctx.common(),
                )
            )

    # 2. PPO against each reward (single; each ensemble with each reduction), then compare on held-out prompts.
    specs = [
        (k, None) if k == 1 else (k, red) for k in cfg.sizes for red in ([None] if k == 1 else cfg.reductions)
    ]
    n_bins = 8 if cfg.quick else 12
    rows_of, table, curves = {}, [], {}
    for size, red in specs:
        name = run_name(size, red)
        reduce_opts = {"ensemble_reduce": red or "mean", "ensemble_lambda": cfg.ensemble_lambda}
        policy, rows = ppo_run(ctx, name, sft, rewards[size], kl_coef=cfg.kl_coef, **reduce_opts)
        say(f"== compare: {name}")
        cmp = run_compare(
            CompareConfig(
                out=ctx.runs / f"{name}-compare",
                sft=sft,
                policy=policy,
                reward=rewards[size],
                n_prompts=s.compare_prompts,
                samples_per_prompt=1,
                response_length=s.response_length,
                task=task,
                **reduce_opts,
                **ctx.common(),
            )
        )
        curve = binned_curve(rows, n_bins)
        peak = peak_of(curve)
        rows_of[name], curves[name] = rows, curve
        table.append(
            {
                "run": name,
                "size": size,
                "reduction": red or "-",
                "peak_gold": peak["gold"],
                "peak_gold_se": peak_se(rows, n_bins, peak["index"]),
                "peak_sqrt_kl": peak["sqrt_kl"],
                "peak_bin": peak["index"] + 1,
                "final_gold": tail_mean(rows, GOLD),
                "final_proxy": tail_mean(rows, PROXY),
                "final_sqrt_kl": math.sqrt(max(tail_mean(rows, KL) or 0.0, 0.0)),
                "final_ensemble_std": tail_mean(rows, STD),
                "heldout_gold": cmp.get("gold_ppo"),
                "heldout_gold_sft": cmp.get("gold_sft"),
                "heldout_gold_diff_ci95": cmp.get("gold_diff_ci95"),
                "heldout_proxy": cmp["proxy_ppo"],
                "heldout_kl": cmp["kl_ppo"],
                "rm_accuracy": rm[size].get("accuracy"),
                "rm_gold_agreement": rm[size].get("gold_agreement"),
                "_samples": cmp["samples"][:6],
            }
        )

    # 3. The table, ranked by gold peak (with each run's gold at the farthest distance every run reached); the
    #    verdict; the figures.
    common = min(max(c["sqrt_kl"] for c in curve) for curve in curves.values())
    for r in table:
        r["gold_at_common_sqrt_kl"] = gold_at(curves[r["run"]], common)
    table.sort(key=lambda r: r["peak_gold"], reverse=True)
    samples = {}
    for rank, r in enumerate(table, 1):
        r["rank"] = rank
        shown = r.pop("_samples")
        if rank == 1 or r["size"] == 1:
            samples[f"SFT vs {r['run']} (held-out prompts)"] = shown
    v = verdict(table, common)
    summary = {
        "runs": [{"rank": r.pop("rank"), **r} for r in table],
        "verdict": v,
        "common_sqrt_kl": common,
        # The final policies on held-out prompts: runs whose gold beat SFT's (95% CI of the difference above 0).
        "heldout_above_sft": [
            r["run"] for r in table if r["heldout_gold_diff_ci95"] and r["heldout_gold_diff_ci95"][0] > 0
        ],
        "kl_coef": cfg.kl_coef,
        "length_bias": cfg.length_bias,
        "sizes": cfg.sizes,
        "reductions": cfg.reductions,
        "ensemble_lambda": cfg.ensemble_lambda,
        "curves": curves,
        "samples": samples,
    }
    say(f"ensemble: {v['note']}")
    plots = _plots(ctx.out / "plots", table, curves, rows_of, cfg)
    return finish(ctx, NAME, DESCRIPTION, summary, plots)


def _plots(d: Path, table: list[dict], curves: dict, rows_of: dict, cfg: EnsembleExperimentConfig) -> dict:
    order = [r["run"] for r in table]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.6, 4.2), dpi=100)
    for r in table:
        c = curves[r["run"]]
        style = (
            {"color": "black", "linewidth": 2.2}
            if r["size"] == 1
            else {"linestyle": "-" if r["size"] >= 5 else "--"}
        )
        (line,) = ax.plot(
            [p["sqrt_kl"] for p in c], [p["gold"] for p in c], marker=".", label=r["run"], **style
        )
        ax.plot([r["peak_sqrt_kl"]], [r["peak_gold"]], marker="*", markersize=13, color=line.get_color())
    ax.set_xlabel("sqrt(KL to the SFT reference)  (nats^0.5)")
    ax.set_ylabel("gold score (bin mean)")
    ax.set_title(f"Gold vs sqrt(KL): single RM vs ensembles, beta {cfg.kl_coef:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, plt, d / "gold_vs_sqrt_kl.png")
    line_plot(
        d / "proxy_vs_sqrt_kl.png",
        "Proxy (the reward each run optimised) vs sqrt(KL)",
        "sqrt(KL to the SFT reference)  (nats^0.5)",
        "proxy: normalised RM score, reduced (bin mean)",
        [(n, [p["sqrt_kl"] for p in curves[n]], [p["proxy"] for p in curves[n]]) for n in order],
    )
    bar_plot(
        d / "peaks.png",
        "Gold peak and final gold per run (ranked by peak)",
        order,
        {
            "gold peak": [r["peak_gold"] for r in table],
            "final gold": [r["final_gold"] for r in table],
            "held-out gold": [r["heldout_gold"] for r in table],
        },
        ylabel="gold score",
    )
    best = table[0]
    plots = {
        "gold_vs_sqrt_kl.png": f"Gold score against sqrt(KL), one line per run ({len(next(iter(curves.values())))}"
        f"-bin means of the PPO updates; the single model in black), each run's peak starred. Highest peak: "
        f"{best['run']} at {best['peak_gold']:+.3f} (sqrt KL {best['peak_sqrt_kl']:.2f}).",
        "proxy_vs_sqrt_kl.png": "The proxy each run optimised (the single model's normalised score; an ensemble's "
        "reduced score, so a min or mean-minus-std proxy sits below the mean one by construction) against sqrt(KL).",
        "peaks.png": "Each run's gold peak (highest bin of its curve), final gold (mean over the last fifth of "
        "the updates) and held-out gold of the final policy (`rlhf compare`), ranked by peak; a peak is the maximum "
        "of noisy bins (its standard error, and the held-out 95% CI against SFT, are in the table).",
    }
    ens = [n for n in order if any(r.get(STD) is not None for r in rows_of[n])]
    if ens:
        line_plot(
            d / "disagreement.png",
            "Ensemble members' disagreement during PPO",
            "episode",
            "members' std of normalised score",
            [(n, xs, smooth(ys, 3)) for n in ens for xs, ys in [series(rows_of[n], STD)]],
        )
        plots["disagreement.png"] = (
            "objective/ensemble_std per PPO update (moving average of 3): the members' std of a completion's "
            "normalised score; rising = the policy moves where the members stop agreeing."
        )
    return plots
