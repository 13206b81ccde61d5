"""The one on-policy loop behind `rlhf ppo`, `rlhf grpo` and `rlhf rloo`: invariances peers ship broken, the
algorithms end to end on tiny models, Python reward functions through the CLI, and the guards.

- One update's parameter change does not depend on how a minibatch is split into micro-batches (for every
  --loss-agg), nor on 2 processes vs 1 (SkyRL#925, veRL PR #5877).
- Log-probs recomputed by the training forward equal the sampler's at temperature 0.7 and 1.3 (trl#4159).
- GRPO and RLOO resume bit-identically after SIGKILL (trl#2657, verl#7401).
- --kl-coef 0 loads no reference model; a broken reward function gets one line; a non-finite loss stops the run
  with one line, the last resume checkpoint intact.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf import cli
from rlhf.config import OptimConfig, PPOConfig
from rlhf.metrics import read_metrics
from rlhf.models.gpt import GPT, GPTConfig
from rlhf.models.heads import ScalarModel
from rlhf.models.policy_value import PolicyValue
from rlhf.rollout import Experience
from rlhf.stages.ppo_update import ppo_update

ARCH = GPTConfig(n_layer=2, n_embd=32, n_head=2, block_size=32)


# ------------------------------------------------------------------------------------------------ invariance
def _experience(
    B: int = 8, T: int = 14, N: int = 6, seed: int = 0
) -> tuple[Experience, torch.Tensor, torch.Tensor]:
    """A rollout batch of hand-made tensors with response lengths 1..N (so micro-batches hold different token
    counts: a per-micro-batch token mean would weigh them wrongly), plus advantages and returns."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (B, T), generator=g)
    lengths = torch.tensor([1 + (b * 5) % N for b in range(B)])  # 1, 6, 5, 4, 3, 2, 1, 6
    r_mask = torch.arange(N).unsqueeze(0) < lengths.unsqueeze(1)
    resp_pos = torch.arange(T - N, T).expand(B, N)
    mask = torch.ones(B, T, dtype=torch.bool)
    old = torch.randn(B, N, generator=g) * 0.1 - 5.0  # near a 259-token uniform policy's log(1/259) = -5.56
    exp = Experience(
        ids=ids, mask=mask, resp_pos=resp_pos, response_mask=r_mask, logprobs=old, sampler_logprobs=old,
        ref_logprobs=old + 0.05 * torch.randn(B, N, generator=g), values=torch.randn(B, N, generator=g),
        entropy=torch.zeros(B, N), scores=torch.zeros(B), score_parts=[], finished=torch.ones(B, dtype=torch.bool),
        group=torch.arange(B) // 2, prompts=[""] * B, texts=[""] * B, gold=[],
    )  # fmt: skip
    return exp, torch.randn(B, N, generator=g), torch.randn(B, N, generator=g)


def _model(layout: str) -> PolicyValue:
    torch.manual_seed(0)
    value = ScalarModel(GPT(ARCH)) if layout == "separate" else None
    return PolicyValue(GPT(ARCH), value, layout).train()


def _one_update(model, exp, adv, ret, **options) -> dict[str, torch.Tensor]:
    """Parameters after one update (SGD: Adam would turn float noise in near-zero gradients into full steps)."""
    cfg = PPOConfig(**{"ppo_epochs": 1, "mini_batches": 1, "temperature": 0.7, **options})
    ppo_update(model, torch.optim.SGD(model.parameters(), lr=1.0), exp, adv, ret, cfg, 0, 0.1)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize(
    "layout,kl_in", [("none", "loss"), ("separate", "reward")], ids=["grpo-like", "ppo-like"]
)
def test_update_is_the_same_whatever_the_micro_batch_split(loss_agg, layout, kl_in):
    exp, adv, ret = _experience()
    returns = ret if layout != "none" else None
    start = {n: p.detach().clone() for n, p in _model(layout).named_parameters()}
    moved = None
    for accum in (1, 2, 4):
        after = _one_update(
            _model(layout), exp, adv, returns, loss_agg=loss_agg, kl_in=kl_in, kl_estimator="k3",
            optim=OptimConfig(grad_accum=accum, grad_clip=0.0), entropy_coef=0.01,
        )  # fmt: skip
        delta = {n: after[n] - start[n] for n in start}
        if moved is None:
            moved = delta
            assert (
                max(float(d.abs().max()) for d in delta.values()) > 1e-4
            )  # the update does move the weights
            continue
        for n in start:
            torch.testing.assert_close(delta[n], moved[n], atol=1e-6, rtol=0, msg=f"grad_accum {accum}: {n}")


