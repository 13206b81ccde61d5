"""Checkpoints: exact round trips, atomic writes, SIGKILL safety, one-line errors, exact resume state."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import rlhf.checkpoint as ck
from rlhf.errors import UserError
from rlhf.models.build import gpt_backbone_spec, load_policy, save_checkpoint
from rlhf.models.gpt import GPT, GPTConfig

ARCH = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)


def policy(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(ARCH).eval()


def save_policy(directory: Path, model: GPT, **extra) -> None:
    config = {"kind": "policy", "backbone": gpt_backbone_spec(ARCH), "tokenizer": {"type": "byte"}, **extra}
    save_checkpoint(directory, model, config)


def logits(model, ids=None):
    ids = torch.tensor([[257, 72, 105, 33, 10, 258]]) if ids is None else ids
    with torch.no_grad():
        return model(ids)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".tmp" in p.name)


# ------------------------------------------------------------------------------------------------ model files
def test_save_load_policy_round_trip_gives_identical_logits(tmp_path):
    model = policy(0)
    save_policy(tmp_path, model, step=7)
    loaded, tok, config = load_policy(tmp_path)
    assert torch.equal(logits(loaded), logits(model))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert config["step"] == 7 and config["kind"] == "policy" and "rlhf_version" in config
    assert tok.eos_id == 258
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    assert leftovers(tmp_path) == []


def test_tied_weights_stored_once_and_retied_on_load(tmp_path):
    model = policy(0)
    save_policy(tmp_path, model)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "transformer.wte.weight" in keys
    assert "lm_head.weight" not in keys
    assert "transformer.h.0.attn.c_attn.weight" in keys
    # Everything else is there exactly once.
    assert keys == set(model.state_dict()) - {"lm_head.weight"}
    loaded, _, _ = load_policy(tmp_path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def _half_then_raise(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"\x00" * 1000)  # a partial file under the temporary name
    raise OSError(28, "No space left on device")


def test_failed_weight_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    old = policy(0)
    save_policy(tmp_path, old, step=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(ck, "save_file", _half_then_raise)
    with pytest.raises(UserError, match="cannot write"):
        save_policy(tmp_path, policy(1), step=2)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    loaded, _, config = load_policy(tmp_path)
    assert torch.equal(logits(loaded), logits(old)) and config["step"] == 1


def test_failed_json_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    ck.write_json(tmp_path / "summary.json", {"a": 1})
    real = Path.write_text

    def half(self, text, *a, **k):
        real(self, text[: len(text) // 2])
        raise OSError(5, "I/O error")

    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(UserError, match="cannot write"):
        ck.write_json(tmp_path / "summary.json", {"a": 2, "b": list(range(100))})
    monkeypatch.undo()
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1}
    assert leftovers(tmp_path) == []


def test_failed_resume_write_keeps_previous_resume_checkpoint(tmp_path, monkeypatch):
    ck.save_resume(tmp_path, 1, {"w": torch.ones(4)}, {"value": 1})
    monkeypatch.setattr(ck, "save_file", _half_then_raise)
    with pytest.raises(UserError, match="cannot write"):
        ck.save_resume(tmp_path, 2, {"w": torch.full((4,), 2.0)}, {"value": 2})
    monkeypatch.undo()
    tensors, meta = ck.load_resume(tmp_path)
    assert meta["step"] == 1 and meta["value"] == 1 and torch.equal(tensors["w"], torch.ones(4))
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))  # no stray temporary files


# ------------------------------------------------------------------------------------------------ SIGKILL
def _writer_loop(run_dir: Path, ready_fd: int) -> None:
    """Child: resume from the newest checkpoint, then write resume checkpoints as fast as it can until killed.

    numpy builds the tensors: no torch intra-op threads are needed after the fork.
    """
    state = ck.load_resume(run_dir)
    start = state[1]["step"] if state else 0
    for step in range(start + 1, start + 100_000):
        payload = torch.from_numpy(np.full(1 << 18, step, dtype=np.float32))  # 1 MiB: kills land mid-write
        tensors = {"payload": payload, "step_copy": torch.from_numpy(np.array([step], dtype=np.int64))}
        ck.save_resume(run_dir, step, tensors, {"value": step, "blob": "x" * (step % 97)})
        if step == start + 2:
            os.write(ready_fd, b"1")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_during_resume_writes_leaves_a_consistent_checkpoint(tmp_path):
    rng = random.Random(0)
    run_dir = tmp_path / "run"
    previous = 0
    for _ in range(5):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(r)
                _writer_loop(run_dir, w)
            finally:
                os._exit(0)
        os.close(w)
        try:
            assert os.read(r, 1) == b"1"  # the child has written two new checkpoints
            time.sleep(rng.uniform(0.0, 0.15))
        finally:
            os.close(r)
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        state = ck.load_resume(run_dir)
        assert state is not None
        tensors, meta = state
        step = meta["step"]
        assert step >= previous + 2 and meta["value"] == step and meta["blob"] == "x" * (step % 97)
        assert int(tensors["step_copy"]) == step
        assert torch.equal(tensors["payload"], torch.full((1 << 18,), float(step)))
        assert (run_dir / "resume" / "latest").read_text().strip() == f"step-{step:07d}"
        # The newest complete directory is `latest`'s, or the next step's if the kill came just before the
        # switch. Pruning keeps two (three if the kill came between the switch and the pruning).
        complete = sorted(p.name for p in (run_dir / "resume").glob("step-*") if not p.name.endswith(".tmp"))
        assert complete[-1] in (f"step-{step:07d}", f"step-{step + 1:07d}") and len(complete) <= 3
        previous = step


def test_load_resume_without_checkpoint_is_none(tmp_path):
    assert ck.load_resume(tmp_path) is None
    assert ck.load_resume(tmp_path / "missing") is None


def test_save_resume_keeps_the_newest_two(tmp_path):
    for step in (10, 20, 30):
        ck.save_resume(tmp_path, step, {"w": torch.full((2,), float(step))}, {})
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == [
        "latest",
        "step-0000020",
        "step-0000030",
    ]
    tensors, meta = ck.load_resume(tmp_path)
    assert meta["step"] == 30 and torch.equal(tensors["w"], torch.full((2,), 30.0))


# ------------------------------------------------------------------------------------------------ errors
def _one_line_user_error(fn, *names: str) -> str:
    with pytest.raises(UserError) as info:
        fn()
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    for name in names:
        assert name in msg, (name, msg)
    return msg


@pytest.mark.parametrize(
    "corrupt",
    [b"", b"not a safetensors file at all" * 5, "half", "header"],
    ids=["empty", "garbage", "truncated", "bad-header"],
)
def test_corrupt_weights_give_one_line_user_error(tmp_path, corrupt):
    save_policy(tmp_path, policy(0))
    weights = tmp_path / "model.safetensors"
    raw = weights.read_bytes()
    if corrupt == "half":
        corrupt = raw[: len(raw) // 2]
    elif corrupt == "header":
        corrupt = raw[:8] + b"\xff" * 16 + raw[24:]
    weights.write_bytes(corrupt)
    _one_line_user_error(lambda: load_policy(tmp_path), str(weights))


@pytest.mark.parametrize(
    "text,line",
    [('{"kind": "policy",\n "backbone": {', 2), (b"\xff\xfe{}", None), ("", 1)],
    ids=["truncated", "not-utf8", "empty"],
)
def test_corrupt_config_gives_one_line_user_error(tmp_path, text, line):
    save_policy(tmp_path, policy(0))
    config = tmp_path / "config.json"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    msg = _one_line_user_error(lambda: load_policy(tmp_path), str(config))
    if line is not None:
        assert f"config.json:{line}:" in msg


def test_config_that_is_not_an_object_gives_user_error(tmp_path):
    save_policy(tmp_path, policy(0))
    (tmp_path / "config.json").write_text("[1, 2]\n")
    _one_line_user_error(lambda: load_policy(tmp_path), str(tmp_path / "config.json"))


def test_missing_files_and_directories_give_user_errors(tmp_path):
    _one_line_user_error(lambda: load_policy(tmp_path / "nope"), str(tmp_path / "nope"))
    save_policy(tmp_path / "a", policy(0))
    (tmp_path / "a" / "model.safetensors").unlink()
    _one_line_user_error(lambda: load_policy(tmp_path / "a"), "model.safetensors")
    save_policy(tmp_path / "b", policy(0))
    (tmp_path / "b" / "config.json").unlink()
    _one_line_user_error(lambda: load_policy(tmp_path / "b"), "config.json")


def test_resume_checkpoint_with_missing_directory_gives_user_error(tmp_path):
    ck.save_resume(tmp_path, 5, {"w": torch.ones(1)}, {})
    (tmp_path / "resume" / "latest").write_text("step-0000099\n")
    _one_line_user_error(lambda: ck.load_resume(tmp_path), "step-0000099")


# ------------------------------------------------------------------------------------------------ resume state
def test_rng_state_round_trip_restores_every_generator(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    # Leave cached Gaussians behind in numpy's and python's generators: they are part of the state.
    np.random.standard_normal()
    random.gauss(0, 1)
    tensors, meta = ck.rng_state()
    ck.save_resume(tmp_path, 1, tensors, {"rng": meta})

    def draw():
        return (
            torch.rand(5).tolist(),
            torch.randn(3).tolist(),
            np.random.standard_normal(3).tolist(),
            np.random.randint(0, 1 << 30, 3).tolist(),
            random.gauss(0, 1),
            random.random(),
        )

    expected = draw()
    draw()  # move every generator on
    loaded, loaded_meta = ck.load_resume(tmp_path)
    ck.set_rng_state(loaded, loaded_meta["rng"])
    assert draw() == expected


def _train_steps(model, opt, n, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = torch.randint(0, 256, (4, 12), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, 259), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _adamw(model):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=3e-3, betas=(0.9, 0.95), foreach=False)


def test_optimizer_state_round_trip_is_exact(tmp_path):
    model = policy(0).train()
    opt = _adamw(model)
    _train_steps(model, opt, 3, seed=0)
    opt_tensors, opt_meta = ck.optimizer_state(opt, "optim.policy")
    tensors = {**ck.prefixed(model.state_dict(), "model.policy"), **opt_tensors}
    ck.save_resume(tmp_path, 3, tensors, {"optim": opt_meta})

    # A fresh model/optimizer restored from disk continues exactly like the original.
    loaded, meta = ck.load_resume(tmp_path)
    twin = policy(99).train()
    state = ck.split_prefixed(loaded, "model.policy")
    twin.load_state_dict(state, strict=False)
    assert twin.lm_head.weight is twin.transformer.wte.weight
    twin_opt = _adamw(twin)
    ck.load_optimizer_state(twin_opt, "optim.policy", loaded, meta["optim"])
    a, b = opt.state_dict(), twin_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for idx in a["state"]:
        for key, value in a["state"][idx].items():
            other = b["state"][idx][key]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (idx, key)

    _train_steps(model, opt, 2, seed=1)
    _train_steps(twin, twin_opt, 2, seed=1)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name


def test_metrics_writer_truncates_to_resume_step(tmp_path):
    from rlhf.metrics import MetricsWriter, read_metrics

    w = MetricsWriter(tmp_path / "m.jsonl")
    for step in (10, 20, 30):
        w.log(step, loss=1.0 / step, bad=float("nan"))
    w.close()
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"step": 40, "lo')  # torn last line from a crash
    assert [r["step"] for r in read_metrics(tmp_path / "m.jsonl")] == [10, 20, 30]
    assert read_metrics(tmp_path / "m.jsonl")[0]["bad"] is None
    w = MetricsWriter(tmp_path / "m.jsonl", resume_step=20)
    w.log(30, loss=0.5)
    w.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "m.jsonl")] == [
        (10, 0.1),
        (20, 0.05),
        (30, 0.5),
    ]
