"""Multi-process training through torchrun (gloo on CPU): 2 processes give the same training as 1 process.

`--batch-size` is the global batch, so the same flags with 1 or 2 processes must give the same losses and the same
weights (up to float32 summation order, well within 1e-5). Each 2-process run is a real `torchrun --standalone
--nproc-per-node 2 -m rlhf ...` subprocess; the 1-process baselines run in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf import cli
from rlhf.distributed import (
    all_reduce_sum,
    exit_after_success,
    init,
    reduce_metrics,
    shard,
    share,
    world,
)
from rlhf.metrics import read_metrics
from rlhf.rl import masked_whiten

TORCHRUN = Path(sys.executable).parent / "torchrun"
TOL = 1e-5

# 49 examples in global batches of 16: batches of 16, 16, 16 and 1 - the single-example batch leaves one of the
# two ranks without a row (its stand-in must count for nothing); grad_accum 2 covers DDP's no_sync path.
SFT = [
    "--arch.n-layer", "1", "--arch.n-embd", "32", "--arch.n-head", "2", "--task.n-train", "49",
    "--task.n-eval", "8", "--gold-samples", "4", "--max-new-tokens", "4", "--max-length", "64",
    "--batch-size", "16", "--optim.grad-accum", "2", "--optim.warmup-steps", "1", "--max-steps", "3",
    "--log-every", "1", "--eval-every", "100", "--save-every", "2", "--no-progress", "--threads", "1",
    "--device", "cpu",
]  # fmt: skip
REWARD = [
    "--task.n-train", "21", "--task.n-eval", "8", "--batch-size", "10", "--max-length", "64", "--max-steps", "3",
    "--optim.warmup-steps", "1", "--log-every", "1", "--eval-every", "100",
    "--no-progress", "--threads", "1", "--device", "cpu",
]  # fmt: skip


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m rlhf ARGS`; fails the test with its output on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", "-m", "rlhf", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr[-4000:]}"
    return res


def assert_same_run(one: Path, two: Path, keys: tuple[str, ...]) -> None:
    """Same logged values at every step and the same final weights, within TOL."""
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2, 3]  # rank 0 alone wrote the file
    for r1, r2 in zip(m1, m2):
        for k in keys:
            assert abs(r1[k] - r2[k]) <= TOL, (k, r1["step"], r1[k], r2[k])
    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        diff = float((w1[k] - w2[k]).abs().max())
        assert diff <= TOL, (k, diff)
    # Training moved the weights (a run that changed nothing would match trivially).
    assert m1[0]["grad_norm"] > 0


def whiten_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    mask = torch.rand(6, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    return x, mask


def _collectives_worker(rank: int, port: int, out: str) -> None:
    """One of two processes joined like torchrun does (env), running each helper on its share."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    init("cpu")
    x, mask = whiten_inputs()
    rows, _ = shard(range(6))
    result = {
        "world": world(),
        "rows": list(rows),
        "whitened": masked_whiten(x[rows], mask[rows], all_reduce=all_reduce_sum).tolist(),
        "shard_of_one": shard(["only"]),
        "metrics": reduce_metrics({"loss": float(rank), "count": rank + 1, "name": "x"}, sums=("count",)),
        "shared": share({"from": rank}),
    }
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    exit_after_success()  # as `python -m rlhf` does: no gloo teardown abort at interpreter exit


