"""`rlhf report RUN_DIR`: one self-contained `report.html` built only from the files in a run directory.

The report never trains or loads a model: it reads `summary.json`, `config.json` and `metrics.jsonl` files, draws
plots with matplotlib (written to `RUN_DIR/plots/*.png` and embedded as base64), and writes tables.

The first screen tells the result: where the run compared a trained policy with its SFT reference (`rlhf demo`,
`rlhf compare`), a verdict box opens the page with the gold score SFT -> policy, the 95% CI of the difference,
the KL to the SFT reference, the reward model's agreement with the gold judge, and one sentence saying whether
the policy improved, got worse, or the run cannot tell. Numbers are shown to 3 significant digits, dicts as
small tables, and the samples table marks the prompts where the two policies answered differently.

An experiment directory (`rlhf experiment <name>`: its summary.json names the experiment) has drawn its own
figures: the report embeds every `plots/*.png` with its caption from summary.json, and shows the runs table, key
figures, sample tables and the configs of the experiment and of each sub-run under `runs/`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path

from rlhf.checkpoint import _atomic_write
from rlhf.config import ReportConfig
from rlhf.errors import UserError
from rlhf.metrics import read_metrics

STAGES = (
    "sft",
    "reward",
    "ppo",
    "grpo",
    "rloo",
    "reinforce++",
    "dpo",
)  # a run's sub-directories, in this order
STAGE_NAMES = {"ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "reinforce++": "REINFORCE++", "dpo": "DPO"}
STAGE_TITLES = {"sft": "SFT", "reward": "Reward model", **STAGE_NAMES}  # section headings

# A plot: (title, y-axis label with its unit, [(metric name, legend label)]). The first word of the title names
# the PNG (`plots/<stage>_<word>.png`).
ON_POLICY = [
    (
        "Gold score vs learned reward",
        "mean score per response",
        [("gold/score", "gold score (judge, in [-1, 1])"), ("objective/scores", "learned reward (RM score)")],
    ),
    ("KL to the reference", "KL (nats per response)", [("objective/kl", "KL(policy || SFT)")]),
    ("Response length", "mean length (tokens)", [("completions/mean_length", "response length")]),
]
PLOTS = {  # stage (config.json's "stage") -> plots
    "sft": [("SFT loss", "cross-entropy (nats per token)", [("loss", "train"), ("eval/loss", "held-out")])],
    "reward": [
        (
            "Reward model accuracy",
            "accuracy (fraction of pairs)",
            [("accuracy", "train"), ("eval/accuracy", "held-out")],
        )
    ],
    "ppo": ON_POLICY,
    "grpo": ON_POLICY,
    "rloo": ON_POLICY,
    "reinforce++": ON_POLICY,
    "dpo": [
        ("DPO loss", "loss (nats per pair)", [("loss", "train"), ("eval/loss", "held-out")]),
        (
            "Implicit reward margin",
            "margin (beta * log-ratio, nats)",
            [("rewards/margins", "train"), ("eval/rewards/margins", "held-out")],
        ),
        (
            "Preference accuracy",
            "accuracy (fraction of pairs)",
            [("rewards/accuracies", "train"), ("eval/rewards/accuracies", "held-out")],
        ),
        ("Gold score of samples", "mean gold score (in [-1, 1])", [("gold/score", "gold score")]),
    ],
}
# What one step of each stage's metrics.jsonl is: SFT, reward and DPO log optimiser steps; the on-policy stages
# log one row per update (a rollout batch, then several optimiser steps on it).
X_LABELS = {"sft": "optimiser step", "reward": "optimiser step", "dpo": "optimiser step"}
X_ON_POLICY = "update (one rollout batch each)"

# People-facing names of the summary keys written by `rlhf compare` and `rlhf demo` ({p}: the policy's name).
# The compare keys say `ppo` for the trained policy whatever trained it; `policy_stage` names the stage.
LABELS = {
    "policy_stage": "stage that trained the policy",
    "n_prompts": "held-out prompts",
    "samples_per_prompt": "samples per prompt",
    "temperature": "sampling temperature",
    "gold_sft": "gold score, SFT (in [-1, 1])",
    "gold_ppo": "gold score, {p} (in [-1, 1])",
    "gold_diff": "gold score difference, {p} - SFT",
    "gold_diff_ci95": "95% CI of that difference",
    "gold_win_rate": "{p}'s win rate over SFT by gold score (ties count half)",
    "proxy_sft": "learned reward, SFT (RM score)",
    "proxy_ppo": "learned reward, {p} (RM score)",
    "kl_ppo": "KL({p} || SFT), nats per response",
    "kl_train": "KL during training, nats per response",
    "length_sft": "mean response length, SFT (tokens)",
    "length_ppo": "mean response length, {p} (tokens)",
    "eos_rate_sft": "fraction of SFT responses that ended (EOS)",
    "eos_rate_ppo": "fraction of {p} responses that ended (EOS)",
    "rm_accuracy": "reward model accuracy on held-out pairs",
    "rm_gold_agreement": "reward model agreement with the gold judge",
    "rm_ece": "reward model calibration error (ECE)",
    "sft_eval_loss": "SFT held-out loss (nats per token)",
    "sft_gold": "SFT gold score at the end of SFT (sampled at temperature 1)",
    "ppo_time_share": "share of {p} time per phase",
    "seconds": "wall time (seconds)",
}
STYLE = (
    "body{font-family:sans-serif;max-width:1000px;margin:auto;padding:0 1em 1em;color:#222}"
    "h1{font-size:20px;margin:.6em 0 .4em}h2{font-size:17px;margin:1.2em 0 .3em}"
    "table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;"
    "text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:"
    "tabular-nums}td.text{white-space:pre-wrap;font-family:monospace;font-size:12px}table.kv{margin:0}"
    "table.kv td{border-color:#e4e4e4}code.key{color:#777;font-size:11px;margin-left:.5em}"
    "#verdict{border:2px solid #999;border-radius:6px;padding:.6em 1em;margin:.4em 0 1em;background:#f6f6f6}"
    "#verdict.improved{border-color:#2e7d32;background:#edf7ee}#verdict.worse{border-color:#c62828;"
    "background:#fdeeee}#verdict.inconclusive{border-color:#b28704;background:#fff8e1}"
    "#verdict-sentence{font-size:19px;font-weight:bold;margin:.2em 0 .5em}"
    "#verdict table{font-size:15px}#verdict td{font-size:15px;border:none;padding:2px 14px 2px 0}"
    "#verdict .note{font-size:12px;color:#555;margin:.4em 0 0}"
    "tr.differs td{background:#fff8e1}tr.same td{color:#666}mark{background:#ffe08a}"
    "img{max-width:100%}figure{display:inline-block;margin:4px}figcaption{font-size:13px;max-width:600px}"
)


# ------------------------------------------------------------------------------------------------ numbers
def _num(v: float | int, sign: bool = False) -> str:
    """A number for people: an int as it is, a float to 3 significant digits (never a raw 17-digit float).

    Trailing zeros are kept ("0.500", not "0.5") so that figures side by side read at one precision; floats of
    1000 or more are rounded to whole numbers rather than written as "1.52e+03"."""
    plus = "+" if sign else ""
    if isinstance(v, int):
        return f"{v:{plus}d}"
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:{plus}.0f}"
    text = f"{v:{plus}#.3g}"
    return text[:-1] if text.endswith(".") else text  # "#" leaves "123." for 123.4


def _cell(v) -> str:
    """The HTML of one value: numbers formatted, a dict as a small key/value table, a list of dicts as a table."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float):
        return _num(v)
    if isinstance(v, dict):
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td>{_td(x)}</tr>" for k, x in v.items())
        return f"<table class='kv'>{rows}</table>"
    if isinstance(v, list):
        if v and all(isinstance(x, dict) for x in v):
            return _table(v, list(dict.fromkeys(k for r in v for k in r)))
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    return html.escape(str(v))


