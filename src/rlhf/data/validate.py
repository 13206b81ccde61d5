"""`rlhf data validate FILE`: load data exactly as training would and describe it.

A file that loads here loads in every stage that accepts its schema; anything wrong raises the same
`DataError` training would raise. Rows stream through one at a time (Parquet and `save_to_disk` directories in
batches), and only per-example token counts are kept, so a file far larger than memory can be checked. The
report is a JSON-serialisable dict, with one example rendered exactly as the model reads it; `format_report`
renders the report.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Any

import numpy as np

from rlhf.data.collate import encode_prompt, encode_prompt_response
from rlhf.data.containers import detect_container, shards
from rlhf.data.loader import (
    ASSISTANT_MARKER,
    DEFAULT_KEYS,
    PAIR_SCHEMAS,
    ColumnKeys,
    is_chat,
    iter_records,
    to_pair,
    to_prompt,
    to_sft,
)
from rlhf.data.tokenizer import Tokenizer

SCHEMA_HELP = {  # TRL's dataset-format name, then what the loader does with it
    "pairs": "preference, explicit prompt (prompt + chosen + rejected text)",
    "pairs_implicit": "preference, implicit prompt (HH-style transcripts; prompt = shared text up to the last "
    "'\\n\\nAssistant:')",
    "sft": "prompt-completion (prompt + response text)",
    "prompts": "prompt-only (prompt text)",
    "messages": "conversational language modeling (messages; every assistant turn is trained)",
    "chat_sft": "conversational prompt-completion (prompt + completion messages)",
    "chat_pairs": "conversational preference, explicit prompt (prompt + chosen + rejected messages)",
    "chat_pairs_implicit": "conversational preference, implicit prompt (chosen + rejected conversations; prompt = "
    "their shared turns before the answer)",
    "chat_prompts": "conversational prompt-only (prompt messages)",
}
# How many offending locations a warning lists before it stops.
MAX_LINES_SHOWN = 5


def _stats(lengths) -> dict[str, float]:
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


def _rendered(tok: Tokenizer, prompt, response) -> dict[str, str]:
    """One example as the model reads it: the decoded ids, split where the trained tokens begin."""
    e = encode_prompt_response(tok, prompt, response, max_length=1 << 30)
    out = {"prompt": tok.decode(e.ids[: e.prompt_len]), "response": tok.decode(e.ids[e.prompt_len :])}
    if e.untrained:
        out["untrained_in_response"] = [tok.decode(e.ids[a:b]) for a, b in e.untrained]
    return out


def validate_file(
    path: str | Path,
    tok: Tokenizer,
    max_length: int = 512,
    keys: ColumnKeys = DEFAULT_KEYS,
    split: str = "",
) -> dict[str, Any]:
    """Load `path` as training would and report its format, schema, counts and token-length statistics.

    Sequence length is `[bos] + prompt + response + [eos]` before truncation (conversations rendered by the chat
    template); `n_truncated` counts examples (for pairs: pairs with either side) that `encode_prompt_response`
    would cut at `max_length`. For a prompts file it counts prompts whose `[bos] + prompt` exceeds `max_length`.
    """
    sources = shards(path, split)
    first = sources[0]
    container, compressed = ("save_to_disk", False) if first.is_dir() else detect_container(first)
    n_special = int(tok.add_bos)
    warnings: list[str] = []
    lengths: dict[str, array] = {}  # 8 bytes per count: millions of rows stay a few MB
    counts = {"rows": 0, "identical": [], "empty": [], "multi_turn": [], "with_margin": 0, "truncated": 0}
    schema, example = None, None

    def add(name: str, n: int) -> None:
        lengths.setdefault(name, array("q")).append(n)

    def length(prompt, response) -> tuple[int, int, int]:
        """(prompt, response, sequence) token counts of one example, rendered as training renders it."""
        e = encode_prompt_response(tok, prompt, response, max_length=1 << 30)
        return e.prompt_len - n_special, len(e.ids) - e.prompt_len - 1, len(e.ids)  # response: before its end

    for source, line, row, schema in iter_records(path, keys, split):
        counts["rows"] += 1
        if schema in PAIR_SCHEMAS:
            p = to_pair(source, line, row, keys, schema)
            example = example or _rendered(tok, p.prompt, p.chosen)
            pl, cl, cs = length(p.prompt, p.chosen)
            _, rl, rs = length(p.prompt, p.rejected)
            (
                add("prompt", pl),
                add("chosen", cl),
                add("rejected", rl),
                add("sequence", cs),
                add("sequence", rs),
            )
            counts["truncated"] += max(cs, rs) > max_length
            counts["with_margin"] += p.margin is not None
            if p.chosen == p.rejected:
                counts["identical"].append(line)
            if _empty(p.chosen) or _empty(p.rejected):
                counts["empty"].append(line)
            if _multi_turn(p.chosen) or _multi_turn(p.rejected):
                counts["multi_turn"].append(line)
        elif schema in ("sft", "chat_sft", "messages"):
            e = to_sft(source, line, row, keys, schema)
            example = example or _rendered(tok, e.prompt, e.response)
            pl, rl, sl = length(e.prompt, e.response)
            add("prompt", pl), add("response", rl), add("sequence", sl)
            counts["truncated"] += sl > max_length
        else:
            ids, _ = encode_prompt(tok, to_prompt(source, line, row, keys, schema), 1 << 30)
            example = example or {"prompt": tok.decode(ids), "response": ""}
            pl = len(ids) - n_special
            add("prompt", pl), add("sequence", n_special + pl)
            counts["truncated"] += n_special + pl > max_length

    report: dict[str, Any] = {
        "path": str(path),
        "container": container,
        "compressed": compressed,
        "shards": len(sources),
        "rows": counts["rows"],
        "schema": schema,
        "conversational": is_chat(schema),
        "tokenizer": getattr(tok, "name", type(tok).__name__),
        "max_length": max_length,
        "n_truncated": counts["truncated"],
    }
    if schema in PAIR_SCHEMAS:
        identical, empty, multi = counts["identical"], counts["empty"], counts["multi_turn"]
        report |= {
            "n_pairs": counts["rows"],
            "n_identical": len(identical),
            "n_with_margin": counts["with_margin"],
            "n_empty_response": len(empty),
        }
        if identical:
            warnings.append(
                f"{len(identical)} pairs have chosen == rejected and teach nothing ({_lines(identical)})"
            )
        if empty:
            warnings.append(f"{len(empty)} pairs have an empty chosen or rejected response ({_lines(empty)})")
        if multi:
            warnings.append(
                f"{len(multi)} pairs diverge before the last assistant turn, so a response spans several "
                f"turns ({_lines(multi)})"
            )
    report["tokens"] = {name: _stats(v) for name, v in lengths.items()}
    report["example"] = example
    if counts["truncated"]:
        warnings.append(
            f"{counts['truncated']} of {counts['rows']} examples exceed max_length={max_length} and would be "
            "truncated (oldest tokens dropped first)"
        )
    report["warnings"] = warnings
    return report


def _empty(response) -> bool:
    if isinstance(response, list):
        return all(not m["content"].strip() for m in response if m["role"] == "assistant")
    return not response.strip()


def _multi_turn(response) -> bool:
    if isinstance(response, list):
        return len(response) > 1
    return ASSISTANT_MARKER in response


def format_report(report: dict[str, Any]) -> str:
    """Render a `validate_file` report as readable multi-line text."""
    fmt = report["container"] + (" (gzip)" if report["compressed"] else "")
    if report.get("shards", 1) > 1:
        fmt += f", {report['shards']} shards"
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
    example = report.get("example")
    if example and example["response"]:
        out.append("first example, exactly as the model reads it (the response's tokens are trained):")
        out.append(f"  prompt:   {example['prompt']!r}")
        out.append(f"  response: {example['response']!r}")
        for text in example.get("untrained_in_response", []):
            out.append(f"  (no loss on {text!r})")
    elif example:
        out.append(f"first prompt, exactly as the model reads it: {example['prompt']!r}")
    if report["warnings"]:
        out.append("warnings:")
        out += [f"  - {w}" for w in report["warnings"]]
    return "\n".join(out)
