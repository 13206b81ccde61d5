"""`validate_file`: the report on small files of each schema and on the shared HH-RLHF file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.data.collate import encode_prompt_response
from rlhf.data.loader import load_pairs
from rlhf.data.tokenizer import ByteTokenizer
from rlhf.data.validate import format_report, validate_file
from rlhf.errors import DataError

HH_FILE = Path("/work/shared/data/hh-rlhf-harmless/pairs.jsonl.gz")
TOK = ByteTokenizer()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_pairs_report(tmp_path: Path) -> None:
    rows = [
        {"prompt": "abcd", "chosen": "xy", "rejected": "xy", "margin": 1.0},
        {"prompt": "a" * 20, "chosen": "long answer", "rejected": "no"},
    ]
    report = validate_file(write_jsonl(tmp_path / "p.jsonl", rows), TOK, max_length=10)
    json.dumps(report)
    assert report["container"] == "jsonl" and report["compressed"] is False
    assert (report["rows"], report["schema"], report["n_pairs"]) == (2, "pairs", 2)
    assert (report["n_identical"], report["n_with_margin"], report["n_truncated"]) == (1, 1, 1)
    assert report["tokens"]["prompt"] == {"min": 4, "mean": 12.0, "median": 12.0, "p95": 19.2, "max": 20}
    # Sequences are bos + prompt + response + eos: 8, 8, 33, 24.
    assert report["tokens"]["sequence"]["min"] == 8 and report["tokens"]["sequence"]["max"] == 33
    text = format_report(report)
    assert "schema:    pairs" in text and "identical: 1" in text and "truncated: 1" in text


def test_sft_and_prompts_reports(tmp_path: Path) -> None:
    sft = validate_file(write_jsonl(tmp_path / "s.jsonl", [{"prompt": "ab", "response": "cde"}]), TOK)
    assert sft["schema"] == "sft" and sft["tokens"]["sequence"]["max"] == 7 and sft["n_truncated"] == 0
    prompts = validate_file(write_jsonl(tmp_path / "q.jsonl", [{"prompt": "abc"}]), TOK, max_length=3)
    assert prompts["schema"] == "prompts" and prompts["n_truncated"] == 1
    assert "prompt-only" in format_report(prompts)


def test_validate_raises_the_loaders_errors(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p", "chosen": " ", "rejected": "r"}]
    with pytest.raises(DataError, match=r"p\.jsonl:2: field 'chosen' is empty"):
        validate_file(write_jsonl(tmp_path / "p.jsonl", rows), TOK)


@pytest.mark.skipif(not HH_FILE.exists(), reason="shared HH-RLHF file not present")
def test_hh_file_report_matches_collation() -> None:
    report = validate_file(HH_FILE, TOK, max_length=512)
    assert (report["rows"], report["schema"], report["n_pairs"]) == (1812, "pairs_implicit", 1812)
    assert report["compressed"] is True and report["n_identical"] == 0
    # n_truncated counts exactly the pairs that encode_prompt_response would cut on either side.
    cut = sum(
        encode_prompt_response(TOK, p.prompt, p.chosen, 512).truncated
        or encode_prompt_response(TOK, p.prompt, p.rejected, 512).truncated
        for p in load_pairs(HH_FILE)
    )
    assert report["n_truncated"] == cut > 0