def _td(v) -> str:
    numeric = isinstance(v, int | float) and not isinstance(v, bool)
    return f"<td class='num'>{_cell(v)}</td>" if numeric else f"<td>{_cell(v)}</td>"


def _table(rows: list[dict], keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(_td(r.get(k)) for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _policy_name(summary: dict) -> str:
    """The trained policy's name for people: its stage in capitals (PPO, DPO ...), or "the policy"."""
    stage = str(summary.get("policy_stage") or "ppo")
    return STAGE_NAMES.get(stage, "the policy" if stage == "policy" else stage.upper())


def _key_figures(summary: dict, skip: set[str]) -> str:
    """The summary as a two-column table: a label for people (with the summary.json key) and the value."""
    name = _policy_name(summary)
    # LABELS name the keys of a comparison's summary; elsewhere the same key may mean something else (a PPO
    # stage's n_prompts are its training prompts), so other summaries keep their keys, bar the wall time.
    comparison = "kl_ppo" in summary or "gold_ppo" in summary
    labels = LABELS if comparison else {"seconds": LABELS["seconds"]}
    rows = []
    for k, v in summary.items():
        if k in skip:
            continue
        label = labels.get(k, "").format(p=name)
        head = f"{html.escape(label)}<code class='key'>{html.escape(k)}</code>" if label else html.escape(k)
        rows.append(f"<tr><td>{head}</td>{_td(v)}</tr>")
    return f"<table><tr><th>figure</th><th>value</th></tr>{''.join(rows)}</table>"


# ------------------------------------------------------------------------------------------------ verdict
def verdict_sentence(summary: dict) -> tuple[str, str]:
    """(kind, sentence) for a comparison of a policy with SFT: kind is improved / worse / inconclusive, decided
    by where the 95% CI of the gold-score difference lies (entirely above 0, entirely below 0, or across it);
    "none" when the prompts had no gold judge (prompts from a file)."""
    name = _policy_name(summary)
    cap = name[0].upper() + name[1:]
    if summary.get("gold_diff_ci95") is None or summary.get("gold_sft") is None:
        return "none", (
            f"No verdict: these prompts have no gold judge, so only the learned reward, the KL and the samples "
            f"below compare {name} with SFT."
        )
    lo, hi = summary["gold_diff_ci95"]
    diff = summary.get("gold_diff", summary["gold_ppo"] - summary["gold_sft"])
    ci = f"{_num(lo, sign=True)} to {_num(hi, sign=True)}"
    if lo > 0:
        return "improved", (
            f"{cap} improved on SFT: its gold score is higher by {_num(diff)}, and the 95% CI of the "
            f"difference ({ci}) lies entirely above 0."
        )
    if hi < 0:
        return "worse", (
            f"{cap} got worse than SFT: its gold score is lower by {_num(-diff)}, and the 95% CI of the "
            f"difference ({ci}) lies entirely below 0."
        )
    return "inconclusive", (
        f"Inconclusive: {name}'s gold score differs from SFT's by {_num(diff, sign=True)}, but the 95% CI of the "
        f"difference ({ci}) contains 0, so this run cannot tell whether {name} improved."
    )


def _verdict(run_dir: Path, summary: dict) -> str:
    """The box that opens the page of a comparison (demo or compare run); "" for any other run directory."""
    if "kl_ppo" not in summary and "gold_ppo" not in summary:
        return ""
    name = _policy_name(summary)
    kind, sentence = verdict_sentence(summary)
    rows = []
    if summary.get("gold_sft") is not None and summary.get("gold_ppo") is not None:
        value = f"{_num(summary['gold_sft'])} &rarr; {_num(summary['gold_ppo'])}"
        if summary.get("gold_diff_ci95") is not None:
            lo, hi = summary["gold_diff_ci95"]
            diff = summary.get("gold_diff", summary["gold_ppo"] - summary["gold_sft"])
            value += f" &nbsp; (difference {_num(diff, sign=True)}, 95% CI {_num(lo, sign=True)} to "
            value += f"{_num(hi, sign=True)})"
        rows.append((f"Gold score, SFT &rarr; {html.escape(name)}", value))
    if summary.get("kl_ppo") is not None:
        rows.append(("KL to the SFT reference", f"{_num(summary['kl_ppo'])} nats per response"))
    agreement = summary.get("rm_gold_agreement")
    reward_summary = run_dir / "reward" / "summary.json"
    if agreement is None and reward_summary.exists():  # a compare inside a pipeline run: the RM's own summary
        agreement = json.loads(reward_summary.read_text()).get("gold_agreement")
    if agreement is not None:
        rows.append(
            (
                "Reward model's agreement with the gold judge",
                f"{_num(agreement)} (it prefers the judge's choice in {agreement * 100:.0f}% of held-out pairs)",
            )
        )
    if summary.get("gold_win_rate") is not None:
        rows.append((f"{html.escape(name)}'s win rate over SFT", _num(summary["gold_win_rate"])))
    table = "".join(f"<tr><td>{k}</td><td><b>{v}</b></td></tr>" for k, v in rows)
    # Where the numbers come from, in small print under the table.
    measured = []
    if summary.get("n_prompts") is not None:
        measured.append(f"{summary['n_prompts']} held-out prompts")
    if summary.get("samples_per_prompt") is not None:
        k = summary["samples_per_prompt"]
        measured.append(f"{k} sample{'s' if k != 1 else ''} per prompt")
    if summary.get("temperature") is not None:
        measured.append(f"temperature {_num(summary['temperature'])}")
    note = ""
    if measured:
        note = f"Measured on {', '.join(measured)}; the gold judge scores each response in [-1, 1]"
        note += "; the CI is a bootstrap over prompts." if kind != "none" else "."
    return (
        f"<section id='verdict' class='{kind}' data-verdict='{kind}'>"
        f"<p id='verdict-sentence'>{html.escape(sentence)}</p><table>{table}</table>"
        + (f"<p class='note'>{html.escape(note)}</p>" if note else "")
        + "</section>"
    )


# ------------------------------------------------------------------------------------------------ samples
def _samples_table(rows: list[dict], summary: dict) -> str:
    """Samples as a table. Where a row holds both SFT's and the policy's response (`sft`, `ppo`), an extra
    column says "same" or "differs", differing rows are highlighted, and the text after the two responses'
    common start is marked: what the training changed is visible at a glance."""
    if not rows or not all("sft" in r and "ppo" in r for r in rows):
        return _table(rows, list(dict.fromkeys(k for r in rows for k in r)))
    name = _policy_name(summary)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    heads = {
        "sft": "SFT response",
        "ppo": f"{name} response",
        "gold_sft": "gold, SFT",
        "gold_ppo": f"gold, {name}",
    }
    head = "".join(f"<th>{html.escape(heads.get(k, k))}</th>" for k in keys)
    head += f"<th>SFT vs {html.escape(name)}</th>"
    body = []
    n_differ = 0
    for r in rows:
        a, b = str(r["sft"]), str(r["ppo"])
        same = a == b
        n_differ += not same
        cut = len(os.path.commonprefix([a, b]))
        cells = []
        for k in keys:
            v = r.get(k)
            if k in ("sft", "ppo") and not same:
                text = str(v)
                cells.append(
                    f"<td class='text'>{html.escape(text[:cut])}<mark>{html.escape(text[cut:])}</mark></td>"
                )
            elif k in ("prompt", "sft", "ppo"):
                cells.append(f"<td class='text'>{html.escape(str(v))}</td>")
            else:
                cells.append(_td(v))
        cells.append("<td>same</td>" if same else "<td><b>differs</b></td>")
        body.append(f"<tr class='{'same' if same else 'differs'}'>{''.join(cells)}</tr>")
    intro = (
        f"<p>{n_differ} of {len(rows)} responses differ between SFT and {html.escape(name)} (highlighted; "
        "the marked text is where they part).</p>"
    )
    return f"{intro}<table><tr>{head}</tr>{''.join(body)}</table>"


# ------------------------------------------------------------------------------------------------ plots
def _plot(
    rows: list[dict], title: str, ylabel: str, names: list[tuple[str, str]], xlabel: str, path: Path
) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(label, [(r["step"], r[n]) for r in rows if r.get(n) is not None]) for n, label in names]
    series = [(label, pts) for label, pts in series if pts]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    for label, pts in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, marker="." if len(pts) < 40 else None)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    png = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return png


