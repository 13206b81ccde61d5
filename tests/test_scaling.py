"""`benchmarks/scaling.py`'s memory study (c), at the tiny workload model with 2 processes: DDP holds the whole
model, its gradients and AdamW's two fp32 moments per parameter in each process; FSDP shards all three, each
process holding about half, and the shards add up to the whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scaling.py"
PEER_DIR = ROOT.parent / "shared" / "peers" / "trl"
TORCHRUN = Path(sys.executable).parent / "torchrun"
TINY_PARAMS = 859_264  # the peer's tiny GPT-2 (4 x 128, vocab 259, 256 positions)

pytestmark = pytest.mark.skipif(not (PEER_DIR / "common.py").exists(), reason="no TRL peer harness")


def memory(strategy: str) -> dict[int, dict]:
    """Both ranks' `memory_rank<R>` results of `scaling.py --child memory` under torchrun."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PEER_MODEL="tiny", OMP_NUM_THREADS="1")
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node=2", str(SCRIPT), "--child", "memory"]
    cmd += ["--strategy", strategy, "--peer-dir", str(PEER_DIR), "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    out = {}
    for line in res.stdout.splitlines():
        if line.startswith("RESULT memory_rank"):
            _, name, payload = line.split(" ", 2)
            out[int(name.removeprefix("memory_rank"))] = json.loads(payload)
    assert sorted(out) == [0, 1], res.stdout[-2000:]
    return out


def test_fsdp_shards_parameters_gradients_and_adamw_state_in_halves():
    ddp, fsdp = memory("ddp"), memory("fsdp")
    whole = 4 * TINY_PARAMS  # fp32
    for r in (0, 1):
        assert ddp[r]["world"] == fsdp[r]["world"] == 2 and ddp[r]["rows"] == fsdp[r]["rows"] == 8
        assert ddp[r]["param_bytes"] == ddp[r]["grad_bytes"] == whole
        assert ddp[r]["optimizer_moment_bytes"] == 2 * whole  # AdamW: exp_avg and exp_avg_sq, fp32
    for key, total in (("param_bytes", whole), ("grad_bytes", whole), ("optimizer_moment_bytes", 2 * whole)):
        assert fsdp[0][key] + fsdp[1][key] == total, key  # the shards cover the model exactly once
        assert max(fsdp[r][key] for r in (0, 1)) <= 0.55 * ddp[0][key], key
