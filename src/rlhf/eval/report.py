"""`rlhf report RUN_DIR`: one self-contained `report.html` built only from the files in a run directory.

The report never trains or loads a model: it reads `summary.json`, `config.json` and `metrics.jsonl` files, draws
plots with matplotlib (written to `RUN_DIR/plots/*.png` and embedded as base64), and writes tables.
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

STAGES = ("sft", "reward", "ppo")
PLOTS = {  # stage -> [(title, [metric names])]
    "sft": [("SFT loss", ["loss", "eval/loss"])],
    "reward": [("Reward model accuracy", ["accuracy", "eval/accuracy"])],
    "ppo": [
        ("Gold score vs learned reward", ["gold/score", "objective/scores"]),
        ("KL to the reference", ["objective/kl"]),
        ("Response length", ["completions/mean_length"]),
    ],
}


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
    if summary:
        flat = [{"figure": k, "value": v} for k, v in summary.items() if k not in ("samples", "reliability")]
        parts += ["<h2>Key figures</h2>", _table(flat, ["figure", "value"])]
    n_figures = 0
    for stage in STAGES:
        d = run_dir / stage
        if not (d / "metrics.jsonl").exists():
            continue
        rows = read_metrics(d / "metrics.jsonl")
        parts.append(f"<h2>{stage}</h2>")
        for title, names in PLOTS[stage]:
            png = _plot(rows, title, names, run_dir / "plots" / f"{stage}_{title.split()[0].lower()}.png")
            if png is not None:
                b64 = base64.b64encode(png).decode()
                parts.append(
                    f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}"></figure>'
                )
                n_figures += 1
        stage_summary = d / "summary.json"
        if stage_summary.exists():
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
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:auto;padding:1em}table{border-collapse:collapse;"
        "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}"
        "img{max-width:100%}figure{display:inline-block;margin:4px}"
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
