"""What the experiments share: the quick and default settings, sub-runs through the stages, metrics export,
plots, and the summary + report at the end.

Every sub-run is a normal run directory under `DIR/runs/<name>/`, written by the stage functions themselves
(`train_sft`, `train_reward`, `train_ppo`, `run_compare`, `run_reward_eval`): nothing here trains by itself. The
metrics an experiment plots are copied to `DIR/metrics/<run>.jsonl`, its figures go to `DIR/plots/*.png`, its key
figures to `DIR/summary.json`, and `report.html` is built from those files.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rlhf.checkpoint import write_json
from rlhf.config import (
    CompareConfig,
    DataKeys,
    ExperimentConfig,
    OptimConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
    TaskConfig,
)
from rlhf.eval.compare import run_compare
from rlhf.eval.report import build_report
from rlhf.metrics import read_metrics
from rlhf.models.gpt import GPTConfig
from rlhf.stages.common import config_dict, say, setup_run
from rlhf.stages.ppo import train_ppo
from rlhf.stages.reward import train_reward
from rlhf.stages.sft import train_sft


@dataclass(frozen=True)
class Setting:
    """How big an experiment's sub-runs are."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    sft_steps: int
    sft_batch: int
    sft_lr: float
    rm_pairs: int
    rm_epochs: float
    eval_pairs: int
    episodes: int
    rollout_batch: int
    ppo_lr: float
    response_length: int
    value_model: str
    compare_prompts: int


# --quick: a 2-layer, 64-wide GPT and short runs - under 2 minutes per experiment on 2 idle cores at 1 thread.
QUICK = Setting(
    name="quick",
    n_layer=2,
    n_embd=64,
    n_head=4,
    sft_steps=400,
    sft_batch=32,
    sft_lr=5e-3,
    rm_pairs=1000,
    rm_epochs=1.0,
    eval_pairs=200,
    episodes=1024,
    rollout_batch=32,
    ppo_lr=5e-4,
    response_length=32,
    value_model="shared",
    compare_prompts=64,
)
# The default setting: the demo's model size and longer runs, so each effect shows clearly (minutes each).
FULL = Setting(
    name="default",
    n_layer=4,
    n_embd=128,
    n_head=4,
    sft_steps=500,
    sft_batch=32,
    sft_lr=3e-3,
    rm_pairs=2000,
    rm_epochs=2.0,
    eval_pairs=400,
    episodes=2048,
    rollout_batch=64,
    ppo_lr=1e-4,
    response_length=32,
    value_model="separate",
    compare_prompts=256,
)

# The PPO metrics the experiments read and plot (names from docs/metrics.md).
GOLD, PROXY, KL, LENGTH = "gold/score", "objective/scores", "objective/kl", "completions/mean_length"


@dataclass
class Ctx:
    """One experiment in progress: its config, setting, directory and clock."""

    cfg: ExperimentConfig
    setting: Setting
    out: Path
    t0: float

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    def common(self) -> dict:
        return {"seed": self.cfg.seed, "threads": self.cfg.threads, "progress": self.cfg.progress}


def begin(cfg: ExperimentConfig, name: str) -> Ctx:
    out = setup_run(cfg)
    s = QUICK if cfg.quick else FULL
    if cfg.episodes > 0:
        s = dataclasses.replace(s, episodes=cfg.episodes)
    say(f"== experiment {name} ({s.name} setting) -> {out}")
    return Ctx(cfg, s, out, time.time())


