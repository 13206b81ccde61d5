"""Data loader: containers, gzip detection, schemas, and one DataError (with file and line) per mistake."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlhf.data.containers import read_rows
from rlhf.data.loader import (
    ColumnKeys,
    Pair,
    detect_schema,
    load_pairs,
    load_prompts,
    load_sft,
    split_implicit_prompt,
)
from rlhf.errors import DataError

HH_FILE = Path("/work/shared/data/hh-rlhf-harmless/pairs.jsonl.gz")

JSONL = '{"prompt": "p1", "chosen": "c1", "rejected": "r1", "margin": 2}\n\n{"prompt": "p2", "chosen": "c2", "rejected": "r2"}\n'
JSON = '[\n  {"prompt": "p1", "chosen": "c1", "rejected": "r1", "margin": 2},\n\n  {"prompt": "p2",\n   "chosen": "c2", "rejected": "r2"}\n]\n'
# The first record spans two physical lines (a quoted newline); the second starts on line 4.
CSV = 'prompt,chosen,rejected,margin\np1,"c1\nmore",r1,2\np2,c2,r2,\n'
EXPECTED = {
    "jsonl": [Pair("p1", "c1", "r1", 2.0, 1), Pair("p2", "c2", "r2", None, 3)],
    "ndjson": [Pair("p1", "c1", "r1", 2.0, 1), Pair("p2", "c2", "r2", None, 3)],
    "json": [Pair("p1", "c1", "r1", 2.0, 2), Pair("p2", "c2", "r2", None, 4)],
    "csv": [Pair("p1", "c1\nmore", "r1", 2.0, 2), Pair("p2", "c2", "r2", None, 4)],
}
CONTENT = {"jsonl": JSONL, "ndjson": JSONL, "json": JSON, "csv": CSV}


def write(tmp_path: Path, name: str, content: str | bytes, gz: bool = False) -> Path:
    """Write `content` (UTF-8 when text) to tmp_path/name, gzip-compressing the bytes when `gz`."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def error(fn, *args) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args)
    return info.value


# ----------------------------------------------------------------------------------------------- containers


@pytest.mark.parametrize("ext", ["jsonl", "ndjson", "json", "csv"])
@pytest.mark.parametrize(
    "suffix,gz",
    [("", False), (".gz", True), ("", True)],
    ids=["plain", "gz-name-gz-bytes", "plain-name-gz-bytes"],
)
def test_each_container_with_and_without_gzip(tmp_path: Path, ext: str, suffix: str, gz: bool) -> None:
    path = write(tmp_path, f"data.{ext}{suffix}", CONTENT[ext], gz=gz)
    assert load_pairs(path) == EXPECTED[ext]


def test_gz_name_without_gzip_bytes_is_an_error(tmp_path: Path) -> None:
    e = error(read_rows, write(tmp_path, "x.jsonl.gz", JSONL))
    assert "x.jsonl.gz" in str(e) and "not gzip" in str(e) and e.line is None


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_broken_gzip_stream(tmp_path: Path, damage: str) -> None:
    data = bytearray(gzip.compress(JSONL.encode() * 50))
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    e = error(read_rows, write(tmp_path, "x.jsonl.gz", bytes(data)))
    assert "x.jsonl.gz" in str(e) and "gzip" in str(e)


def test_missing_file(tmp_path: Path) -> None:
    e = error(read_rows, tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(e) and "not found" in str(e)


def test_unknown_extension_lists_supported(tmp_path: Path) -> None:
    e = error(read_rows, write(tmp_path, "x.txt", JSONL))
    assert "x.txt" in str(e) and ".jsonl" in str(e) and ".csv" in str(e) and ".gz" in str(e)


@pytest.mark.parametrize("gz", [False, True])
def test_non_utf8_reports_line_of_first_bad_byte(tmp_path: Path, gz: bool) -> None:
    data = b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "caf\xe9"}\n'
    e = error(read_rows, write(tmp_path, "x.jsonl", data, gz=gz))
    assert e.line == 3 and "UTF-8" in str(e) and "x.jsonl:3" in str(e)


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n\n"),
        ("empty.json", "[]"),
        ("empty.csv", ""),
        ("header.csv", "prompt,response\n"),
    ],
)
def test_empty_files(tmp_path: Path, name: str, content: str) -> None:
    e = error(read_rows, write(tmp_path, name, content))
    assert name in str(e) and ("empty" in str(e) or "no rows" in str(e))