def _ddp_worker(rank: int, port: int, out: str, loss_agg: str) -> None:
    """One of two processes: the same model, DDP, trained on its half (strided rows) of the same batch."""
    from rlhf.distributed import exit_after_success, init, wrap_ddp

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    init("cpu")
    exp, adv, _ = _experience()
    rows = torch.arange(rank, 8, 2)
    part = copy.copy(exp)
    for name in (
        "ids",
        "mask",
        "resp_pos",
        "response_mask",
        "logprobs",
        "ref_logprobs",
        "values",
        "finished",
    ):
        setattr(part, name, getattr(exp, name)[rows])
    model = _model("none")
    cfg = PPOConfig(ppo_epochs=1, mini_batches=1, loss_agg=loss_agg, kl_in="loss", kl_estimator="k3",
                    optim=OptimConfig(grad_clip=0.0))  # fmt: skip
    ppo_update(
        wrap_ddp(model), torch.optim.SGD(model.parameters(), lr=1.0), part, adv[rows], None, cfg, 0, 0.1
    )
    if rank == 0:
        torch.save({n: p.detach() for n, p in model.named_parameters()}, Path(out, "ddp.pt"))
    exit_after_success()


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_update_with_two_processes_equals_one_process(tmp_path, loss_agg):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(port, str(tmp_path), loss_agg), nprocs=2)
    two = torch.load(tmp_path / "ddp.pt")
    exp, adv, _ = _experience()
    one = _one_update(_model("none"), exp, adv, None, loss_agg=loss_agg, kl_in="loss", kl_estimator="k3",
                      optim=OptimConfig(grad_clip=0.0))  # fmt: skip
    for n in one:
        torch.testing.assert_close(two[n], one[n], atol=1e-6, rtol=0, msg=n)


# ------------------------------------------------------------------------------------------------ log-probs
@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_training_logprobs_equal_the_samplers(temperature):
    """The rollout's training forward (right-aligned rows, positions-only) gives the log-probs the sampler
    drew the tokens with (left-padded prompts, KV cache), at the same temperature."""
    from rlhf.data.tokenizer import ByteTokenizer
    from rlhf.rollout import Scorer, rollout
    from rlhf.stages.common import autocast

    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = PolicyValue(GPT(GPTConfig(n_layer=2, n_embd=32, n_head=2, block_size=64)), None, "none")
    prompts = ["Q: hi\nA:", "Q: what is the capital of France?\nA:", "x"]
    scorer = Scorer([("zero", lambda c: torch.zeros(len(c.texts)))], [1.0])
    cfg = PPOConfig(samples_per_prompt=2, response_length=12, temperature=temperature, value_model="none",
                    advantage="grpo")  # fmt: skip
    exp = rollout(model, None, scorer, tok, prompts, [tok.encode(p) for p in prompts], {}, cfg,
                  torch.Generator().manual_seed(1), lambda: autocast("fp32"))  # fmt: skip
    m = exp.response_mask
    assert exp.ids.size(0) == 6 and exp.group.tolist() == [0, 0, 1, 1, 2, 2] and exp.prompts[1] == prompts[0]
    assert int(m.sum()) > 20  # enough sampled tokens to compare
    torch.testing.assert_close(exp.logprobs[m], exp.sampler_logprobs[m], atol=2e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ end to end
RL = [
    "--episodes", "16", "--rollout-batch", "4", "--samples-per-prompt", "4", "--response-length", "8",
    "--task.n-train", "32", "--optim.lr", "1e-3", "--no-progress", "--threads", "1",
]  # fmt: skip
TRL_NAMES = ["kl", "reward_std", "frac_reward_zero_std", "completions/clipped_ratio", "completions/mean_length",
             "clip_ratio/region_mean", "gold/score"]  # fmt: skip
TIMING = ("eps", "time/generation", "time/scoring", "time/update")


def _models(tiny_sft, tiny_reward) -> list[str]:
    return ["--sft", str(tiny_sft), "--reward", str(tiny_reward)]


def _deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("command", ["grpo", "rloo"])
def test_critic_free_command_sigkill_then_resume_matches_straight_run(
    command, tiny_sft, tiny_reward, tmp_path
):
    straight = tmp_path / "straight"
    summary = cli.run([command, *_models(tiny_sft, tiny_reward), *RL, "--out", str(straight)])
    assert summary["updates"] == 4 and summary["completions"] == 64
    rows = read_metrics(straight / "metrics.jsonl")
    for name in TRL_NAMES:
        assert all(math.isfinite(r[name]) for r in rows), name
    assert "loss/value_avg" not in rows[0]  # no value model
    cfg = json.loads((straight / "config.json").read_text())
    assert cfg["stage"] == command and cfg["run_config"]["advantage"] == command

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rlhf", command, *_models(tiny_sft, tiny_reward), *RL, "--save-every", "1",
           "--out", str(killed)]  # fmt: skip
    latest = killed / "resume" / "latest"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert latest.exists() and not (killed / "model.safetensors").exists()
    cli.run(
        [command, *_models(tiny_sft, tiny_reward), *RL, "--save-every", "1", "--out", str(killed), "--resume"]
    )
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _deterministic(read_metrics(killed / "metrics.jsonl")) == _deterministic(rows)


