"""`rlhf report RUN_DIR`: one self-contained `report.html` built only from the files in a run directory.

The report never trains or loads a model: it reads `summary.json`, `config.json` and `metrics.jsonl` files, draws
plots with matplotlib (written to `RUN_DIR/plots/*.png` and embedded as base64), and writes tables.

An experiment directory (`rlhf experiment <name>`: its summary.json names the experiment) has drawn its own
figures: the report embeds every `plots/*.png` with its caption from summary.json, and shows the runs table, key
figures, sample tables and the configs of the experiment and of each sub-run under `runs/`.
"""

from __future__ import annotations

import base64
import html
import io
import json
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
ON_POLICY = [
    ("Gold score vs learned reward", ["gold/score", "objective/scores"]),
    ("KL to the reference", ["objective/kl"]),
    ("Response length", ["completions/mean_length"]),
]
PLOTS = {  # stage (config.json's "stage") -> [(title, [metric names])]
    "sft": [("SFT loss", ["loss", "eval/loss"])],
    "reward": [("Reward model accuracy", ["accuracy", "eval/accuracy"])],
    "ppo": ON_POLICY,
    "grpo": ON_POLICY,
    "rloo": ON_POLICY,
    "reinforce++": ON_POLICY,
    "dpo": [
        ("DPO loss", ["loss", "eval/loss"]),
        ("Implicit reward margin", ["rewards/margins", "eval/rewards/margins"]),
        ("Preference accuracy", ["rewards/accuracies", "eval/rewards/accuracies"]),
        ("Gold score of samples", ["gold/score"]),
    ],
}


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


def _plot(rows: list[dict], title: str, names: list[str], path: Path) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(n, [(r["step"], r[n]) for r in rows if r.get(n) is not None]) for n in names]
    series = [(n, pts) for n, pts in series if pts]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    for n, pts in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=n, marker="." if len(pts) < 40 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
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


def _table(rows: list[dict], keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k in keys) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | dict):
        return json.dumps(v)
    return "" if v is None else str(v)


def build_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    parts = [f"<h1>rlhf run: {html.escape(str(run_dir))}</h1>"]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if "experiment" in summary:
        return _write_page(run_dir, _experiment_parts(run_dir, summary))
    if summary:
        flat = [{"figure": k, "value": v} for k, v in summary.items() if k not in ("samples", "reliability")]
        parts += ["<h2>Key figures</h2>", _table(flat, ["figure", "value"])]
    n_figures = 0
    for stage, d in _stage_dirs(run_dir):
        rows = read_metrics(d / "metrics.jsonl")
        parts.append(f"<h2>{html.escape(stage)}</h2>")
        for title, names in PLOTS.get(stage, []):
            png = _plot(rows, title, names, run_dir / "plots" / f"{stage}_{title.split()[0].lower()}.png")
            if png is not None:
                b64 = base64.b64encode(png).decode()
                parts.append(
                    f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}"></figure>'
                )
                n_figures += 1
        stage_summary = d / "summary.json"
        if stage_summary.exists() and d != run_dir:  # a lone stage's summary is the key figures above
            s = json.loads(stage_summary.read_text())
            flat = [{"figure": k, "value": v} for k, v in s.items() if k not in ("samples", "reliability")]
            parts.append(_table(flat, ["figure", "value"]))
        cfg = d / "config.json"
        if cfg.exists():
            text = html.escape(json.dumps(json.loads(cfg.read_text()).get("run_config", {}), indent=1))
            parts.append(f"<details><summary>{stage} config</summary><pre>{text}</pre></details>")
    samples = summary.get("samples") or []
    if samples:
        parts += ["<h2>Samples (held-out prompts)</h2>", _table(samples, list(samples[0].keys()))]
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
    flat = [{"figure": k, "value": v} for k, v in summary.items() if k not in skip]
    parts += ["<h2>Key figures</h2>", _table(flat, ["figure", "value"])]
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
            parts += [f"<h2>Samples: {html.escape(title)}</h2>", _table(rows, list(rows[0].keys()))]
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
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:auto;padding:1em}table{border-collapse:collapse;"
        "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}"
        "img{max-width:100%}figure{display:inline-block;margin:4px}figcaption{font-size:13px;max-width:600px}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>rlhf report</title><style>{style}</style>"
        f"</head><body data-figures='{n_figures}'>{''.join(parts)}</body></html>"
    )
    out = run_dir / "report.html"
    _atomic_write(out, lambda p: p.write_text(page, encoding="utf-8"))
    return out


def run_report(cfg: ReportConfig) -> dict:
    path = build_report(cfg.run_dir)
    print(f"outputs: {path}")
    return {"report": str(path)}