def sft_run(ctx: Ctx, task: TaskConfig | None = None) -> Path:
    """The experiment's SFT checkpoint: --sft when given, else a fresh one under runs/sft (on `task`'s
    demonstrations; none = the default task)."""
    if ctx.cfg.sft is not None:
        return Path(ctx.cfg.sft)
    s = ctx.setting
    out = ctx.runs / "sft"
    say("== SFT")
    train_sft(
        SFTConfig(
            out=out,
            arch=GPTConfig(n_layer=s.n_layer, n_embd=s.n_embd, n_head=s.n_head),
            batch_size=s.sft_batch,
            max_steps=s.sft_steps,
            optim=OptimConfig(lr=s.sft_lr),
            task=dataclasses.replace(task or TaskConfig(), n_eval=100),
            gold_samples=64,
            **ctx.common(),
        )
    )
    return out


def reward_run(
    ctx: Ctx,
    name: str,
    sft: Path,
    task: TaskConfig | None = None,
    data: Path | None = None,
    keys: DataKeys | None = None,
    **overrides,
) -> tuple[Path, dict]:
    """A reward model from the SFT checkpoint under runs/<name> (built-in pairs of `task`, or `data`)."""
    s = ctx.setting
    out = ctx.runs / name
    say(f"== reward model: {name}")
    task = task or TaskConfig()
    task = dataclasses.replace(task, n_train=s.rm_pairs, n_eval=s.eval_pairs)
    summary = train_reward(
        RewardConfig(
            out=out,
            init=sft,
            data=[data] if data else [],
            keys=keys or DataKeys(),
            task=task,
            epochs=s.rm_epochs,
            **overrides,
            **ctx.common(),
        )
    )
    export_metrics(ctx, name, out)
    return out, summary


def ppo_run(ctx: Ctx, name: str, sft: Path, reward: Path, **overrides) -> tuple[Path, list[dict]]:
    """A PPO run under runs/<name> (the setting's size, then `overrides`); returns (directory, metric rows)."""
    s = ctx.setting
    out = ctx.runs / name
    say(f"== PPO: {name}")
    options = {
        "episodes": s.episodes,
        "rollout_batch": s.rollout_batch,
        "response_length": s.response_length,
        "value_model": s.value_model,
        "save_every": 0,  # short runs: no resume checkpoints
        **ctx.common(),
        **overrides,
    }
    cfg = PPOConfig(out=out, sft=sft, reward=reward, **options)
    cfg.optim = dataclasses.replace(cfg.optim, lr=s.ppo_lr)
    train_ppo(cfg)
    return out, export_metrics(ctx, name, out)


def compare_run(
    ctx: Ctx,
    name: str,
    sft: Path,
    policy: Path,
    reward: Path,
    response_length: int = 0,
    task: TaskConfig | None = None,
) -> dict:
    """`rlhf compare` of a PPO policy against the SFT one on held-out prompts (of `task`: none = the default task),
    under runs/<name>-compare."""
    say(f"== compare: {name}")
    return run_compare(
        CompareConfig(
            out=ctx.runs / f"{name}-compare",
            sft=sft,
            policy=policy,
            reward=reward,
            n_prompts=ctx.setting.compare_prompts,
            samples_per_prompt=1,
            response_length=response_length or ctx.setting.response_length,
            task=task or TaskConfig(),
            **ctx.common(),
        )
    )


def export_metrics(ctx: Ctx, name: str, run_dir: Path) -> list[dict]:
    """Copy a sub-run's metrics.jsonl to DIR/metrics/<name>.jsonl; returns its rows."""
    src = Path(run_dir) / "metrics.jsonl"
    dst = ctx.out / "metrics" / f"{name}.jsonl"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return read_metrics(dst)