def _stage_dirs(run_dir: Path) -> list[tuple[str, Path]]:
    """(stage, directory) pairs to draw: the run directory itself when a stage wrote it (`rlhf dpo --out D`),
    else its stage sub-directories (`rlhf demo`'s sft/, reward/, ppo/). A stage is named by its config.json."""

    def stage_of(d: Path, default: str) -> str:
        cfg = d / "config.json"
        return json.loads(cfg.read_text()).get("stage", default) if cfg.exists() else default

    if (run_dir / "metrics.jsonl").exists():
        return [(stage_of(run_dir, "ppo"), run_dir)]
    return [
        (stage_of(run_dir / s, s), run_dir / s) for s in STAGES if (run_dir / s / "metrics.jsonl").exists()
    ]


# ------------------------------------------------------------------------------------------------ pages
def build_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if "experiment" in summary:
        return _write_page(run_dir, _experiment_parts(run_dir, summary))
    parts = [f"<h1>rlhf run: {html.escape(str(run_dir))}</h1>", _verdict(run_dir, summary)]
    if summary:
        parts += ["<h2>Key figures</h2>", _key_figures(summary, {"samples", "reliability"})]
    samples = summary.get("samples") or []
    n_figures = 0
    for stage, d in _stage_dirs(run_dir):
        rows = read_metrics(d / "metrics.jsonl")
        parts.append(f"<h2>{html.escape(STAGE_TITLES.get(stage, stage))}</h2>")
        xlabel = X_LABELS.get(stage, X_ON_POLICY)
        for title, ylabel, names in PLOTS.get(stage, []):
            path = run_dir / "plots" / f"{stage}_{title.split()[0].lower()}.png"
            png = _plot(rows, title, ylabel, names, xlabel, path)
            if png is not None:
                parts.append(
                    f"<figure>{_img(png, title)}<figcaption>{html.escape(ylabel)} against "
                    f"{html.escape(xlabel)}</figcaption></figure>"
                )
                n_figures += 1
        stage_summary = d / "summary.json"
        if stage_summary.exists() and d != run_dir:  # a lone stage's summary is the key figures above
            s = json.loads(stage_summary.read_text())
            parts.append(_key_figures(s, {"samples", "reliability"}))
        cfg = d / "config.json"
        if cfg.exists():
            parts.append(_config_block(f"{stage} config", json.loads(cfg.read_text()).get("run_config", {})))
    if samples:
        parts += ["<h2>Samples (held-out prompts)</h2>", _samples_table(samples, summary)]
    return _write_page(run_dir, (parts, n_figures))


