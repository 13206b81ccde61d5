"""`rlhf data validate FILE`: load a data file exactly as training would and describe it.

A file that loads here loads in every stage that accepts its schema; anything wrong raises the same
`DataError` training would raise. The report is a JSON-serialisable dict; `format_report` renders it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rlhf.data.loader import (
    ASSISTANT_MARKER,
    DEFAULT_KEYS,
    ColumnKeys,
    SFTExample,
    detect_container,
    detect_schema,
    pairs_from_rows,
    prompts_from_rows,
    read_rows,
    sft_from_rows,
)
from rlhf.data.tokenizer import Tokenizer

SCHEMA_HELP = {
    "pairs": "preference pairs with an explicit prompt",
    "pairs_implicit": "HH-style preference pairs; prompt = shared text up to the last '\\n\\nAssistant:'",
    "sft": "prompt + response",
    "prompts": "prompts only",
}
# How many offending line numbers a warning lists before it stops.
MAX_LINES_SHOWN = 5


def _stats(lengths: list[int]) -> dict[str, float]:
    """min/mean/median/p95/max of token lengths, as plain Python numbers."""
    a = np.asarray(lengths, dtype=np.float64)
    return {
        "min": int(a.min()),
        "mean": round(float(a.mean()), 1),
        "median": float(np.median(a)),
        "p95": round(float(np.percentile(a, 95)), 1),
        "max": int(a.max()),
    }


def _lines(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:MAX_LINES_SHOWN]))
    return f"lines {shown}" + (", ..." if len(lines) > MAX_LINES_SHOWN else "")


def validate_file(
    path: str | Path, tok: Tokenizer, max_length: int = 512, keys: ColumnKeys = DEFAULT_KEYS
) -> dict[str, Any]:
    """Load `path` as training would and report its format, schema, counts and token-length statistics.

    Sequence length is `[bos] + prompt + response + [eos]` before truncation; `n_truncated` counts examples
    (for pairs: pairs with either side) that `encode_prompt_response` would cut at `max_length`. For a
    prompts file it counts prompts whose `[bos] + prompt` exceeds `max_length`.
    """
    container, compressed = detect_container(path)
    rows = read_rows(path)
    schema = detect_schema(rows, keys, path)
    n_special = int(tok.add_bos)
    report: dict[str, Any] = {
        "path": str(path),
        "container": container,
        "compressed": compressed,
        "rows": len(rows),
        "schema": schema,
        "tokenizer": getattr(tok, "name", type(tok).__name__),
        "max_length": max_length,
    }
    warnings: list[str] = []

    if schema in ("pairs", "pairs_implicit"):
        pairs = pairs_from_rows(path, rows, keys, schema)
        prompt = [len(tok.encode(p.prompt)) for p in pairs]
        chosen = [len(tok.encode(p.chosen)) for p in pairs]
        rejected = [len(tok.encode(p.rejected)) for p in pairs]
        seq_c = [n_special + p + c + 1 for p, c in zip(prompt, chosen)]
        seq_r = [n_special + p + r + 1 for p, r in zip(prompt, rejected)]
        identical = [p.line for p in pairs if p.chosen == p.rejected]
        empty = [p.line for p in pairs if not p.chosen.strip() or not p.rejected.strip()]
        multi_turn = [p.line for p in pairs if ASSISTANT_MARKER in p.chosen or ASSISTANT_MARKER in p.rejected]
        n_truncated = sum(max(c, r) > max_length for c, r in zip(seq_c, seq_r))
        report |= {
            "n_pairs": len(pairs),
            "n_identical": len(identical),
            "n_with_margin": sum(p.margin is not None for p in pairs),
            "n_empty_response": len(empty),
            "n_truncated": n_truncated,
            "tokens": {
                "prompt": _stats(prompt),
                "chosen": _stats(chosen),
                "rejected": _stats(rejected),
                "sequence": _stats(seq_c + seq_r),
            },
        }
        if identical:
            warnings.append(
                f"{len(identical)} pairs have chosen == rejected and teach nothing ({_lines(identical)})"
            )
        if empty:
            warnings.append(f"{len(empty)} pairs have an empty chosen or rejected response ({_lines(empty)})")
        if multi_turn:
            warnings.append(
                f"{len(multi_turn)} pairs diverge before the last assistant turn, so a response spans several "
                f"turns ({_lines(multi_turn)})"
            )
        n_examples = len(pairs)
    elif schema == "sft":
        examples: list[SFTExample] = sft_from_rows(path, rows, keys, schema)
        prompt = [len(tok.encode(e.prompt)) for e in examples]
        response = [len(tok.encode(e.response)) for e in examples]
        seq = [n_special + p + r + 1 for p, r in zip(prompt, response)]
        n_truncated = sum(s > max_length for s in seq)
        report |= {
            "n_truncated": n_truncated,
            "tokens": {"prompt": _stats(prompt), "response": _stats(response), "sequence": _stats(seq)},
        }
        n_examples = len(examples)
    else:
        prompts = prompts_from_rows(path, rows, keys, schema)
        prompt = [len(tok.encode(p)) for p in prompts]
        seq = [n_special + p for p in prompt]
        n_truncated = sum(s > max_length for s in seq)
        report |= {"n_truncated": n_truncated, "tokens": {"prompt": _stats(prompt), "sequence": _stats(seq)}}
        n_examples = len(prompts)

    if n_truncated:
        warnings.append(
            f"{n_truncated} of {n_examples} examples exceed max_length={max_length} and would be truncated "
            "(oldest prompt tokens dropped first)"
        )
    report["warnings"] = warnings
    return report


def format_report(report: dict[str, Any]) -> str:
    """Render a `validate_file` report as readable multi-line text."""
    fmt = report["container"] + (" (gzip)" if report["compressed"] else "")
    out = [
        f"file:      {report['path']}",
        f"format:    {fmt}",
        f"rows:      {report['rows']}",
        f"schema:    {report['schema']} - {SCHEMA_HELP[report['schema']]}",
    ]
    if "n_pairs" in report:
        out.append(
            f"pairs:     {report['n_pairs']} (identical: {report['n_identical']}, with margin: "
            f"{report['n_with_margin']}, empty response: {report['n_empty_response']})"
        )
    out.append(f"truncated: {report['n_truncated']} at max_length={report['max_length']}")
    out.append(f"tokens ({report['tokenizer']} tokenizer):")
    names = ("min", "mean", "median", "p95", "max")
    out.append(f"  {'':<10}" + "".join(f"{n:>9}" for n in names))
    for field, stats in report["tokens"].items():
        out.append(f"  {field:<10}" + "".join(f"{stats[n]:>9g}" for n in names))
    if report["warnings"]:
        out.append("warnings:")
        out += [f"  - {w}" for w in report["warnings"]]
    return "\n".join(out)
