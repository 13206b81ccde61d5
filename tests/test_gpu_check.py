"""`benchmarks/gpu_check.sh --device cpu` runs end to end (small sizes), so the GPU script cannot rot unseen."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_the_cpu(tmp_path: Path) -> None:
    res = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (
        summary["device"] == "cpu" and summary["tests"]["passed"] and " passed" in summary["tests"]["result"]
    )
    assert len(summary["demo"]["gold_diff_ci95"]) == 2 and summary["demo"]["peak_bytes"] > 0
    figures = summary["throughput"][
        "fp32"
    ]  # (bf16 is measured on a GPU; on the CPU test_device trains in it)
    assert all(v > 0 for v in figures.values()), figures
    assert "GRPO compl/s" in res.stdout and "summary: " in res.stdout
    fsdp = summary["fsdp"]  # 2 gloo processes: SFT and GRPO sharded
    assert fsdp["processes"] == 2 and fsdp["sft_tokens_per_s"] > 0 and fsdp["grpo_completions_per_s"] > 0, (
        fsdp
    )
