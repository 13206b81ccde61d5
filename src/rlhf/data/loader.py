"""Read training data files: one loader for every stage and for `rlhf data validate`.

Containers: JSONL (`.jsonl`, `.ndjson`), JSON (a list of objects) and CSV, each optionally gzip-compressed.
Compression is detected from the bytes (magic `1f 8b`), the container from the name with `.gz` stripped.

Schemas (see `detect_schema`):
  pairs           prompt, chosen, rejected (+ optional margin)
  pairs_implicit  chosen, rejected as whole HH-RLHF transcripts; the prompt is their shared start
  sft             prompt, response
  prompts         prompt

Every mistake in a file raises `DataError(path, line, message)`; the message says what is wrong and how to
fix it. No row is ever dropped silently: a bad row stops the load with its line number.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import json
import math
import os
import re
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rlhf.errors import DataError

CONTAINERS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
SCHEMAS = ("pairs", "pairs_implicit", "sft", "prompts")
# HH-RLHF transcripts alternate "\n\nHuman: ..." and "\n\nAssistant: ..." turns.
ASSISTANT_MARKER = "\n\nAssistant:"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ColumnKeys:
    """Names of the fields (JSON keys / CSV columns) holding each part of an example."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    response: str = "response"
    margin: str = "margin"


# A module constant, not a call in each signature: ColumnKeys is frozen, so sharing one instance is safe.
DEFAULT_KEYS = ColumnKeys()


@dataclass(frozen=True)
class Pair:
    """A preference pair; `margin` is an optional preference strength, `line` the source line."""

    prompt: str
    chosen: str
    rejected: str
    margin: float | None
    line: int


@dataclass(frozen=True)
class SFTExample:
    """A prompt and the response to imitate; `line` is the source line."""

    prompt: str
    response: str
    line: int


def _flag(keys: ColumnKeys, key: str) -> str:
    """The CLI flag that renames the field whose configured name is `key` (e.g. `--chosen-key`)."""
    for f in fields(keys):
        if getattr(keys, f.name) == key:
            return f"--{f.name}-key"
    return "--*-key"


def _rename_hint(keys: ColumnKeys, key: str, found: list[str]) -> str:
    """How to point the loader at the right field, naming the closest existing one when there is one."""
    close = difflib.get_close_matches(key, found, n=1)
    if close:
        return f"if it is stored as {close[0]!r}, pass {_flag(keys, key)} {close[0]}"
    return f"add it, or if it is stored under another name, pass {_flag(keys, key)} NAME"


# ---------------------------------------------------------------------------------------------- containers


def detect_container(path: str | Path) -> tuple[str, bool]:
    """(container, compressed) of `path`: container from the name (`.gz` stripped), compression from bytes."""
    name = Path(path).name.lower()
    gz_name = name.endswith(".gz")
    ext = Path(name[:-3] if gz_name else name).suffix
    if ext not in CONTAINERS:
        supported = ", ".join(sorted(CONTAINERS)) + " (each optionally + .gz)"
        raise DataError(
            path, None, f"unknown file type {ext or '(no extension)'!r}; rename it to one of {supported}"
        )
    try:
        with open(path, "rb") as fh:
            compressed = fh.read(2) == GZIP_MAGIC
    except FileNotFoundError:
        where = "" if Path(path).is_absolute() else f" (relative to {os.getcwd()})"
        raise DataError(path, None, f"file not found; check the path{where}") from None
    except IsADirectoryError:
        raise DataError(path, None, "is a directory; pass the data file inside it") from None
    except OSError as e:
        raise DataError(path, None, f"cannot read the file ({e.strerror}); check its permissions") from None
    if gz_name and not compressed:
        raise DataError(
            path, None, "named .gz but is not gzip-compressed; drop the .gz from the name or gzip it"
        )
    return CONTAINERS[ext], compressed


