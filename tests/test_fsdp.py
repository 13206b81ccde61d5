"""`--strategy fsdp` (FSDP2 on CPU with gloo): 2 sharded processes train like 1 process and each holds about half
the parameters; what FSDP does not do yet is refused with one line."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf import cli
from rlhf.metrics import read_metrics

TORCHRUN = Path(sys.executable).parent / "torchrun"
TOL = 1e-5
COMMON = ["--max-length", "64", "--max-steps", "3", "--optim.warmup-steps", "1", "--log-every", "1",
          "--eval-every", "2", "--save-every", "0", "--no-progress", "--threads", "1", "--device", "cpu"]  # fmt: skip
# 49 examples / 21 pairs in global batches of 16 / 10: the last batch leaves one process a stand-in row.
ARGS = {
    "sft": ["sft", "--arch.n-layer", "2", "--arch.n-embd", "32", "--arch.n-head", "2", "--task.n-train", "49",
            "--task.n-eval", "8", "--gold-samples", "4", "--max-new-tokens", "4", "--batch-size", "16",
            "--optim.grad-accum", "2"],
    "reward": ["reward", "--task.n-train", "21", "--task.n-eval", "8", "--batch-size", "10"],
    "dpo": ["dpo", "--task.n-train", "21", "--task.n-eval", "8", "--batch-size", "10", "--gold-samples", "4",
            "--max-new-tokens", "4"],
}  # fmt: skip


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node=2", "-m", "rlhf", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def sft_one(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "sft-one"
    cli.run([*ARGS["sft"], *COMMON, "--out", str(out)])
    return out


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_two_sharded_processes_train_like_one(stage, sft_one, tmp_path):
    parent = {"sft": [], "reward": ["--init", str(sft_one)], "dpo": ["--sft", str(sft_one)]}[stage]
    argv = [*ARGS[stage], *parent, *COMMON]
    one = sft_one if stage == "sft" else tmp_path / "one"
    if stage != "sft":
        cli.run([*argv, "--out", str(one)])
    res = torchrun(*argv, "--strategy", "fsdp", "--out", str(tmp_path / "fsdp"))
    assert res.returncode == 0, res.stderr[-4000:]
    a, b = load_file(str(one / "model.safetensors")), load_file(str(tmp_path / "fsdp" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOL
    rows_one, rows_fsdp = (
        read_metrics(one / "metrics.jsonl"),
        read_metrics(tmp_path / "fsdp" / "metrics.jsonl"),
    )
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_fsdp]
    for r, s in zip(rows_one, rows_fsdp):
        for k in ("loss", "eval/loss", "eval/accuracy", "grad_norm"):
            if k in r:
                assert math.isclose(r[k], s[k], rel_tol=TOL, abs_tol=TOL), (k, r[k], s[k])
    # Each process holds half the parameters (and so half the gradients and AdamW state), DDP all of them.
    whole = cli_summary(one)["param_bytes_per_process"]
    assert cli_summary(tmp_path / "fsdp")["param_bytes_per_process"] <= 0.55 * whole


def cli_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_fsdp_resume_is_bit_identical_and_another_process_count_is_refused(tmp_path, capsys):
    """Sharded resume checkpoints (torch.distributed.checkpoint, every process writes its shards; `latest` switches
    after all are on disk): resuming from step 2 gives the straight run's weights exactly."""
    argv = [*ARGS["sft"], *COMMON, "--max-steps", "5", "--save-every", "2", "--strategy", "fsdp"]
    straight = tmp_path / "straight"
    res = torchrun(*argv, "--out", str(straight))
    assert res.returncode == 0, res.stderr[-4000:]
    step2 = straight / "resume" / "step-0000002"
    assert (step2 / "shards").is_dir() and (step2 / "state.json").exists()
    assert not list((straight / "resume").glob("*.tmp"))
    resumed = tmp_path / "resumed"
    shutil.copytree(step2, resumed / "resume" / "step-0000002")
    (resumed / "resume" / "latest").write_text("step-0000002\n")
    res = torchrun(*argv, "--out", str(resumed), "--resume")
    assert res.returncode == 0 and "resumed at step 2" in res.stderr, res.stderr[-4000:]
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # One process cannot take the two processes' shards (no resharding yet): one line, not a wrong resume.
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--out", str(resumed), "--resume"])
    assert e.value.code == 2
    assert "written by a run with --strategy fsdp with 2 processes" in capsys.readouterr().err


def test_the_on_policy_stages_refuse_fsdp_with_one_line(sft_one, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["grpo", "--sft", str(sft_one), "--strategy", "fsdp", "--out", str(tmp_path / "g")])
    assert e.value.code == 2
    assert "error: grpo: --strategy fsdp shards sft, reward and dpo so far" in capsys.readouterr().err
