"""`rlhf experiment pooling`: the reward model reads its score at the last token (the EOS) or averages all tokens.

Sub-runs: runs/sft (unless --sft), runs/rm-last and runs/rm-mean (`rlhf reward --pooling last|mean`, the same
pairs: the built-in task, or `--data FILE` such as HH-RLHF). Accuracy and calibration (ECE) on the held-out pairs.
"""

from __future__ import annotations

from rlhf.config import PoolingConfig
from rlhf.experiments.common import (
    bar_plot,
    begin,
    finish,
    line_plot,
    reliability_plot,
    reward_run,
    series,
    sft_run,
)
from rlhf.metrics import read_metrics

NAME = "pooling"
DESCRIPTION = (
    "Two reward models trained on the same pairs from the same SFT checkpoint, one reading the score at the last "
    "real token (the appended EOS, which has attended to the whole response), one averaging the head over every "
    "real token. Compared on held-out pairs: accuracy, mean margin, gold agreement (built-in task) and expected "
    "calibration error of sigmoid(r+ - r-)."
)
POOLINGS = ("last", "mean")


def run(cfg: PoolingConfig) -> dict:
    ctx = begin(cfg, NAME)
    sft = sft_run(ctx)
    runs, rows_by, reliability = [], {}, {}
    for pooling in POOLINGS:
        _, s = reward_run(ctx, f"rm-{pooling}", sft, data=cfg.data, keys=cfg.keys, pooling=pooling)
        rows_by[pooling] = read_metrics(ctx.out / "metrics" / f"rm-{pooling}.jsonl")
        reliability[f"{pooling} pooling (ECE {s['ece']:.3f})"] = s["reliability"]
        runs.append(
            {
                "pooling": pooling,
                "accuracy": s["accuracy"],
                "ece": s["ece"],
                "margin": s["margin"],
                "gold_agreement": s.get("gold_agreement"),
                "n_heldout_pairs": s["n_pairs"],
                "n_truncated": s["n_truncated"],
            }
        )
    summary = {"data": str(cfg.data) if cfg.data else "built-in task", "runs": runs}
    plots_dir = ctx.out / "plots"
    bar_plot(
        plots_dir / "accuracy_ece.png",
        "Held-out accuracy and ECE by pooling",
        [r["pooling"] for r in runs],
        {"accuracy": [r["accuracy"] for r in runs], "ECE": [r["ece"] for r in runs]},
        ylabel="fraction (accuracy and ECE, both in [0, 1])",
    )
    line_plot(
        plots_dir / "eval_accuracy.png",
        "Held-out accuracy during training",
        "optimiser step",
        "accuracy (fraction of held-out pairs)",
        [(f"{p} pooling", *series(rows, "eval/accuracy", x="step")) for p, rows in rows_by.items()],
    )
    reliability_plot(plots_dir / "reliability.png", "Reliability on held-out pairs", reliability)
    last, mean = runs
    plots = {
        "accuracy_ece.png": f"Held-out accuracy (last {last['accuracy']:.3f}, mean {mean['accuracy']:.3f}) and "
        f"expected calibration error (last {last['ece']:.3f}, mean {mean['ece']:.3f}).",
        "eval_accuracy.png": "Held-out accuracy at each evaluation during reward-model training.",
        "reliability.png": "Observed share of pairs where the chosen response was preferred, against the "
        "predicted probability sigmoid(r+ - r-), per bin: the diagonal is perfect calibration.",
    }
    return finish(ctx, NAME, DESCRIPTION, summary, plots)