def test_empty_gzip_file(tmp_path: Path) -> None:
    assert "empty" in str(error(read_rows, write(tmp_path, "x.jsonl.gz", "", gz=True)))


def test_jsonl_truncated_last_record(tmp_path: Path) -> None:
    e = error(read_rows, write(tmp_path, "x.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c'))
    assert e.line == 3 and "invalid JSON" in str(e)


def test_jsonl_line_not_an_object(tmp_path: Path) -> None:
    e = error(read_rows, write(tmp_path, "x.jsonl", '{"prompt": "a"}\n["prompt", "b"]\n'))
    assert e.line == 2 and "not a JSON object" in str(e)


def test_json_truncated(tmp_path: Path) -> None:
    e = error(read_rows, write(tmp_path, "x.json", '[\n  {"prompt": "a"},\n  {"prompt": "b"'))
    assert e.line == 3 and "invalid JSON" in str(e)


def test_json_with_one_object_per_line_suggests_jsonl(tmp_path: Path) -> None:
    e = error(read_rows, write(tmp_path, "x.json", '{"prompt": "a"}\n{"prompt": "b"}\n'))
    assert e.line == 2 and ".jsonl" in str(e)


def test_json_top_level_not_a_list(tmp_path: Path) -> None:
    e = error(read_rows, write(tmp_path, "x.json", '{"prompt": "a"}'))
    assert e.line is None and "list of objects" in str(e)


def test_json_element_not_an_object(tmp_path: Path) -> None:
    e = error(read_rows, write(tmp_path, "x.json", '[\n  {"prompt": "a"},\n  "b"\n]'))
    assert e.line == 3 and "element 1" in str(e)


def test_csv_row_with_wrong_cell_count(tmp_path: Path) -> None:
    e = error(read_rows, write(tmp_path, "x.csv", "prompt,response\na,b\nc,d,e\n"))
    assert e.line == 3 and "quote" in str(e)


def test_csv_unterminated_quote(tmp_path: Path) -> None:
    e = error(read_rows, write(tmp_path, "x.csv", 'prompt,response\na,"b\n'))
    assert "x.csv" in str(e) and "CSV" in str(e)


def test_no_row_is_dropped(tmp_path: Path) -> None:
    lines = [json.dumps({"prompt": f"p{i}"}) for i in range(7)]
    assert load_prompts(write(tmp_path, "x.jsonl", "\n".join(lines))) == [f"p{i}" for i in range(7)]


# -------------------------------------------------------------------------------------------------- fields


def pairs_jsonl(tmp_path: Path, *rows: dict) -> Path:
    head = {"prompt": "p", "chosen": "c", "rejected": "r"}
    return write(tmp_path, "x.jsonl", "\n".join(json.dumps(r) for r in (head, *rows)) + "\n")


@pytest.mark.parametrize(
    "row,words",
    [
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, ["'chosen'", "number"]),
        ({"prompt": "p", "chosen": ["a"], "rejected": "r"}, ["'chosen'", "list"]),
        ({"prompt": None, "chosen": "c", "rejected": "r"}, ["'prompt'", "null"]),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "margin": "big"}, ["'margin'", "number"]),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "margin": True}, ["'margin'", "boolean"]),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "margin": float("nan")}, ["'margin'", "finite"]),
        ({"prompt": "p", "chosen": "  ", "rejected": "r"}, ["'chosen'", "empty"]),
        ({"prompt": "p", "chosen": "c", "rejected": ""}, ["'rejected'", "empty"]),
        ({"prompt": "p", "chosen": "c"}, ["missing field 'rejected'", "--keys.rejected-key"]),
    ],
)
def test_bad_field_reports_its_line(tmp_path: Path, row: dict, words: list[str]) -> None:
    e = error(load_pairs, pairs_jsonl(tmp_path, row))
    assert e.line == 2 and str(e).startswith(f"{tmp_path / 'x.jsonl'}:2: ")
    for word in words:
        assert word in str(e)


def test_csv_margin_not_a_number(tmp_path: Path) -> None:
    e = error(load_pairs, write(tmp_path, "x.csv", "prompt,chosen,rejected,margin\np,c,r,1\np,c,r,high\n"))
    assert e.line == 3 and "'margin'" in str(e)


def test_csv_missing_column_names_found_columns_and_flag(tmp_path: Path) -> None:
    e = error(load_pairs, write(tmp_path, "x.csv", "prompt,chosen,rejcted\np,c,r\n"))
    msg = str(e)
    assert "'rejected'" in msg and "rejcted" in msg and "--keys.rejected-key" in msg


