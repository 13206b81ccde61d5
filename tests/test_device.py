"""The tests that take a device: `RLHF_TEST_DEVICE=cuda pytest tests/test_device.py` on a GPU machine
(`benchmarks/gpu_check.sh` does that), the CPU otherwise. Each stage trains on the device and writes a checkpoint
that loads on the CPU; the model's math on the device matches the CPU's."""

from __future__ import annotations

import os

import torch

from rlhf import cli
from rlhf.generation import sample
from rlhf.models.build import load_policy
from rlhf.models.gpt import GPT, GPTConfig
from tiny_runs import TINY_REWARD, TINY_SFT

DEVICE = os.environ.get("RLHF_TEST_DEVICE", "cpu")
if DEVICE == "cuda" and not torch.cuda.is_available():  # asked for a GPU that is not there: say so, loudly
    raise RuntimeError("RLHF_TEST_DEVICE=cuda but PyTorch sees no CUDA GPU")
TOL = (
    0.0 if DEVICE == "cpu" else 2e-4
)  # GPU kernels sum in another order (TF32 is off by default for matmuls)


def test_gpt_forward_and_backward_match_the_cpu() -> None:
    torch.manual_seed(0)
    cpu = GPT(GPTConfig(n_layer=2, n_embd=64, n_head=2, block_size=64))
    dev = GPT(GPTConfig(n_layer=2, n_embd=64, n_head=2, block_size=64)).to(DEVICE)
    dev.load_state_dict(cpu.state_dict())
    ids = torch.randint(0, 256, (3, 40))
    mask = torch.ones_like(ids)
    a, b = cpu(ids, mask), dev(ids.to(DEVICE), mask.to(DEVICE))
    torch.testing.assert_close(b.cpu(), a, atol=TOL, rtol=TOL)
    a.logsumexp(-1).sum().backward()
    b.logsumexp(-1).sum().backward()
    for (name, p), q in zip(cpu.named_parameters(), dev.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, atol=10 * TOL, rtol=10 * TOL, msg=name)


def test_cached_sampling_equals_uncached_on_the_device() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_embd=64, n_head=2, block_size=64)).to(DEVICE).eval()
    ids = torch.randint(0, 256, (4, 10), device=DEVICE)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    runs = []
    for cache in (True, False):
        gen = torch.Generator(device=DEVICE).manual_seed(1)
        runs.append(sample(model, ids, mask, 12, 257, 256, 1.0, 0, 1.0, gen, use_cache=cache))
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-4, rtol=0)


def test_every_stage_trains_on_the_device_and_loads_on_the_cpu(tmp_path) -> None:
    dev = ["--device", DEVICE]
    sft, reward = tmp_path / "sft", tmp_path / "reward"
    s = cli.run(["sft", *TINY_SFT, *dev, "--max-steps", "10", "--out", str(sft)])
    r = cli.run(["reward", "--init", str(sft), *TINY_REWARD, *dev, "--max-steps", "5", "--out", str(reward)])
    rl = ["--episodes", "16", "--rollout-batch", "8", "--response-length", "8", "--task.n-train", "32",
          "--no-progress", "--threads", "1", *dev]  # fmt: skip
    p = cli.run(["ppo", "--sft", str(sft), "--reward", str(reward), *rl, "--out", str(tmp_path / "ppo")])
    g = cli.run(["grpo", "--sft", str(sft), "--reward", str(reward), *rl, "--out", str(tmp_path / "grpo")])
    d = cli.run(["dpo", "--sft", str(sft), "--task.n-train", "64", "--max-length", "64", "--max-steps", "4",
                 "--gold-samples", "0", "--no-progress", "--threads", "1", *dev, "--out", str(tmp_path / "dpo")])  # fmt: skip
    assert (
        s["steps"] == 10 and r["steps"] == 5 and p["updates"] == 2 and g["updates"] == 2 and d["steps"] == 4
    )
    for run in ("sft", "ppo", "grpo", "dpo"):
        model, _, _ = load_policy(tmp_path / run)  # written on the device, read on the CPU
        assert all(t.device.type == "cpu" and torch.isfinite(t).all() for t in model.state_dict().values())


def test_bf16_training_on_the_device(tmp_path) -> None:
    """bf16 autocast trains (3 steps: on this CPU it is 14x slower than fp32; on a GPU it is the fast path)."""
    s = cli.run(["sft", *TINY_SFT, "--device", DEVICE, "--dtype", "bf16", "--max-steps", "3", "--out",
                 str(tmp_path / "sft")])  # fmt: skip
    assert s["steps"] == 3 and torch.isfinite(torch.tensor(s["eval_loss"]))