def _img(png: bytes, alt: str) -> str:
    b64 = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _config_block(title: str, cfg: dict) -> str:
    text = html.escape(json.dumps(cfg, indent=1))
    return f"<details><summary>{html.escape(title)}</summary><pre>{text}</pre></details>"


def _experiment_parts(run_dir: Path, summary: dict) -> tuple[list[str], int]:
    """Page parts of an experiment directory: description, runs, key figures, every plot, samples, configs."""
    name = str(summary["experiment"])
    parts = [f"<h1>rlhf experiment: {html.escape(name)}</h1>"]
    if summary.get("description"):
        parts.append(f"<p>{html.escape(str(summary['description']))}</p>")
    runs = summary.get("runs") or []
    if runs:
        keys = list(dict.fromkeys(k for r in runs for k in r))
        parts += ["<h2>Runs</h2>", _table(runs, keys)]
    skip = {
        "experiment",
        "description",
        "runs",
        "samples",
        "plots",
        "config",
        "setting_values",
        "curve",
        "reliability",
    }
    parts += ["<h2>Key figures</h2>", _key_figures(summary, skip)]
    captions = summary.get("plots") or {}
    pngs = sorted((run_dir / "plots").glob("*.png"))
    # The captioned figures first, in the experiment's order, then any other PNG in plots/.
    pngs.sort(key=lambda p: list(captions).index(p.name) if p.name in captions else len(captions))
    if pngs:
        parts.append("<h2>Figures</h2>")
    for png in pngs:
        caption = captions.get(png.name, "")
        parts.append(
            f"<figure>{_img(png.read_bytes(), png.stem)}"
            f"<figcaption><b>{html.escape(png.name)}</b> {html.escape(caption)}</figcaption></figure>"
        )
    samples = summary.get("samples") or {}
    if isinstance(samples, list):
        samples = {"samples": samples}
    for title, rows in samples.items():
        if rows:
            parts += [f"<h2>Samples: {html.escape(title)}</h2>", _samples_table(rows, summary)]
    parts.append("<h2>Configs</h2>")
    if summary.get("config"):
        parts.append(_config_block(f"experiment {name}", summary["config"]))
    if summary.get("setting_values"):
        parts.append(_config_block(f"setting: {summary.get('setting', '')}", summary["setting_values"]))
    for cfg in sorted((run_dir / "runs").glob("*/config.json")):
        parts.append(
            _config_block(f"runs/{cfg.parent.name}", json.loads(cfg.read_text()).get("run_config", {}))
        )
    return parts, len(pngs)


def _write_page(run_dir: Path, parts_and_count: tuple[list[str], int]) -> Path:
    parts, n_figures = parts_and_count
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>rlhf report</title><style>{STYLE}</style>"
        f"</head><body data-figures='{n_figures}'>{''.join(parts)}</body></html>"
    )
    out = run_dir / "report.html"
    _atomic_write(out, lambda p: p.write_text(page, encoding="utf-8"))
    return out


def run_report(cfg: ReportConfig) -> dict:
    path = build_report(cfg.run_dir)
    print(f"outputs: {path}")
    return {"report": str(path)}
