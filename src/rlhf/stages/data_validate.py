"""`rlhf data validate FILE`: read a file exactly as the stages will and report what is in it."""

from __future__ import annotations

from rlhf.checkpoint import write_json
from rlhf.config import DataValidateConfig
from rlhf.data.tokenizer import ByteTokenizer, HFTokenizer
from rlhf.data.validate import format_report, validate_file
from rlhf.stages.common import setup_run


def run_validate(cfg: DataValidateConfig) -> dict:
    out = setup_run(cfg)
    k = cfg.keys
    keys = k.column_keys()
    tok = ByteTokenizer() if cfg.tokenizer == "byte" else HFTokenizer(cfg.tokenizer)
    report = validate_file(cfg.file, tok, cfg.max_length, keys, cfg.keys.split)
    print(format_report(report))
    write_json(out / "summary.json", report)
    print(f"outputs: {out}/summary.json")
    return report
