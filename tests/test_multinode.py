"""Several nodes through torchrun's c10d rendezvous, with two launchers on one machine standing in for two nodes
(loopback only): the same training as two local processes, and a dead or frozen rank stops the other within
--dist-timeout instead of hanging."""

from __future__ import annotations

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

TORCHRUN = Path(sys.executable).parent / "torchrun"
SFT = [
    "sft", "--arch.n-layer", "1", "--arch.n-embd", "32", "--arch.n-head", "2", "--task.n-train", "49",
    "--task.n-eval", "8", "--gold-samples", "4", "--max-new-tokens", "4", "--max-length", "64", "--batch-size", "16",
    "--log-every", "1", "--eval-every", "1000", "--no-progress", "--threads", "1", "--device", "cpu",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    e["OMP_NUM_THREADS"] = "1"
    return e


def node(port: int, *args: str) -> subprocess.Popen:
    """One 'node': a launcher of one process joining a 2-node job at 127.0.0.1:port."""
    cmd = [str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test{port}", "-m", "rlhf", *args]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())


def finish(*procs: subprocess.Popen, timeout: float = 300) -> list[str]:
    try:
        return [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()


def test_two_launchers_train_like_two_local_processes(tmp_path: Path) -> None:
    local = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node=2", "-m", "rlhf", *SFT, "--max-steps", "3", "--out",
         str(tmp_path / "local")],
        capture_output=True, text=True, env=env(), timeout=300,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    port = free_port()
    out = tmp_path / "nodes"
    a, b = (
        node(port, *SFT, "--max-steps", "3", "--out", str(out)),
        node(port, *SFT, "--max-steps", "3", "--out", str(out)),
    )
    errs = finish(a, b)
    assert a.returncode == 0 and b.returncode == 0, errs[0][-2000:] + errs[1][-2000:]
    # Only the global rank 0 wrote (one 'outputs:' line over both nodes), and the weights are the local run's.
    assert sum(e.count("sft: 3 steps") for e in errs) == 1
    x, y = load_file(str(tmp_path / "local" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.allclose(x[k], y[k], atol=1e-6, rtol=0) for k in x)


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_dead_or_frozen_rank_stops_the_other_within_the_timeout(how: str, tmp_path: Path) -> None:
    """SIGKILL closes the rank's connections (the other fails at once); SIGSTOP leaves them open, so only
    --dist-timeout ends the wait. Either way rank 0 exits non-zero with one line, well before a hang."""
    port, timeout = free_port(), 8
    args = [*SFT, "--max-steps", "100000", "--dist-timeout", str(timeout), "--out", str(tmp_path / "run")]
    a, b = node(port, *args), node(port, *args)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while (
        not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    ranks = {}
    for pid in subprocess.run(
        ["pgrep", "-f", f"rdzv-id test{port}"], capture_output=True, text=True
    ).stdout.split():
        for child in subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split():
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            rank = next((e.split(b"=")[1] for e in environ if e.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[int(rank)] = int(child)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout + 60:
            try:
                os.kill(ranks[0], 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        waited = time.monotonic() - t0
    finally:
        os.kill(ranks[1], signal.SIGKILL) if how == "frozen" else None
        errs = finish(a, b, timeout=60)
    assert waited < timeout + 30, f"rank 0 still running {waited:.0f} s after rank 1 {how}"
    ours = [
        line for line in errs[0].splitlines() + errs[1].splitlines() if line.startswith("error: rank 0: ")
    ]
    assert len(ours) == 1, errs[0][-3000:]
    assert ("did not answer within --dist-timeout" if how == "frozen" else "stopped") in ours[0]
    assert a.returncode != 0 or b.returncode != 0