def test_reinforce_pp_without_value_model_and_without_reference(tiny_sft, tiny_reward, tmp_path, monkeypatch):
    import rlhf.stages.ppo as ppo_stage

    loaded = []
    real = ppo_stage.load_policy
    monkeypatch.setattr(ppo_stage, "load_policy", lambda d: loaded.append(d) or real(d))
    out = tmp_path / "rpp"
    cli.run(["ppo", *_models(tiny_sft, tiny_reward), *RL, "--samples-per-prompt", "1", "--advantage",
             "reinforce++", "--value-model", "none", "--kl-coef", "0", "--out", str(out)])  # fmt: skip
    assert loaded == [tiny_sft]  # the policy alone: --kl-coef 0 builds no reference model
    rows = read_metrics(out / "metrics.jsonl")
    assert all(r["objective/kl"] is None and r["kl"] is None for r in rows)  # not measured, not 0
    assert all(math.isfinite(r["loss/policy_avg"]) for r in rows) and "frac_reward_zero_std" not in rows[0]


def test_gae_without_value_model_is_a_clear_error(tiny_sft, tiny_reward, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ppo", *_models(tiny_sft, tiny_reward), "--value-model", "none", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--advantage gae needs a value model" in err


REWARD_FILE = """
import math
calls = [0]

def answer_match(prompts, completions, answer, **_):
    return [1.0 if c.strip() == a.strip() else 0.0 for c, a in zip(completions, answer)]

def raises(prompts, completions, **_):
    raise RuntimeError("verifier crashed")

def short(prompts, completions, **_):
    return [0.0]

def huge_from_the_third_call(prompts, completions, **_):
    calls[0] += 1
    return [1e30 if calls[0] >= 3 else 0.0 for _ in completions]
"""


@pytest.fixture()
def reward_file(tmp_path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_FILE)
    return path


def test_grpo_with_a_python_reward_function(tiny_sft, tmp_path, reward_file, capsys):
    """A verifier reading the prompt's `answer` column (the built-in task supplies it); no reward model needed."""
    out = tmp_path / "fn"
    cli.run(["grpo", "--sft", str(tiny_sft), "--reward", str(tmp_path / "absent"), *RL, "--missing-eos-penalty",
             "0", "--reward-fn", f"{reward_file}:answer_match", "--out", str(out)])  # fmt: skip
    rows = read_metrics(out / "metrics.jsonl")
    assert all(0.0 <= r["objective/scores"] <= 1.0 for r in rows)
    # A tiny model never matches: every group has one score (advantage 0), and the warning says so once.
    assert all(r["frac_reward_zero_std"] == 1.0 and r["reward_std"] == 0.0 for r in rows)
    assert all(r["loss/policy_avg"] == 0.0 for r in rows)
    err = capsys.readouterr().err
    assert err.count("more than half the groups") == 1 and "--samples-per-prompt" in err


@pytest.mark.parametrize(
    "name,expected", [("raises", "raised RuntimeError: verifier crashed"), ("short", "returned 1 scores for")]
)
def test_a_broken_reward_function_gets_one_line(tiny_sft, tmp_path, reward_file, capsys, name, expected):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["grpo", "--sft", str(tiny_sft), *RL, "--reward-fn", f"{reward_file}:{name}",
                  "--out", str(tmp_path / name)])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{reward_file}:{name}" in errors[0] and expected in errors[0], errors
    assert "Traceback" not in err