def series(rows: list[dict], key: str, x: str = "episode") -> tuple[list[float], list[float]]:
    """(xs, ys) of one metric, skipping rows without it."""
    pts = [(r[x], r[key]) for r in rows if r.get(key) is not None and r.get(x) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def tail_mean(rows: list[dict], key: str, frac: float = 0.2) -> float | None:
    """Mean of `key` over the last `frac` of the logged updates (at least one): a 'final' value with less noise."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return None
    k = max(1, round(len(vals) * frac))
    return sum(vals[-k:]) / k


def smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out = []
    for i in range(len(ys)):
        chunk = ys[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


# ------------------------------------------------------------------------------------------------ plots
def write_pairs(path: Path, rows: list[dict]) -> Path:
    """A JSONL pairs file (prompt/chosen/rejected columns, the loader's pairs schema) for a reward sub-run's --data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows)
    )
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_plot(
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    lines: list[tuple[str, list[float], list[float]]],
    marks: list[tuple[float, float, str]] | None = None,
) -> Path:
    """One figure of labelled lines (and optional marked points) saved as a PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for label, xs, ys in lines:
        ax.plot(xs, ys, label=label, marker="." if len(xs) < 40 else None)
    for x, y, label in marks or []:
        ax.plot([x], [y], marker="*", markersize=14, color="crimson", linestyle="none", label=label)
    return _labelled(fig, plt, ax, path, title, xlabel, ylabel)


def ci_line_plot(
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    curves: dict[str, list[tuple[float, float, list[float] | None]]],
    hline: tuple[float, str] | None = None,
    dashed: tuple[str, ...] = (),
) -> Path:
    """Labelled curves of (x, y, [lo, hi] or None) points: error bars where every point of a curve has an
    interval; `hline` (y, label) a dotted reference level; curves named in `dashed` drawn dashed in black."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, pts in curves.items():
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        style = {"linestyle": "--", "color": "black"} if label in dashed else {}
        if pts and all(p[2] is not None for p in pts):
            err = [[y - p[2][0] for y, p in zip(ys, pts)], [p[2][1] - y for y, p in zip(ys, pts)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label, **style)
        else:
            ax.plot(xs, ys, marker="o", label=label, **style)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linewidth=0.8, linestyle=":", label=hline[1])
    return _labelled(fig, plt, ax, path, title, xlabel, ylabel)


def _labelled(fig, plt, ax, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Title, axis labels, grid and legend, then save."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def bar_plot(path: Path, title: str, groups: list[str], bars: dict[str, list[float]], *, ylabel: str) -> Path:
    """Grouped bars: one group per entry of `groups`, one bar per key of `bars` (label -> value per group).
    `ylabel` says what the bars measure, with its unit (a bar chart without one cannot be read)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    width = 0.8 / max(1, len(bars))
    for i, (label, vals) in enumerate(bars.items()):
        xs = [g + (i - (len(bars) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, vals, width, label=label)
        for x, v in zip(xs, vals):
            ax.annotate(f"{v:.3f}", (x, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def reliability_plot(path: Path, title: str, tables: dict[str, list[dict]]) -> Path:
    """Reliability diagram: observed frequency against mean predicted probability per bin, one line per table."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for label, rows in tables.items():
        pts = [(r["predicted"], r["observed"]) for r in rows if r.get("count")]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(chosen preferred) = sigmoid(r+ - r-)")
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ the end
def finish(ctx: Ctx, name: str, description: str, summary: dict, plots: dict[str, str]) -> dict:
    """Write DIR/summary.json (experiment, description, setting, config, plots, seconds + `summary`) and the report.

    `plots` maps each figure's file name under DIR/plots/ to one sentence on what it shows (the report's caption).
    """
    full = {
        "experiment": name,
        "description": description,
        "setting": ctx.setting.name,
        **summary,
        "plots": plots,
        "seconds": round(time.time() - ctx.t0, 1),
        "setting_values": dataclasses.asdict(ctx.setting),
        "config": config_dict(ctx.cfg),
    }
    write_json(ctx.out / "summary.json", full)
    report = build_report(ctx.out)
    runs = full.get("runs") or []
    for r in runs:
        say("  " + "  ".join(f"{k}={_short(v)}" for k, v in r.items()))
    say(f"experiment {name}: {full['seconds']:.0f}s")
    print(f"outputs: {ctx.out}/ (summary.json, metrics/, plots/, runs/) | report: {report}")
    return full


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
