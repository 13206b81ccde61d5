"""`rlhf experiment calibration`: a reward model's margins and calibration on its training pairs vs unseen pairs.

Sub-runs: runs/sft and runs/reward (unless --sft / --reward), then `rlhf reward eval` twice: runs/eval-train on
the first training pairs (written to runs/train-pairs.jsonl, the very pairs the model was trained on) and
runs/eval-unseen on the task's held-out pairs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlhf.config import CalibrationConfig, RewardEvalConfig, TaskConfig
from rlhf.errors import UserError
from rlhf.experiments.common import (
    bar_plot,
    begin,
    finish,
    reliability_plot,
    reward_run,
    sft_run,
    write_pairs,
)
from rlhf.stages.common import say
from rlhf.stages.reward import run_reward_eval
from rlhf.tasks import get_task, task_options

NAME = "calibration"
DESCRIPTION = (
    "How far to trust a reward model's scores: the mean reward of the preferred and of the rejected response and "
    "their difference (the margin), accuracy and expected calibration error of sigmoid(r+ - r-) as the probability "
    "that the chosen response is preferred, on pairs the model was trained on vs pairs it never saw. A gap "
    "between the two is memorisation; the reliability diagram shows whether confident scores are right as "
    "often as they claim."
)


def run(cfg: CalibrationConfig) -> dict:
    ctx = begin(cfg, NAME)
    if cfg.reward is not None:
        reward = Path(cfg.reward)
    else:
        reward, _ = reward_run(ctx, "reward", sft_run(ctx))
    # The reward model's own training data, regenerated from its resolved config (same task options and seed).
    rc = json.loads((reward / "config.json").read_text())["run_config"]
    if rc.get("data"):
        raise UserError(
            f"{reward}: trained on {rc['data']}; the calibration experiment needs the built-in task"
        )
    t = TaskConfig(**{k: v for k, v in rc["task"].items() if k in TaskConfig.__dataclass_fields__})
    n = min(t.n_train, ctx.setting.eval_pairs)
    task = get_task(t.name, seed=rc["seed"], **task_options(t))
    pairs_file = write_pairs(ctx.runs / "train-pairs.jsonl", task.preference_pairs(n, split="train"))

    results = {}
    for name, data in (("train", pairs_file), ("unseen", None)):
        say(f"== reward eval: {name} pairs")
        results[name] = run_reward_eval(
            RewardEvalConfig(
                out=ctx.runs / f"eval-{name}",
                checkpoint=reward,
                data=data,
                task=dataclasses.replace(t, n_eval=n),
                seed=rc["seed"],
                threads=cfg.threads,
                progress=cfg.progress,
            )
        )
    runs = [
        {
            "pairs": name,
            "n_pairs": s["n_pairs"],
            "reward_chosen": s["reward_chosen"],
            "reward_rejected": s["reward_rejected"],
            "margin": s["margin"],
            "accuracy": s["accuracy"],
            "ece": s["ece"],
        }
        for name, s in results.items()
    ]
    tr, un = runs
    for (
        name,
        res,
    ) in results.items():  # the reliability tables, one JSON line per bin, beside the RM's metrics
        path = ctx.out / "metrics" / f"reliability-{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in res["reliability"]))
    summary = {
        "runs": runs,
        "margin_gap": tr["margin"] - un["margin"],
        "accuracy_gap": tr["accuracy"] - un["accuracy"],
        "reliability": {name: s["reliability"] for name, s in results.items()},
    }
    plots_dir = ctx.out / "plots"
    bar_plot(
        plots_dir / "margins.png",
        "Mean rewards and margin: training vs unseen pairs",
        ["reward of chosen", "reward of rejected", "margin"],
        {r["pairs"]: [r["reward_chosen"], r["reward_rejected"], r["margin"]] for r in runs},
        ylabel="mean reward-model score",
    )
    bar_plot(
        plots_dir / "accuracy_ece.png",
        "Accuracy and ECE: training vs unseen pairs",
        ["accuracy", "ECE"],
        {r["pairs"]: [r["accuracy"], r["ece"]] for r in runs},
        ylabel="fraction (accuracy and ECE, both in [0, 1])",
    )
    reliability_plot(
        plots_dir / "reliability.png",
        "Reliability diagram",
        {f"{r['pairs']} pairs (ECE {r['ece']:.3f})": results[r["pairs"]]["reliability"] for r in runs},
    )
    plots = {
        "margins.png": f"Mean reward of the chosen and rejected responses and their difference: margin "
        f"{tr['margin']:.3f} on training pairs vs {un['margin']:.3f} on unseen ones.",
        "accuracy_ece.png": f"Accuracy ({tr['accuracy']:.3f} train, {un['accuracy']:.3f} unseen) and expected "
        f"calibration error ({tr['ece']:.3f} train, {un['ece']:.3f} unseen).",
        "reliability.png": "Observed share of pairs where the chosen response was preferred, against the "
        "predicted probability sigmoid(r+ - r-), per bin (both orderings of each pair): the diagonal is perfect "
        "calibration; below it is over-confidence.",
    }
    return finish(ctx, NAME, DESCRIPTION, summary, plots)