def test_unknown_schema_lists_expected_fields_and_flags(tmp_path: Path) -> None:
    e = error(load_sft, write(tmp_path, "x.jsonl", '{"question": "q", "answer": "a"}\n'))
    assert e.line == 1 and "question" in str(e) and "--keys.prompt-key" in str(e)


def test_custom_column_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "x.jsonl", '{"q": "p", "good": "c", "bad": "r", "w": 0.5}\n')
    keys = ColumnKeys(prompt="q", chosen="good", rejected="bad", margin="w")
    assert load_pairs(path, keys) == [Pair("p", "c", "r", 0.5, 1)]


# ------------------------------------------------------------------------------------------------- schemas

HH_CHOSEN = (
    "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken cross?"
)
HH_REJECTED = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No."


def test_detect_schema() -> None:
    assert detect_schema([(1, {"prompt": "", "chosen": "", "rejected": ""})]) == "pairs"
    assert detect_schema([(1, {"chosen": "", "rejected": ""})]) == "pairs_implicit"
    assert detect_schema([(1, {"prompt": "", "response": ""})]) == "sft"
    assert detect_schema([(1, {"prompt": "", "id": 3})]) == "prompts"


def test_implicit_prompt_split(tmp_path: Path) -> None:
    path = write(tmp_path, "hh.jsonl", json.dumps({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}) + "\n")
    (pair,) = load_pairs(path)
    assert pair.prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:"
    assert (pair.chosen, pair.rejected, pair.line) == (" Why did the chicken cross?", " No.", 1)
    assert load_prompts(path) == [pair.prompt]
    assert [(e.prompt, e.response) for e in load_sft(path)] == [(pair.prompt, pair.chosen)]


def test_implicit_split_when_texts_diverge_before_the_last_turn() -> None:
    chosen = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"
    prompt, c, r = split_implicit_prompt(chosen, "\n\nHuman: a\n\nAssistant: x")
    assert (prompt, c, r) == ("\n\nHuman: a\n\nAssistant:", " b\n\nHuman: c\n\nAssistant: d", " x")


def test_implicit_without_shared_assistant_turn(tmp_path: Path) -> None:
    rows = [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, {"chosen": "Human: a", "rejected": "Human: b"}]
    e = error(load_pairs, write(tmp_path, "hh.jsonl", "\n".join(map(json.dumps, rows))))
    assert e.line == 2 and "Assistant" in str(e) and "--keys.prompt-key" in str(e)


def test_implicit_both_responses_empty(tmp_path: Path) -> None:
    text = "\n\nHuman: a\n\nAssistant: "
    e = error(load_pairs, write(tmp_path, "hh.jsonl", json.dumps({"chosen": text, "rejected": text})))
    assert e.line == 1 and "both empty" in str(e)


def test_stage_needs_what_the_file_lacks(tmp_path: Path) -> None:
    sft = write(tmp_path, "sft.jsonl", '{"prompt": "p", "response": "r"}\n')
    prompts = write(tmp_path, "prompts.jsonl", '{"prompt": "p"}\n')
    assert "preference pairs are needed" in str(error(load_pairs, sft))
    assert "--keys.response-key" in str(error(load_sft, prompts))
    assert load_prompts(sft) == ["p"] and load_sft(sft)[0].response == "r"


def test_sft_from_pairs_uses_chosen(tmp_path: Path) -> None:
    path = write(tmp_path, "x.jsonl", JSONL)
    assert [(e.prompt, e.response, e.line) for e in load_sft(path)] == [("p1", "c1", 1), ("p2", "c2", 3)]


def test_empty_prompt_rejected_only_for_prompts(tmp_path: Path) -> None:
    path = write(tmp_path, "x.jsonl", '{"prompt": "", "response": "r"}\n')
    assert load_sft(path)[0].prompt == ""
    assert error(load_prompts, path).line == 1


@pytest.mark.skipif(not HH_FILE.exists(), reason="shared HH-RLHF file not present")
def test_hh_harmless_file_loads_completely() -> None:
    pairs = load_pairs(HH_FILE)
    assert len(pairs) == 1812 and [p.line for p in pairs] == list(range(1, 1813))
    assert all(p.prompt.endswith("\n\nAssistant:") for p in pairs)
    assert len(load_sft(HH_FILE)) == len(load_prompts(HH_FILE)) == 1812