def test_collectives_with_two_processes(tmp_path):
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_collectives_worker, args=(port, str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert (r0["rows"], r1["rows"]) == ([0, 2, 4], [1, 3, 5])  # strided slices of the global batch
    assert r0["shard_of_one"] == [["only"], True] and r1["shard_of_one"] == [["only"], False]  # a stand-in
    # Whitening with global statistics: each rank's rows exactly as whitening the whole batch in one process.
    x, mask = whiten_inputs()
    full = masked_whiten(x, mask)
    torch.testing.assert_close(torch.tensor(r0["whitened"]), full[0::2])
    torch.testing.assert_close(torch.tensor(r1["whitened"]), full[1::2])
    assert r0["metrics"] == r1["metrics"] == {"loss": 0.5, "count": 3, "name": "x"}  # mean; count summed
    assert r0["shared"] == r1["shared"] == {"from": 0}


def test_one_process_helpers_are_identity():
    assert world() == 1
    assert shard([3, 1, 2]) == ([3, 1, 2], True)
    assert reduce_metrics({"loss": 1.5}) == {"loss": 1.5} and share({"a": 1}) == {"a": 1}


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same SFT flags with 1 process (in this process) and with 2 processes (torchrun)."""
    root = tmp_path_factory.mktemp("dist-sft")
    one, two = root / "one", root / "two"
    cli.run(["sft", *SFT, "--out", str(one)])
    torchrun("sft", *SFT, "--out", str(two))
    return one, two


def test_sft_two_processes_match_one_process(sft_runs):
    one, two = sft_runs
    assert_same_run(one, two, ("loss",))
    assert (two / "resume" / "step-0000002").is_dir()  # rank 0 wrote the resume checkpoint at step 2


def test_sft_resume_under_torchrun(sft_runs, tmp_path):
    # Both ranks load the step-2 resume checkpoint and redo step 3: the same weights as the straight run.
    two = tmp_path / "two"
    shutil.copytree(sft_runs[1], two)
    first = load_file(two / "model.safetensors")
    (two / "model.safetensors").unlink()
    res = torchrun("sft", *SFT, "--out", str(two), "--resume")
    assert res.stderr.count("resumed at step 2") == 1  # status lines come from rank 0 only
    again = load_file(two / "model.safetensors")
    for k in first:
        assert float((first[k] - again[k]).abs().max()) <= TOL, k
    assert [r["step"] for r in read_metrics(two / "metrics.jsonl")] == [1, 2, 3]


def test_reward_two_processes_match_one_process(tmp_path, tiny_sft):
    # 21 pairs in global batches of 10: 10, 10 and 1 (a rank without a pair in the last one).
    # --center-rewards: parameters whose exact gradient is 0 get rounding noise, which Adam scales up to lr-sized
    # steps that differ with the summation order. Bradley-Terry alone has two such: the head's bias (frozen unless
    # --center-rewards) and the key part of each attention bias (q.k_b is the same for every key: softmax drops
    # it). Measured: with plain BT one attention bias differed by 1.02e-5 between the two runs after 3 steps, with
    # --center-rewards 0.01 every weight agrees within 1e-5.
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*REWARD, "--center-rewards", "0.01"]
    cli.run(["reward", "--init", str(tiny_sft), *args, "--out", str(one)])
    torchrun("reward", "--init", str(tiny_sft), *args, "--out", str(two))
    assert_same_run(one, two, ("loss", "accuracy", "margin"))


def test_ppo_two_processes_finish_and_rank0_writes_once(tmp_path, tiny_sft, tiny_reward):
    out = tmp_path / "ppo"
    res = torchrun(
        "ppo", "--sft", str(tiny_sft), "--reward", str(tiny_reward), "--out", str(out),
        "--episodes", "16", "--rollout-batch", "8", "--mini-batches", "2", "--ppo-epochs", "1",
        "--response-length", "8", "--save-every", "1", "--no-progress", "--threads", "1", "--device", "cpu",
    )  # fmt: skip
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["episode"] for r in rows] == [8, 16]  # global episodes, not per rank
    assert all(0 <= r["val/num_eos_tokens"] <= 8 for r in rows)
    assert (out / "model.safetensors").exists() and (out / "summary.json").exists()
    assert sorted(p.name for p in (out / "resume").glob("step-*")) == ["step-0000001"]
    assert res.stdout.count("outputs:") == 1  # one process reports
    shutil.rmtree(out)


@pytest.mark.slow
def test_ppo_rollout_batch_must_split_over_processes(tmp_path, tiny_sft, tiny_reward):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [
        str(TORCHRUN), "--standalone", "--nproc-per-node=2", "-m", "rlhf", "ppo", "--sft", str(tiny_sft),
        "--reward", str(tiny_reward), "--out", str(tmp_path / "ppo"), "--rollout-batch", "6", "--mini-batches",
        "2", "--no-progress", "--threads", "1",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0
    assert (
        "error: --rollout-batch 6 x --samples-per-prompt 1 completions must split into --mini-batches 2, after "
        "dividing the prompts by 2 processes" in res.stderr
    )


@pytest.mark.parametrize("flag", ["cpu", "auto"])
def test_device_flag(tmp_path, tiny_sft, flag):
    summary = cli.run(
        ["sample", "--checkpoint", str(tiny_sft), "--max-new-tokens", "4", "--device", flag,
         "--out", str(tmp_path / "s")]
    )  # fmt: skip
    assert len(summary["samples"]) == 4


def test_device_cuda_without_gpu_is_a_user_error(tmp_path, tiny_sft):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from rlhf.errors import UserError

    with pytest.raises(UserError, match="--device cuda"):
        cli.run(["sample", "--checkpoint", str(tiny_sft), "--device", "cuda", "--out", str(tmp_path / "s")])


@pytest.mark.slow
def test_reward_on_hugging_face_trunk_two_processes_match_one_process(tmp_path):
    # BERT computes a pooler no loss reads: DDP must find its unused parameters (wrap_ddp asks for that on
    # Hugging Face modules), and the run must still match one process.
    pytest.importorskip("transformers")
    from tiny_hf import bert_dir

    model = bert_dir(tmp_path / "bert")
    args = [
        "--model",
        str(model),
        *REWARD,
        "--max-length",
        "48",
        "--center-rewards",
        "0.01",
    ]  # see the test above
    one, two = tmp_path / "one", tmp_path / "two"
    cli.run(["reward", *args, "--out", str(one)])
    torchrun("reward", *args, "--out", str(two))
    assert_same_run(one, two, ("loss", "accuracy", "margin"))


def test_dpo_two_processes_match_one_process(tmp_path, tiny_sft):
    # 21 pairs in global batches of 10: 10, 10 and 1 (a rank without a pair in the last one); grad_accum 2.
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--task.n-train", "21", "--task.n-eval", "8", "--batch-size", "5", "--optim.grad-accum", "2",
            "--max-steps", "3", "--optim.warmup-steps", "1", "--log-every", "1", "--eval-every", "100",
            "--gold-samples", "0", "--no-progress", "--threads", "1", "--device", "cpu"]  # fmt: skip
    cli.run(["dpo", "--sft", str(tiny_sft), *args, "--out", str(one)])
    torchrun("dpo", "--sft", str(tiny_sft), *args, "--out", str(two))
    assert_same_run(one, two, ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen"))