def _read_text(path: str | Path, compressed: bool) -> str:
    """The whole file as text: gunzipped when compressed, decoded as strict UTF-8 (a leading BOM is dropped)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(path, None, f"cannot read the file ({e.strerror}); check its permissions") from None
    if compressed:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                path,
                None,
                f"corrupt or truncated gzip stream ({e}); re-download the file or compress it again",
            ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start : e.start + 1].hex()
        raise DataError(
            path,
            line,
            f"not valid UTF-8 (byte 0x{bad}); re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8",
        ) from None
    # Spreadsheet exports often start with a UTF-8 byte-order mark; it is not part of the first field name.
    return text.removeprefix("\ufeff")


def _describe(value: Any) -> str:
    """A JSON-flavoured name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _read_jsonl(path: str | Path, text: str) -> list[tuple[int, dict]]:
    """Rows of a JSONL text, one object per non-blank line."""
    rows = []
    # Split on "\n" only: str.splitlines would also split on U+2028 and friends, which JSON allows in strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                path,
                lineno,
                f"invalid JSON ({e.msg}, column {e.colno}); each line must be one complete JSON object",
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                path,
                lineno,
                f'line is {_describe(row)}, not a JSON object; write each row as {{"prompt": ...}}',
            )
        rows.append((lineno, row))
    return rows


_WS = re.compile(r"[ \t\n\r]*")


def _read_json(path: str | Path, text: str) -> list[tuple[int, dict]]:
    """Rows of a JSON text holding one list of objects, each with the line its element starts on."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        hint = "fix the syntax there, or re-export the file if it was cut off"
        if e.msg == "Extra data":
            hint = "a .json file must hold one list; if it has one object per line, rename it to .jsonl"
        raise DataError(path, e.lineno, f"invalid JSON ({e.msg}, column {e.colno}); {hint}") from None
    if not isinstance(doc, list):
        raise DataError(
            path,
            None,
            f"top level is {_describe(doc)}, expected a list of objects [{{...}}, {{...}}]; wrap the rows in a list",
        )
    # json.loads forgets positions; walk the (already valid) list again to find the line each element starts on.
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end() + 1  # just past "["
    line, counted_to = 1, 0
    rows = []
    for index, row in enumerate(doc):
        pos = _WS.match(text, pos).end()
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        if not isinstance(row, dict):
            raise DataError(
                path,
                line,
                f"list element {index} is {_describe(row)}, not an object; every element must be {{...}}",
            )
        rows.append((line, row))
        _, end = decoder.raw_decode(text, pos)
        pos = _WS.match(text, end).end() + 1  # past the "," (or the closing "]")
    return rows


def _read_csv(path: str | Path, text: str) -> list[tuple[int, dict]]:
    """Rows of a CSV text with a header line, each with the first physical line of its record."""
    # Whole HH transcripts can exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    # csv.reader rather than DictReader: DictReader skips blank lines and pads short rows silently, which
    # would hide both the start line of a record and a row with missing cells.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows = []
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not cells:  # a blank line; a quoted empty cell ("") is a row and is checked like any other
                continue
            if header is None:
                header = cells
                dupes = sorted({c for c in header if header.count(c) > 1})
                if dupes:
                    raise DataError(
                        path, line, f"duplicate column names {dupes}; give every column a unique name"
                    )
                continue
            if len(cells) != len(header):
                raise DataError(
                    path,
                    line,
                    f"row has {len(cells)} cells but the header has {len(header)}; "
                    "quote fields that contain commas or newlines",
                )
            rows.append((line, dict(zip(header, cells))))
    except csv.Error as e:
        raise DataError(
            path, reader.line_num, f"malformed CSV ({e}); check the quoting near this line"
        ) from None
    if header is not None and not rows:
        raise DataError(path, None, "CSV has a header but no rows; add data rows below the header")
    return rows


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """All rows of a data file as (1-based line number, row dict).

    The line is where the record starts: the JSONL line, the line of a JSON list element's opening brace,
    or the first physical line of a CSV record. Raises `DataError` for anything unreadable or empty.
    """
    container, compressed = detect_container(path)
    text = _read_text(path, compressed)
    if not text.strip():
        raise DataError(path, None, "file is empty (no rows); check that it was written completely")
    reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv}[container]
    rows = reader(path, text)
    if not rows:
        raise DataError(path, None, "file has no rows; add at least one example")
    return rows


# ------------------------------------------------------------------------------------------------- schemas


def detect_schema(
    rows: list[tuple[int, dict]], keys: ColumnKeys = DEFAULT_KEYS, path: str | Path = "<rows>"
) -> str:
    """Which schema the rows follow (one of `SCHEMAS`), judged by the fields of the first row.

    Later rows are checked field by field when they are converted, so a row missing a field is reported
    with its own line.
    """
    if not rows:
        raise DataError(path, None, "file has no rows; add at least one example")
    line, row = rows[0]
    found = list(row)
    has = {name: getattr(keys, name) in row for name in ("prompt", "chosen", "rejected", "response")}
    if has["chosen"] and has["rejected"]:
        return "pairs" if has["prompt"] else "pairs_implicit"
    for present, missing in (("chosen", "rejected"), ("rejected", "chosen")):
        if has[present]:
            key = getattr(keys, missing)
            raise DataError(
                path,
                line,
                f"has {getattr(keys, present)!r} but no {key!r} field (found: {', '.join(found)}); "
                f"preference pairs need both - {_rename_hint(keys, key, found)}",
            )
    if has["prompt"]:
        return "sft" if has["response"] else "prompts"
    raise DataError(
        path,
        line,
        f"no known schema in fields ({', '.join(found)}): expected {keys.prompt}+{keys.chosen}+{keys.rejected} "
        f"(pairs), {keys.chosen}+{keys.rejected} (HH-style transcripts), {keys.prompt}+{keys.response} (SFT) "
        f"or {keys.prompt} (prompts); rename fields with --prompt-key/--chosen-key/--rejected-key/--response-key",
    )


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH-RLHF transcripts into (prompt, chosen response, rejected response).

    The prompt is the longest shared start of both texts, cut back to end with its last "\\n\\nAssistant:".
    When the texts diverge only in the final assistant turn (the usual case) this is exactly the chosen
    text up to its last "\\n\\nAssistant:". A few HH rows diverge earlier; there the prompt ends at the
    last assistant turn both share and the responses span the remaining turns (no row is dropped).
    Raises `ValueError` when the texts share no assistant turn.
    """
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT_MARKER)
    if cut < 0:
        raise ValueError(
            "chosen and rejected share no '\\n\\nAssistant:' turn, so the prompt cannot be split off; "
            "add an explicit prompt field (or pass --prompt-key NAME)"
        )
    end = cut + len(ASSISTANT_MARKER)
    return chosen[:end], chosen[end:], rejected[end:]


