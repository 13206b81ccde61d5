"""Containers: where rows come from. One reader per container, each yielding `(location, row dict)`.

- JSONL (`.jsonl`, `.ndjson`), JSON (a list of objects) and CSV, each optionally gzip-compressed: compression is
  detected from the bytes (magic `1f 8b`), the container from the name with `.gz` stripped. A row's location is
  its 1-based line (where its record starts). A CSV column named `NAME:json` holds JSON text (a conversation's
  messages): it is parsed and read as column NAME. No other CSV cell is ever parsed.
- Parquet (`.parquet`), read with pyarrow in record batches, so a large file is never in memory whole. A row's
  location is its 0-based row index, as `pandas.read_parquet(f).iloc[i]` or `datasets` would number it.
- A directory: a `datasets.save_to_disk` directory (a Dataset, or a DatasetDict whose split `--split` picks),
  or every data file under it (a cloned Hugging Face dataset repo: `data/train-00000-of-00003.parquet`, ...),
  sorted by path. `--split` keeps the files whose path names that split (`train`, `test`, ...); without it a
  directory with `train` files reads those and one without reads everything.

pyarrow (Parquet) and datasets (`save_to_disk` directories) come with the `data` extra: `pip install 'rlhf[data]'`.
Every problem raises `DataError(path, location, message)` naming the fix.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhf.errors import DataError

CONTAINERS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
JSON_COLUMN = ":json"  # a CSV header suffix: this column's cells are JSON text
BATCH_ROWS = 1024  # rows per Parquet / datasets read: bounded memory whatever the file size


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


def describe(value: Any) -> str:
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


def _iter_jsonl(path: str | Path, compressed: bool) -> Iterator[tuple[int, dict]]:
    """Rows of a JSONL file, one object per non-blank line, streamed: a file of any size is never read whole."""
    lineno = 0
    try:
        with (gzip.open if compressed else open)(path, "rb") as fh:
            # Lines split on b"\n" only: str.splitlines would also split on U+2028 and friends, which JSON allows.
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        path,
                        lineno,
                        f"not valid UTF-8 (byte 0x{raw[e.start : e.start + 1].hex()}); re-save the file as UTF-8, "
                        "e.g. iconv -f latin1 -t utf-8",
                    ) from None
                if lineno == 1:  # spreadsheet exports often start with a byte-order mark
                    line = line.removeprefix("\ufeff")
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
                        f'line is {describe(row)}, not a JSON object; write each row as {{"prompt": ...}}',
                    )
                yield lineno, row
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            path, None, f"corrupt or truncated gzip stream ({e}); re-download the file or compress it again"
        ) from None
    except OSError as e:
        raise DataError(
            path, None, f"cannot read the file ({e.strerror or e}); check its permissions"
        ) from None


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
            f"top level is {describe(doc)}, expected a list of objects [{{...}}, {{...}}]; wrap the rows in a list",
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
                f"list element {index} is {describe(row)}, not an object; every element must be {{...}}",
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


def _parse_json_columns(path: str | Path, rows: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """CSV rows with every `NAME:json` column parsed into column NAME (a conversation stored as JSON text)."""
    out = []
    for line, row in rows:
        parsed = {}
        for key, value in row.items():
            if not key.endswith(JSON_COLUMN):
                if _looks_like_messages(value):  # never parsed silently: the header must say so
                    raise DataError(
                        path,
                        line,
                        f"column {key!r} holds a JSON list of messages, but CSV cells are text unless the "
                        f"header says otherwise; rename the column to {key + JSON_COLUMN!r} to read it as messages",
                    )
                parsed[key] = value
                continue
            name = key[: -len(JSON_COLUMN)]
            try:
                parsed[name] = json.loads(value)
            except json.JSONDecodeError as e:
                raise DataError(
                    path, line, f"column {key!r} is not valid JSON ({e.msg}, column {e.colno}); fix the cell"
                ) from None
        out.append((line, parsed))
    return out


def _looks_like_messages(cell: str) -> bool:
    """Is a CSV cell a JSON list of role/content objects (a conversation someone forgot to declare)?"""
    if not cell.lstrip().startswith("[{"):
        return False
    try:
        value = json.loads(cell)
    except json.JSONDecodeError:
        return False
    return isinstance(value, list) and any(isinstance(m, dict) and "role" in m for m in value)


def _need(module: str, what: str):
    """Import an optional dependency of the `data` extra, or say in one line how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise DataError(
            what, None, f"reading this needs {module}, from the data extra: pip install 'rlhf[data]'"
        ) from None