def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(
    tiny_sft, tiny_reward, tmp_path, reward_file, capsys
):
    """Scores of 1e30 from update 3 on: the value loss overflows to inf. The run stops before that update's step,
    naming it; the resume checkpoint of update 2 loads."""
    from rlhf.stages.common import restore_training_state

    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ppo", *_models(tiny_sft, tiny_reward), *RL, "--samples-per-prompt", "1", "--save-every", "1",
                  "--reward-fn", f"{reward_file}:huge_from_the_third_call", "--out", str(out)])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = "error: ppo: non-finite value loss (inf) at step 3 (last good checkpoint: "
    assert err[-1].startswith(expected), err[-1]
    assert not (out / "model.safetensors").exists()
    assert (out / "resume" / "latest").read_text().strip() == "step-0000002"
    cfg = PPOConfig(sft=tiny_sft, reward=tiny_reward)
    from rlhf.models.build import load_policy
    from rlhf.stages.ppo import build_models

    policy, tok, _ = load_policy(tiny_sft)
    model, _, _ = build_models(cfg, policy, tok, torch.device("cpu"))
    step, _ = restore_training_state(out, {"policy_value": model}, {})
    assert step == 2 and all(torch.isfinite(p).all() for p in model.parameters())


def test_packed_groups_give_the_outputs_of_separate_rows(monkeypatch):
    """With G completions per prompt the rollout reads each prompt once (PackedGroups): policy and reference
    log-probs, values and reward-model scores must equal those of the G separate rows."""
    import rlhf.rollout as rollout_module
    from rlhf.data.tokenizer import ByteTokenizer
    from rlhf.rollout import Completions, Scorer, rollout
    from rlhf.stages.common import autocast

    torch.manual_seed(0)
    arch = GPTConfig(n_layer=2, n_embd=32, n_head=2, block_size=64)
    tok = ByteTokenizer()
    model = PolicyValue(GPT(arch), ScalarModel(GPT(arch)), "separate").eval()
    ref, rm = GPT(arch).eval(), ScalarModel(GPT(arch)).eval()

    def rm_score(c: Completions) -> torch.Tensor:
        if c.packed is not None:
            return rm(c.packed.ids, None, c.packed.last, c.packed.segments).reshape(-1)
        return rm.score(c.ids, c.mask)

    prompts = ["Q: hi\nA:", "Q: what is the capital of France?\nA:", "x"]
    cfg = PPOConfig(samples_per_prompt=3, response_length=10, temperature=1.0)
    runs = []
    for packed in (True, False):
        monkeypatch.setattr(rollout_module, "reads_packed_groups", lambda m, packed=packed: packed)
        runs.append(rollout(model, ref, Scorer([("rm", rm_score)], [1.0]), tok, prompts,
                            [tok.encode(p) for p in prompts], {}, cfg, torch.Generator().manual_seed(3),
                            lambda: autocast("fp32")))  # fmt: skip
    a, b = runs
    m = a.response_mask
    assert torch.equal(a.ids, b.ids) and int(m.sum()) > 30 and len(set(m.sum(1).tolist())) > 1  # ragged
    for name in ("logprobs", "ref_logprobs", "values", "entropy"):
        torch.testing.assert_close(getattr(a, name)[m], getattr(b, name)[m], atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)
