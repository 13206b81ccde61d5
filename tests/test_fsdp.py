"""`--strategy fsdp` (FSDP2 on CPU with gloo): 2 sharded processes train like 1 process and each holds about half
the parameters, for every training stage; a resume with another process count is refused with one line."""

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


@pytest.fixture(scope="module")
def reward_one(sft_one, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "reward-one"
    cli.run([*ARGS["reward"], "--init", str(sft_one), *COMMON, "--max-steps", "2", "--out", str(out)])
    return out


RL = ["--episodes", "8", "--rollout-batch", "4", "--response-length", "8", "--log-every", "1", "--save-every", "1",
      "--no-progress", "--threads", "1", "--device", "cpu"]  # fmt: skip


def max_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


@pytest.mark.parametrize("stage,extra", [("ppo", []), ("grpo", ["--lora-rank", "4"])])
def test_on_policy_stages_under_fsdp_train_like_ddp(stage, extra, sft_one, reward_one, tmp_path):
    """PPO (policy + a separate value model sharded as one tree, the frozen reference as another) and GRPO with LoRA
    (the reference is the policy with its adapters off): the weights are gathered for each rollout, so 2 FSDP
    processes sample what 2 DDP processes sample (one stream per rank) and end at the same weights; each holds half
    the parameters; the sharded resume checkpoint and the one-file policy checkpoint are both written."""
    argv = [stage, "--sft", str(sft_one), "--reward", str(reward_one), *RL, *extra]
    for strategy in ("ddp", "fsdp"):
        res = torchrun(*argv, "--strategy", strategy, "--out", str(tmp_path / strategy))
        assert res.returncode == 0, res.stderr[-4000:]
    assert max_difference(tmp_path / "ddp", tmp_path / "fsdp") < TOL
    rows = [read_metrics(tmp_path / s / "metrics.jsonl") for s in ("ddp", "fsdp")]
    assert len(rows[0]) == len(rows[1]) == 2
    for r, s in zip(*rows):
        for k in ("objective/scores", "loss/policy_avg", "objective/kl"):
            assert math.isclose(r[k], s[k], rel_tol=TOL, abs_tol=TOL), (k, r[k], s[k])
    ddp, fsdp = cli_summary(tmp_path / "ddp"), cli_summary(tmp_path / "fsdp")
    assert fsdp["param_bytes_per_process"] <= 0.55 * ddp["param_bytes_per_process"]
    assert (tmp_path / "fsdp" / "resume" / "step-0000001" / "shards").is_dir()


def test_hugging_face_lora_and_bf16_mixed_precision_under_fsdp(tmp_path):
    """A Hugging Face GPT-2 with LoRA shards by its own layer class (`_no_split_modules`), frozen base and trainable
    adapters in the same units, and trains like DDP. --dtype bf16 under FSDP computes in bfloat16 and reduces
    gradients in float32 over float32 weights: the checkpoint stays float32 and near the autocast run."""
    from tiny_hf import gpt2_dir

    model = gpt2_dir(tmp_path / "gpt2")
    argv = [*ARGS["sft"], *COMMON, "--model", str(model), "--lora-rank", "4", "--gold-samples", "0"]
    for strategy in ("ddp", "fsdp"):
        res = torchrun(*argv, "--strategy", strategy, "--out", str(tmp_path / strategy))
        assert res.returncode == 0, res.stderr[-4000:]
    assert max_difference(tmp_path / "ddp", tmp_path / "fsdp") < TOL
    argv = [*ARGS["sft"], *COMMON, "--dtype", "bf16", "--gold-samples", "0"]
    for strategy in ("ddp", "fsdp"):
        res = torchrun(*argv, "--strategy", strategy, "--out", str(tmp_path / f"bf16-{strategy}"))
        assert res.returncode == 0, res.stderr[-4000:]
    weights = load_file(str(tmp_path / "bf16-fsdp" / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())
    # bf16 weights in the forward vs float32 weights under autocast: the same update to bf16's precision
    assert max_difference(tmp_path / "bf16-ddp", tmp_path / "bf16-fsdp") < 1e-2


@pytest.mark.slow
def test_ppo_resume_under_fsdp_is_bit_identical(sft_one, reward_one, tmp_path):
    """PPO's sharded resume checkpoint (policy + value shards, AdamW shards, the KL controller, RNG states): resuming
    from update 1 of 3 ends at the straight run's weights exactly."""
    argv = [
        "ppo",
        "--sft",
        str(sft_one),
        "--reward",
        str(reward_one),
        *RL,
        "--episodes",
        "12",
        "--strategy",
        "fsdp",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    res = torchrun(*argv, "--out", str(straight))
    assert res.returncode == 0, res.stderr[-4000:]
    shutil.copytree(straight / "resume" / "step-0000001", resumed / "resume" / "step-0000001")
    (resumed / "resume" / "latest").write_text("step-0000001\n")
    res = torchrun(*argv, "--out", str(resumed), "--resume")
    assert res.returncode == 0 and "resumed at update 1" in res.stderr, res.stderr[-4000:]
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