def _iter_parquet(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Rows of a Parquet file in record batches (0-based row index); the file is never read whole."""
    try:
        with open(path, "rb") as fh:
            start = fh.read(4)
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(size - 4, 0))
            end = fh.read(4)
    except OSError as e:
        raise DataError(path, None, f"cannot read the file ({e.strerror}); check its permissions") from None
    if start != PARQUET_MAGIC or end != PARQUET_MAGIC:
        raise DataError(
            path,
            None,
            "named .parquet but is not a Parquet file (no PAR1 magic); rename it to its real type "
            "(.jsonl, .json, .csv) or re-export it as Parquet",
        )
    _need("pyarrow", str(path))
    import pyarrow.parquet as pq

    try:
        # A buffered stream without pre-buffering: pyarrow otherwise reads whole column chunks ahead, which held
        # 1.1 GB resident for a 1 GB file; this way memory stays near one batch (130 MB measured).
        parquet = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        index = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            for row in batch.to_pylist():
                yield index, row
                index += 1
    except (
        OSError
    ) as e:  # pyarrow raises ArrowInvalid / ArrowIOError, both OSError subclasses, on corrupt data
        raise DataError(path, None, f"corrupt or unreadable Parquet file ({e}); re-export it") from None
    if index == 0:
        raise DataError(path, None, "Parquet file has no rows; add at least one example")


def is_saved_dataset(path: Path) -> bool:
    """Is `path` a `datasets.save_to_disk` directory (a Dataset or a DatasetDict)?"""
    return (path / "dataset_dict.json").exists() or (
        (path / "state.json").exists() and (path / "dataset_info.json").exists()
    )


def _iter_saved_dataset(path: Path, split: str) -> Iterator[tuple[int, dict]]:
    """Rows of a `save_to_disk` directory, memory-mapped by datasets and read in batches (0-based index)."""
    _need("datasets", str(path))
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for a damaged directory
        raise DataError(path, None, f"cannot load this save_to_disk directory ({e}); save it again") from None
    if isinstance(ds, datasets.DatasetDict):
        name = split or ("train" if "train" in ds else "")
        if name not in ds:
            raise DataError(
                path, None, f"no split {name!r} in this DatasetDict (splits: {', '.join(ds)}); pass --split"
            )
        ds, path = ds[name], path / name
    if len(ds) == 0:
        raise DataError(path, None, "dataset has no rows; add at least one example")
    index = 0
    # Arrow batches, as for Parquet: the rows come out as stored, whatever `datasets` features would decode to.
    for table in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for row in table.to_pylist():
            yield index, row
            index += 1


def _data_files(directory: Path) -> list[Path]:
    files = []
    for p in sorted(directory.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(directory).parts):
            continue  # .git, .cache and other hidden files of a cloned dataset repo
        name = p.name.lower().removesuffix(".gz")
        if Path(name).suffix in CONTAINERS and not (name.endswith(".json") and _is_metadata(p)):
            files.append(p)
    return files


def _is_metadata(p: Path) -> bool:
    """JSON files that describe a dataset rather than hold its rows (dataset_info.json and friends)."""
    return p.name in ("dataset_info.json", "dataset_dict.json", "state.json", "dataset_infos.json")


def _split_names(p: Path, root: Path) -> set[str]:
    """The words of a shard's path a split can be named by: `data/train-00000-of-00003.parquet` -> train, data, ..."""
    words = re.split(r"[^a-z0-9]+", str(p.relative_to(root)).lower())
    return {w for w in words if w}


def shards(path: str | Path, split: str = "") -> list[Path]:
    """The data sources behind `path`: the file itself, a `save_to_disk` directory, or a directory's shard files
    (of `split` when given; of `train` when no split is given and train files exist)."""
    path = Path(path)
    if not path.is_dir():
        detect_container(path)  # a missing file or an unknown type fails here, with its fix
        return [path]
    if is_saved_dataset(path):
        return [path]
    files = _data_files(path)
    if not files:
        supported = ", ".join(sorted(CONTAINERS))
        raise DataError(
            path,
            None,
            f"directory has no readable data file ({supported}, optionally .gz); pass the file itself",
        )
    chosen = split or ("train" if any("train" in _split_names(f, path) for f in files) else "")
    if chosen:
        picked = [f for f in files if chosen.lower() in _split_names(f, path)]
        if not picked:
            raise DataError(
                path, None, f"no data file names the split {chosen!r}; pass --split with one of its splits"
            )
        files = picked
    return files


def iter_rows(source: str | Path, split: str = "") -> Iterator[tuple[int, dict]]:
    """Rows of one source of `shards(...)`, as (location, row dict): line for text files, row index otherwise.

    JSONL streams line by line, Parquet and datasets directories in batches; JSON and CSV are parsed whole (a
    JSON list cannot be split before it is parsed). Raises `DataError` for anything unreadable or empty.
    """
    source = Path(source)
    if source.is_dir():
        yield from _iter_saved_dataset(source, split)
        return
    container, compressed = detect_container(source)
    if container == "parquet":
        yield from _iter_parquet(source)
        return
    if container == "jsonl":
        rows = _iter_jsonl(source, compressed)
        first = next(rows, None)
        if first is None:
            raise DataError(source, None, "file is empty (no rows); check that it was written completely")
        yield first
        yield from rows
        return
    text = _read_text(source, compressed)
    if not text.strip():
        raise DataError(source, None, "file is empty (no rows); check that it was written completely")
    reader = {"json": _read_json, "csv": _read_csv}[container]
    rows = reader(source, text)
    if not rows:
        raise DataError(source, None, "file has no rows; add at least one example")
    if container == "csv":
        rows = _parse_json_columns(source, rows)
    yield from rows


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """All rows of one data file (or `save_to_disk` directory) as (location, row dict)."""
    return list(iter_rows(path))