def _text(
    path: str | Path, line: int, row: dict, key: str, keys: ColumnKeys, allow_empty: bool = False
) -> str:
    """Field `key` of `row` as a string; raises a DataError naming the fix if it is missing, not text, or empty."""
    if key not in row:
        raise DataError(
            path,
            line,
            f"missing field {key!r} (found: {', '.join(row)}); {_rename_hint(keys, key, list(row))}",
        )
    value = row[key]
    if not isinstance(value, str):
        raise DataError(
            path, line, f"field {key!r} is {_describe(value)}, expected a string; store the text as a string"
        )
    if not allow_empty and not value.strip():
        raise DataError(path, line, f"field {key!r} is empty; fill it in or remove the row")
    return value


def _margin(path: str | Path, line: int, row: dict, key: str) -> float | None:
    """Optional numeric field `key`: None when absent, null or (in CSV) an empty cell."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):  # CSV cells are always text
        try:
            value = float(value)
        except ValueError:
            raise DataError(
                path, line, f"field {key!r} is {value!r}, expected a number like 1.5; fix or clear it"
            ) from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(
            path, line, f"field {key!r} is {_describe(value)}, expected a number like 1.5; fix or remove it"
        )
    if not math.isfinite(value):
        raise DataError(path, line, f"field {key!r} is {value}, expected a finite number; fix or remove it")
    return float(value)


# --------------------------------------------------------------------------------------- typed conversions


def pairs_from_rows(
    path: str | Path, rows: list[tuple[int, dict]], keys: ColumnKeys = DEFAULT_KEYS, schema: str | None = None
) -> list[Pair]:
    """Preference pairs from rows already read (`schema` is detected when not given)."""
    schema = schema or detect_schema(rows, keys, path)
    if schema not in ("pairs", "pairs_implicit"):
        raise DataError(
            path,
            None,
            f"this is a {schema!r} file, but preference pairs are needed: fields {keys.prompt}, {keys.chosen}, "
            f"{keys.rejected} (or HH-style {keys.chosen}, {keys.rejected}); rename with --chosen-key/--rejected-key",
        )
    pairs = []
    for line, row in rows:
        chosen = _text(path, line, row, keys.chosen, keys)
        rejected = _text(path, line, row, keys.rejected, keys)
        if schema == "pairs":
            prompt = _text(path, line, row, keys.prompt, keys, allow_empty=True)
        else:
            try:
                prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
            except ValueError as e:
                raise DataError(path, line, str(e)) from None
            # HH rows where the preferred answer is silence are real data, but two silent answers are not a pair.
            if not chosen.strip() and not rejected.strip():
                raise DataError(
                    path,
                    line,
                    "chosen and rejected responses are both empty after the prompt; fix or remove the row",
                )
        pairs.append(Pair(prompt, chosen, rejected, _margin(path, line, row, keys.margin), line))
    return pairs


def sft_from_rows(
    path: str | Path, rows: list[tuple[int, dict]], keys: ColumnKeys = DEFAULT_KEYS, schema: str | None = None
) -> list[SFTExample]:
    """SFT examples from rows: prompt+response, or prompt+chosen of a pairs file."""
    schema = schema or detect_schema(rows, keys, path)
    if schema in ("pairs", "pairs_implicit"):
        return [SFTExample(p.prompt, p.chosen, p.line) for p in pairs_from_rows(path, rows, keys, schema)]
    if schema == "prompts":
        raise DataError(
            path,
            None,
            f"this file has prompts only, but SFT needs responses: add a {keys.response!r} field "
            f"(or {keys.chosen!r}+{keys.rejected!r}), or pass --response-key NAME if it is named differently",
        )
    return [
        SFTExample(
            _text(path, line, row, keys.prompt, keys, allow_empty=True),
            _text(path, line, row, keys.response, keys),
            line,
        )
        for line, row in rows
    ]


def prompts_from_rows(
    path: str | Path, rows: list[tuple[int, dict]], keys: ColumnKeys = DEFAULT_KEYS, schema: str | None = None
) -> list[str]:
    """Prompts from rows of any schema (HH-style pairs give their split-off prompts), one per row."""
    schema = schema or detect_schema(rows, keys, path)
    if schema == "pairs_implicit":
        return [p.prompt for p in pairs_from_rows(path, rows, keys, schema)]
    # Generation from an empty prompt is meaningless, so unlike SFT/pair files prompts must not be blank here.
    return [_text(path, line, row, keys.prompt, keys) for line, row in rows]


def load_pairs(path: str | Path, keys: ColumnKeys = DEFAULT_KEYS) -> list[Pair]:
    """Preference pairs (explicit prompt or HH-style implicit prompt) for reward-model training."""
    return pairs_from_rows(path, read_rows(path), keys)


def load_sft(path: str | Path, keys: ColumnKeys = DEFAULT_KEYS) -> list[SFTExample]:
    """SFT examples; a pairs file is accepted and trains on its chosen responses."""
    return sft_from_rows(path, read_rows(path), keys)


def load_prompts(path: str | Path, keys: ColumnKeys = DEFAULT_KEYS) -> list[str]:
    """Prompts for PPO rollouts, from a file of any schema."""
    return prompts_from_rows(path, read_rows(path), keys)


def load_prompt_table(path: str | Path, keys: ColumnKeys = DEFAULT_KEYS) -> tuple[list[str], dict[str, list]]:
    """Prompts as `load_prompts` returns them, plus every other column of the file, for reward functions.

    The columns map each field name (the prompt field excluded) to one value per prompt, in file order; a
    row without a field that other rows have gets None there. Values are as stored: CSV cells are strings.
    HH-style transcript files have no per-prompt columns (their fields are the transcripts), so they give
    an empty dict.
    """
    rows = read_rows(path)
    schema = detect_schema(rows, keys, path)
    prompts = prompts_from_rows(path, rows, keys, schema)
    if schema == "pairs_implicit":
        return prompts, {}
    # dict.fromkeys keeps first-seen order, so columns come out in the order the file introduces them.
    names = dict.fromkeys(name for _, row in rows for name in row if name != keys.prompt)
    return prompts, {name: [row.get(name) for _, row in rows] for name in names}
