"""Trust under faults: a diverging run stops before it writes NaN weights; SIGTERM / SIGINT stop after the step
with a resume checkpoint that continues bit-identically; one run per directory (--resume / --overwrite); files
durable, readable by the group, and a failed write is one line with the previous file intact."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf import checkpoint as ck
from rlhf import cli, run_dir, stop
from rlhf.errors import UserError
from rlhf.metrics import read_metrics
from tiny_runs import TINY_REWARD, TINY_SFT

RL = [
    "--episodes", "16", "--rollout-batch", "4", "--samples-per-prompt", "1", "--response-length", "8",
    "--task.n-train", "32", "--optim.lr", "1e-3", "--no-progress", "--threads", "1",
]  # fmt: skip


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        cli.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The error: one line, the last on stderr (status lines of the run may come before it), no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def all_finite(directory: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(directory / "state.safetensors")).values())


# ---------------------------------------------------------------------------------------------- non-finite
@pytest.fixture
def nan_gradients_after_first_checkpoint(monkeypatch):
    """Every module's input gradient becomes NaN once `out/resume/latest` exists (after step 1 with --save-every 1):
    a real backward with a poisoned gradient, not a patched check."""

    def install(out: Path):
        def hook(module, grad_input, grad_output):
            if isinstance(module, torch.nn.Linear) and (out / "resume" / "latest").exists():
                return tuple(None if g is None else g * float("nan") for g in grad_input)
            return None

        handle = torch.nn.modules.module.register_module_full_backward_hook(hook)
        return handle

    handles = []
    yield lambda out: handles.append(install(out))
    for h in handles:
        h.remove()


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "grpo"])
def test_a_nan_gradient_stops_the_stage_before_it_is_applied(
    stage, tiny_sft, tiny_reward, tmp_path, capsys, nan_gradients_after_first_checkpoint
):
    out = tmp_path / stage
    steps = ["--max-steps", "5"]
    argv = {
        "sft": ["sft", *TINY_SFT, *steps],
        "reward": ["reward", "--init", str(tiny_sft), *TINY_REWARD, *steps],
        "dpo": ["dpo", "--sft", str(tiny_sft), "--task.n-train", "64", "--max-length", "64", "--threads", "1",
                "--no-progress", *steps],
        "grpo": ["grpo", "--sft", str(tiny_sft), "--reward", str(tiny_reward), *RL, "--samples-per-prompt", "4"],
    }[stage]  # fmt: skip
    nan_gradients_after_first_checkpoint(out)
    code, _, err = run_main([*argv, "--save-every", "1", "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2
    assert line.startswith(f"error: {stage}: non-finite gradient norm at step 2 (last good checkpoint: ")
    assert str(out / "resume" / "step-0000001") in line and "--optim.lr" in line
    assert not (out / "model.safetensors").exists()  # no stage checkpoint, so no NaN weights
    assert (out / "resume" / "latest").read_text().strip() == "step-0000001"
    assert all_finite(out / "resume" / "step-0000001")


def test_a_nan_loss_stops_sft_with_no_checkpoint_yet(tmp_path, capsys, monkeypatch):
    """Logits poisoned from the first forward: the loss itself is NaN at step 1, and no resume checkpoint exists."""
    from rlhf.models.gpt import GPT

    forward = GPT.forward
    monkeypatch.setattr(GPT, "forward", lambda self, *a, **k: forward(self, *a, **k) * float("nan"))
    out = tmp_path / "sft"
    code, _, err = run_main(["sft", *TINY_SFT, "--max-steps", "3", "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith(
        "error: sft: non-finite loss at step 1 (last good checkpoint: none yet"
    )
    assert not (out / "model.safetensors").exists() and not (out / "resume").exists()


# -------------------------------------------------------------------------------------------------- signals
def _wait_for_rows(metrics: Path, proc: subprocess.Popen, n: int) -> None:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"the run ended or stalled before logging {n} rows")


@pytest.mark.parametrize(
    "command,sig",
    [("sft", signal.SIGTERM), ("sft", signal.SIGINT), ("reward", signal.SIGTERM), ("dpo", signal.SIGTERM),
     ("ppo", signal.SIGTERM)],
    ids=["sft-SIGTERM", "sft-SIGINT", "reward-SIGTERM", "dpo-SIGTERM", "ppo-SIGTERM"],
)  # fmt: skip
def test_a_signal_stops_after_the_step_and_resume_equals_a_straight_run(
    command, sig, tiny_sft, tiny_reward, tmp_path
):
    steps = ["--max-steps", "60", "--log-every", "1", "--eval-every", "1000"]
    argv = {
        "sft": ["sft", *TINY_SFT, *steps, "--max-steps", "120"],
        "reward": ["reward", "--init", str(tiny_sft), *TINY_REWARD, *steps],
        "dpo": ["dpo", "--sft", str(tiny_sft), "--task.n-train", "128", "--max-length", "64", "--threads", "1",
                "--no-progress", "--gold-samples", "0", *steps],
        "ppo": ["ppo", "--sft", str(tiny_sft), "--reward", str(tiny_reward), *RL, "--episodes", "64",
                "--log-every", "1"],
    }[command]  # fmt: skip
    straight = tmp_path / "straight"
    cli.run([*argv, "--out", str(straight)])

    stopped = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "rlhf", *argv, "--out", str(stopped)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_rows(stopped / "metrics.jsonl", proc, 2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], err
    assert "Traceback" not in err and f"{signal.Signals(sig).name} received" in err
    assert "resume checkpoint: " in err and "continue with: rlhf " in err and err.strip().endswith("--resume")
    assert not (stopped / "model.safetensors").exists()
    latest = stopped / "resume" / "latest"
    step = int(latest.read_text().strip().split("-")[1])
    assert 2 <= step < len(read_metrics(straight / "metrics.jsonl"))  # stopped mid-run, after the 2nd row
    assert not list((stopped / "resume").glob("*.tmp"))

    cli.run([*argv, "--out", str(stopped), "--resume"])
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(stopped / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = ("tokens_per_s", "eps", "time/generation", "time/scoring", "time/update")

    def same(rows):
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert same(read_metrics(stopped / "metrics.jsonl")) == same(read_metrics(straight / "metrics.jsonl"))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_under_torchrun_every_process_stops_after_the_same_step_and_resume_equals_a_straight_run(
    strategy, tmp_path
):
    """SIGTERM to torchrun (as a scheduler sends it): torchrun passes it to both workers, they agree on the step,
    and the resume checkpoint is written (DDP: by rank 0; FSDP: every process its shards); resuming under torchrun
    gives a straight 2-process run's weights."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    args = ["sft", "--arch.n-layer", "1", "--arch.n-embd", "32", "--arch.n-head", "2", "--task.n-train", "64",
            "--task.n-eval", "8", "--gold-samples", "4", "--max-new-tokens", "4", "--max-length", "64",
            "--max-steps", "60", "--log-every", "1", "--eval-every", "1000", "--no-progress", "--threads", "1",
            "--device", "cpu", "--strategy", strategy]  # fmt: skip

    def launch(out: Path, *extra: str) -> subprocess.Popen:
        cmd = [
            str(torchrun),
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "rlhf",
            *args,
            "--out",
            str(out),
            *extra,
        ]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    straight = launch(tmp_path / "straight")
    stopped = launch(tmp_path / "stopped")
    try:
        _wait_for_rows(tmp_path / "stopped" / "metrics.jsonl", stopped, 2)
        stopped.send_signal(signal.SIGTERM)
        _, err = stopped.communicate(timeout=120)
        straight.communicate(timeout=300)
    finally:
        stopped.kill()
        straight.kill()
    assert straight.returncode == 0
    assert err.count("SIGTERM received") == 1 and err.count("continue with: rlhf sft") == 1, err[-3000:]
    assert not (tmp_path / "stopped" / "model.safetensors").exists()
    assert (tmp_path / "stopped" / "resume" / "latest").exists()
    resumed = launch(tmp_path / "stopped", "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_signal_stops_at_once_and_outside_a_loop_the_first_does(monkeypatch):
    monkeypatch.setattr(stop, "_requested", None)
    with pytest.raises(stop.Stopped) as first:
        stop._handler(signal.SIGTERM, None)  # no training loop running: stop now
    assert first.value.exit_code == 143
    with stop.graceful():
        stop._handler(signal.SIGINT, None)  # inside a loop: only a request
        assert stop.requested() == signal.SIGINT
        with pytest.raises(stop.Stopped) as second:
            stop._handler(signal.SIGINT, None)
    assert second.value.exit_code == 130


def test_an_interrupted_resume_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    ck.save_resume(tmp_path, 1, {"w": torch.ones(3)}, {})
    real = ck.save_file

    def interrupted(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        raise stop.Stopped(signal.SIGTERM, "second SIGTERM")  # the handler raising mid-write

    monkeypatch.setattr(ck, "save_file", interrupted)
    with pytest.raises(stop.Stopped):
        ck.save_resume(tmp_path, 2, {"w": torch.full((3,), 2.0)}, {})
    assert (tmp_path / "resume" / "latest").read_text().strip() == "step-0000001"
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == ["latest", "step-0000001"]
    assert ck.load_resume(tmp_path)[0]["w"].tolist() == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------------------- one run per directory
def test_a_second_run_into_the_same_out_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "sft"
    first = cli.run(["sft", *TINY_SFT, "--max-steps", "3", "--out", str(out)])
    before = (out / "metrics.jsonl").read_text()
    code, _, err = run_main(["sft", *TINY_SFT, "--max-steps", "4", "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2 and "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert (out / "metrics.jsonl").read_text() == before  # untouched

    # --overwrite with a mistake: the new run fails before any checkpoint, and the old run is put back.
    code, _, err = run_main(
        ["sft", *TINY_SFT, "--data", str(tmp_path / "missing.jsonl"), "--overwrite", "--out", str(out)],
        capsys,
    )
    assert code == 2 and (out / "metrics.jsonl").read_text() == before
    assert not (out / run_dir.ASIDE).exists()

    second = cli.run(["sft", *TINY_SFT, "--max-steps", "4", "--overwrite", "--out", str(out)])
    assert second["steps"] == 4 and first["steps"] == 3
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")][-1] == 4  # one run's log, not two
    assert not (out / run_dir.ASIDE).exists()


def test_demo_style_directories_are_one_run_too(tmp_path, capsys):
    """A directory whose stage sub-directories hold runs (a demo, an experiment) counts as a run."""
    (tmp_path / "demo" / "sft").mkdir(parents=True)
    (tmp_path / "demo" / "sft" / "metrics.jsonl").write_text("")
    code, _, err = run_main(
        ["data", "validate", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "demo")], capsys
    )
    assert code == 2 and "sft/metrics.jsonl" in one_error_line(err)


# ----------------------------------------------------------------------------------------- durable files
def test_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        mode = 0o666 & ~0o022
        ck.save_model(tmp_path / "m", {"w": torch.ones(2)}, {"a": 1})
        ck.save_resume(tmp_path / "m", 1, {"w": torch.ones(2)}, {})
    finally:
        os.umask(old)
    for f in (
        "m/model.safetensors",
        "m/config.json",
        "m/resume/step-0000001/state.safetensors",
        "m/resume/latest",
    ):
        assert (tmp_path / f).stat().st_mode & 0o777 == mode == ck.FILE_MODE, f


def test_every_rename_is_followed_by_a_directory_fsync(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(ck, "fsync_dir", lambda d: synced.append(Path(d)))
    ck.save_resume(tmp_path, 1, {"w": torch.ones(2)}, {})
    root = tmp_path / "resume"
    # each file inside the new step directory, the step directory's rename, then `latest`
    assert synced == [root / "step-0000001.tmp", root / "step-0000001.tmp", root, root]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_a_failed_write_is_one_line_and_keeps_the_previous_checkpoint(
    err, tiny_sft, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "sft"
    cli.run(["sft", *TINY_SFT, "--max-steps", "2", "--out", str(out)])
    before = load_file(str(out / "model.safetensors"))

    def fail(tensors, path, metadata=None):
        raise OSError(err, os.strerror(err), path)

    monkeypatch.setattr(ck, "save_file", fail)
    code, _, text = run_main(["sft", *TINY_SFT, "--max-steps", "3", "--overwrite", "--out", str(out)], capsys)
    line = one_error_line(text)
    assert code == 2 and line.startswith(
        f"error: {out / 'model.safetensors'}: cannot write ({os.strerror(err)})"
    )
    after = load_file(str(out / "model.safetensors"))  # the previous run is back, intact
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list(out.glob(".*.tmp-*")) and not (out / run_dir.ASIDE).exists()
    with pytest.raises(UserError, match="cannot write"):
        ck.save_resume(tmp_path / "r", 1, {"w": torch.ones(1)}, {})
    assert not (tmp_path / "r" / "resume" / "latest").exists()
