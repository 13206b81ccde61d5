"""Scaling study (issue 21, item 5): rlhf vs TRL at three model sizes, and per-rank memory under DDP vs FSDP.

    .venv/bin/python benchmarks/scaling.py                        # all of it, ~20 min on 2 idle cores
    .venv/bin/python benchmarks/scaling.py --sizes tiny --quick   # a check that it runs (~2 min)
    .venv/bin/python benchmarks/scaling.py --no-trl               # ours only (no ratios)

One pass, on this machine, each measurement in its own process (its peak RSS is its own: `wait4`):

(a) throughput and peak RSS of our SFT, PPO and GRPO at the peer harness's three sizes (`../shared/peers/trl`,
    `common.SIZES`): tiny 4 x 128 (0.86M parameters, the workload of `compare_trl.py`), small 6 x 384 (10.8M),
    medium 8 x 512 (25.5M); short sequences (SFT [16, 128]; PPO / GRPO prompts of 30-60 bytes, 32-token responses).
(b) the same work on the peer side at each size, the size given to the peer scripts as PEER_MODEL: PPO =
    `bench_ppo.py`, GRPO = `bench_grpo.py` (TRL's trainers). TRL has no SFT peer script; SFT is compared, as in
    `compare_trl.py`, with bare PyTorch on the HF GPT-2 of `common.build_lm` - `bench_torch_baseline.py`'s step
    (fwd+bwd, and fwd+bwd+AdamW, on its [16, 128] random batch, HF's default dropout 0.1), run here by this file
    under TRL's interpreter (`--child bare`) because that script's fixed 5 + 2 x 100 + 100 steps take ~15 min at
    25M parameters on 2 cores.
(c) per-rank parameter, gradient and AdamW-state bytes, and peak RSS per rank, of one SFT step ([16, 128] global
    batch, 8 rows per rank) under `torchrun --nproc-per-node 2` with DDP and with FSDP (`--child memory`: the SFT
    stage's own pieces - GPT, `shard_model`, `make_optimizer`, `wrap_ddp`, `sft_batch`, `sft_loss`, `clip_grads` -
    with the bytes counted from the tensors each process holds, DTensor shards as their local part).

Ours runs `compare_trl.py`'s own children (`--child sft|ppo|grpo`, model from `common.MODEL_KW` of PEER_MODEL);
every setting is theirs, only the number of timed steps is shorter (the same on both sides, `WORK` below): each side
does its warm-up (PPO 32 episodes, GRPO 2 steps, SFT W steps) and then one timed run. Throughput: SFT tokens/s;
PPO episodes/s; GRPO completions/s. To explain how the ratio moves with size, the study also records where the time
goes: SFT MFU (6 N tokens/s over the fp32 matmul peak each side's SFT process measures at its threads), seconds
per PPO update / GRPO step on each side, our `time_share` (generation / scoring / update), TRL's PPO phase shares
(generation, scoring, optimisation, `gc.collect`), TRL's GRPO generation share, and our PPO update's MFU.

Output: one table on stdout, `--out` (default benchmarks/scaling.md: the command, date, machine, versions, tables
and a "what it shows" paragraph to fill in), and `--logs` (default runs/bench-scaling/: result.json, one log per
run). Runs alternate which side goes first, size by size, so a drift of the host's speed favours neither side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare_trl as ct  # noqa: E402  (standard library only at import: TRL's interpreter imports it too)

ROOT = HERE.parent
SIZES = ("tiny", "small", "medium")
STAGES = ("sft", "ppo", "grpo")
# Timed work per size, the same on both sides: PPO episodes (16 per update) and GRPO steps (16 prompts x 4) of
# the timed run, after each side's warm-up run; SFT (warm-up steps, steps per repeat, repeats), median repeat.
# The large sizes run fewer steps: one PPO update of TRL at 25M parameters takes ~30 s on 2 cores.
WORK = {
    "tiny": {"ppo_episodes": 128, "grpo_steps": 8, "sft_iters": (2, 10, 3)},
    "small": {"ppo_episodes": 64, "grpo_steps": 4, "sft_iters": (1, 3, 2)},
    "medium": {"ppo_episodes": 48, "grpo_steps": 3, "sft_iters": (1, 2, 2)},
}
QUICK = {"ppo_episodes": 16, "grpo_steps": 1, "sft_iters": (1, 1, 1)}
MEMORY_BATCH = (16, 128)  # (c): one SFT step on the SFT benchmark's global batch
MIB = 2**20
TORCHRUN = Path(sys.executable).parent / "torchrun"
DEFAULT_TRL_PYTHON = ROOT.parent / ".venv-trl" / "bin" / "python"


# ================================================================================================ children
def child_bare(a) -> None:
    """Under TRL's interpreter: bench_torch_baseline.py's step on `common.build_lm` at PEER_MODEL's size - fwd+bwd
    (`labels=x`), then fwd+bwd+AdamW(lr 1e-4), on its [16, 128] batch, with its threads - for `--sft-iters` steps
    (the baseline: 5, 20 x 5). Emits the baseline's RESULT names."""
    import resource
    import statistics

    import torch

    common = ct.import_peer_common(a.peer_dir)
    common.setup_threads()
    peak = ct.matmul_gflops()  # the baseline's fp32 peak, at its threads (for this side's MFU)
    ct.emit("matmul_fp32_1024", {"gflops_median": peak, "threads": torch.get_num_threads()})
    model = common.build_lm(seed=0)
    model.train()
    n_all = common.n_params(model)
    g = torch.Generator().manual_seed(0)
    B, T = 16, 128
    x = torch.randint(0, 256, (B, T), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def fwd_bwd(step_opt: bool) -> None:
        out = model(input_ids=x, labels=x, use_cache=False)
        out.loss.backward()
        if step_opt:
            opt.step()
        opt.zero_grad(set_to_none=True)

    warm, iters, reps = a.sft_iters
    for label, step_opt in (("fwd_bwd", False), ("fwd_bwd_adamw", True)):
        for _ in range(warm):
            fwd_bwd(step_opt)
        tps = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(iters):
                fwd_bwd(step_opt)
            tps.append(B * T * iters / (time.perf_counter() - t0))
        med = statistics.median(tps)
        print(f"bare {label} [16,128], {common.PEER_MODEL}: {med:,.0f} tok/s", flush=True)
        ct.emit(
            f"torch_{label}_16x128",
            {
                "tokens_per_s_median": med,
                "tokens_per_s_repeats": tps,
                "model_gflops_6NT": 6 * n_all * med / 1e9,
                "params": n_all,
                "iters": [warm, iters, reps],
                "threads": torch.get_num_threads(),
            },
        )
    ct.emit("peak_rss_bare", {"mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def local_bytes(t) -> int:
    """Bytes of the part of `t` this process holds (a DTensor's local shard)."""
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def child_memory(a) -> None:
    """Under torchrun: one SFT training step of the workload GPT with --strategy ddp or fsdp, through the SFT
    stage's own pieces, then what this process holds. Emits `memory_rank<R>`."""
    import resource

    import torch

    from rlhf import distributed as dist
    from rlhf.allocator import keep_freed_memory
    from rlhf.config import SFTConfig
    from rlhf.data.collate import Encoded, sft_batch
    from rlhf.data.tokenizer import ByteTokenizer
    from rlhf.models.gpt import GPT
    from rlhf.stages.common import clip_grads, make_optimizer
    from rlhf.stages.sft import sft_loss

    keep_freed_memory()  # as every rlhf command does at start
    torch.set_num_threads(a.threads)
    dist.init("cpu")
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # interpreter + torch + rlhf
    common = ct.import_peer_common(a.peer_dir)
    cfg = SFTConfig(strategy=a.strategy)  # the stage's AdamW and clipping
    cfg.arch = ct.workload_arch(common)
    torch.manual_seed(0)
    model = GPT(cfg.arch).train()
    n_params = model.num_params()
    model = dist.shard_model(model, cfg.strategy)  # FSDP: before the optimizer, as the stage does
    opt = make_optimizer(model, cfg.optim)
    train_model = dist.wrap_ddp(model)  # DDP under torchrun; FSDP reduces gradients itself
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak so far: built, sharded
    B, T = MEMORY_BATCH
    x = torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(0))
    rows, _ = dist.shard([Encoded(r.tolist(), 1, False) for r in x])  # this rank's rows of the global batch
    b = sft_batch(rows, ByteTokenizer().pad_id)
    nll, n = sft_loss(train_model(b["input_ids"]), b["input_ids"], b["loss_mask"])
    (nll / max(n, 1)).backward()
    grad_bytes = sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    clip_grads(model, cfg.optim.grad_clip)
    opt.step()  # AdamW creates its state here
    opt.zero_grad(set_to_none=True)
    moments = steps = 0
    for state in opt.state.values():
        for k, v in state.items():
            if torch.is_tensor(v):
                if k in ("exp_avg", "exp_avg_sq"):
                    moments += local_bytes(v)
                else:  # the per-parameter step counters (fused AdamW keeps them as tensors)
                    steps += local_bytes(v)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mine = {
        "strategy": cfg.strategy,
        "world": dist.world(),
        "rank": dist.rank(),
        "params": n_params,
        "param_bytes": dist.local_param_bytes(model),
        "grad_bytes": grad_bytes,
        "optimizer_bytes": moments + steps,
        "optimizer_moment_bytes": moments,
        "optimizer_step_bytes": steps,
        "rows": len(rows),
        "rss_start_mib": rss_start,
        "peak_rss_built_mib": rss_built,
        "peak_rss_mib": peak,
        "threads": torch.get_num_threads(),
    }
    # Rank 0 prints every rank's line: two processes writing to one pipe can interleave their lines.
    if dist.world() > 1:
        import torch.distributed

        every = [None] * dist.world()
        torch.distributed.all_gather_object(every, mine)
    else:
        every = [mine]
    if dist.is_main():
        for r in every:
            ct.emit(f"memory_rank{r['rank']}", r)
    dist.exit_after_success()


# ================================================================================================ the driver
def size_args(a, size: str, quick: bool) -> SimpleNamespace:
    """What compare_trl's command builders read (`our_cmd`, `peer_cmd`, `peer_environ`) for one size."""
    work = QUICK if quick else WORK[size]
    return SimpleNamespace(
        peer_dir=a.peer_dir,
        peer_model=size,
        threads=a.threads,
        repeats=1,
        smoke=False,
        trl_python=a.trl_python,
        **work,
    )


class Study:
    """Runs the measurements, keeps every result (saved to result.json after each run)."""

    def __init__(self, a):
        self.a = a
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            self.env.pop(k, None)
        self.results: dict = {"runs": {}}
        self.n = 0

    def save(self) -> None:
        (self.a.logs / "result.json").write_text(json.dumps(self.results, indent=1))

    def run(self, name: str, cmd: list[str], env: dict, cwd: Path | None = None) -> dict | None:
        """One measurement in its own process: its RESULT lines, or None when it failed (the study goes on)."""
        self.n += 1
        print(f"[{self.n}] {name}: {' '.join(map(str, cmd))}", flush=True)
        log = self.a.logs / f"{name}.log"
        try:
            res, wall, peak, loads = ct.run_process(cmd, log, env, cwd, self.a.verbose)
        except (SystemExit, ValueError) as e:  # a failed run, or output that does not parse
            print(f"    FAILED: {e}", flush=True)
            self.results["runs"][name] = {"error": str(e), "log": str(log)}
            self.save()
            return None
        print(
            f"    done in {wall:.0f} s, peak RSS {peak:,.0f} MiB, load {loads[0]} -> {loads[1]}", flush=True
        )
        self.results["runs"][name] = {
            "wall_seconds": round(wall, 1),
            "peak_rss_mib": peak,
            "load_before": loads[0],
            "load_after": loads[1],
            "results": res,
        }
        self.save()
        return res

    def stage(self, size: str, stage: str, first: str) -> None:
        sa = size_args(self.a, size, self.a.quick)
        env = {**self.env, "PEER_MODEL": size}
        for side in (first, "ours" if first == "trl" else "trl"):
            if side == "ours":
                self.run(f"{size}_{stage}_ours", ct.our_cmd(stage, sa), env, ROOT)
            elif not self.a.no_trl:
                if stage == "sft":  # no TRL SFT script: bench_torch_baseline's step, fewer steps (child_bare)
                    cmd = [str(self.a.trl_python), str(Path(__file__).resolve()), "--child", "bare"]
                    cmd += [
                        "--peer-dir",
                        str(self.a.peer_dir),
                        "--sft-iters",
                        ",".join(map(str, sa.sft_iters)),
                    ]
                else:
                    cmd = ct.peer_cmd(stage, sa)
                # The peer scripts write their trainers' output to the working directory: a throwaway one.
                with tempfile.TemporaryDirectory(prefix="trl_scaling_cwd_") as cwd:
                    self.run(f"{size}_{stage}_trl", cmd, ct.peer_environ(env, sa), Path(cwd))

    def memory(self, size: str) -> None:
        env = {**self.env, "PEER_MODEL": size, "OMP_NUM_THREADS": "1"}
        for strategy in ("ddp", "fsdp"):
            cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(Path(__file__).resolve())]
            cmd += ["--child", "memory", "--strategy", strategy, "--peer-dir", str(self.a.peer_dir)]
            cmd += ["--threads", "1"]
            self.run(f"{size}_memory_{strategy}", cmd, env, ROOT)


# ================================================================================================ figures
def get(study: dict, name: str, *keys):
    return ct.dig(study["runs"].get(name, {}), "results", *keys)


def rss(study: dict, name: str):
    return ct.dig(study["runs"].get(name, {}), "peak_rss_mib")


def throughput_rows(study: dict, sizes: list[str]) -> list[dict]:
    """(a) + (b): one row per size and figure."""
    rows = []
    for size in sizes:
        n = get(study, f"{size}_sft_ours", "sft_step_16x128", "params") or get(
            study, f"{size}_sft_trl", "torch_fwd_bwd_16x128", "params"
        )
        specs = [
            ("SFT step [16,128] vs bare fwd+bwd", "sft", ("sft_step_16x128",), ("torch_fwd_bwd_16x128",),
             "tokens_per_s_median", "tok/s"),
            ("SFT step [16,128] vs bare fwd+bwd+AdamW", "sft", ("sft_step_16x128",),
             ("torch_fwd_bwd_adamw_16x128",), "tokens_per_s_median", "tok/s"),
            ("PPO (16 prompts x 32 tokens, 4 epochs)", "ppo", ("ppo_ours",), ("ppo_summary",),
             "episodes_per_s_median", "episodes/s"),
            ("GRPO (16 prompts x 4, <=32 tokens)", "grpo", ("grpo_ours",), ("grpo_summary",),
             "completions_per_s_median", "compl./s"),
        ]  # fmt: skip
        for label, stage, ok, tk, key, unit in specs:
            o = get(study, f"{size}_{stage}_ours", *ok, key)
            t = get(study, f"{size}_{stage}_trl", *tk, key)
            rows.append(
                {
                    "size": size,
                    "params": n,
                    "stage": stage,
                    "label": label,
                    "ours": o,
                    "trl": t,
                    "ratio": ct.ratio(o, t),
                    "unit": unit,
                    "rss_ours": rss(study, f"{size}_{stage}_ours"),
                    "rss_trl": rss(study, f"{size}_{stage}_trl"),
                }
            )
    return rows


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}"


def shares(d: dict | None, keys: list[str]) -> str:
    return "-" if not d else "/".join(pct(sum(d.get(k, 0.0) for k in ks.split("+"))) for ks in keys)


def explain_rows(study: dict, sizes: list[str]) -> list[dict]:
    """Where the time goes at each size (what moves the ratio)."""
    rows = []
    for size in sizes:
        peak = get(study, f"{size}_sft_ours", "matmul_fp32_1024_ours", "gflops_median")
        peak_bare = get(study, f"{size}_sft_trl", "matmul_fp32_1024", "gflops_median")
        s_o = get(study, f"{size}_sft_ours", "sft_step_16x128")
        s_t = get(study, f"{size}_sft_trl", "torch_fwd_bwd_adamw_16x128")
        s_d = get(study, f"{size}_sft_ours", "sft_step_16x128_dropout01", "tokens_per_s_median")
        p_o, p_t = get(study, f"{size}_ppo_ours", "ppo_ours"), get(study, f"{size}_ppo_trl", "ppo_summary")
        g_o, g_t = (
            get(study, f"{size}_grpo_ours", "grpo_ours"),
            get(study, f"{size}_grpo_trl", "grpo_summary"),
        )
        ppo_peak = get(study, f"{size}_ppo_ours", "matmul_fp32_1024_ours", "gflops_median")

        def mfu(d, pk):
            return None if not d or not pk else d["model_gflops_6NT"] / pk

        def per_step(seconds, steps):
            return None if seconds is None or not steps else seconds / steps

        trl_ppo_updates = p_t and p_t["total_episodes"] // 16
        rows.append(
            {
                "size": size,
                "matmul_gflops": peak,
                "sft_mfu_ours": mfu(s_o, peak),
                "matmul_gflops_bare": peak_bare,
                "sft_mfu_bare_adamw": mfu(s_t, peak_bare),
                "sft_ratio_dropout01_vs_bare_adamw": ct.ratio(s_d, s_t and s_t["tokens_per_s_median"]),
                "ppo_s_per_update_ours": per_step(
                    p_o and p_o["train_seconds_median"], p_o and p_o["updates"]
                ),
                "ppo_s_per_update_trl": per_step(p_t and p_t["train_seconds_median"], trl_ppo_updates),
                "ppo_share_ours": p_o and p_o["time_share"],
                "ppo_share_trl": p_t and p_t["phase_fraction_median"],
                "ppo_update_mfu_ours": None
                if not p_o or not ppo_peak
                else p_o["ppo_update_model_gflops"] / ppo_peak,
                "grpo_s_per_step_ours": per_step(g_o and g_o["train_seconds_median"], g_o and g_o["steps"]),
                "grpo_s_per_step_trl": per_step(g_t and g_t["train_seconds_median"], g_t and g_t["steps"]),
                "grpo_share_ours": g_o and g_o["time_share"],
                "grpo_gen_share_trl": g_t and g_t["generate_share_median"],
            }
        )
    return rows


TRL_PPO_SHARES = [
    "generation",
    "rollout_scoring_ref_value_reward+rollout_logprobs_of_generated",
    "ppo_optimisation_total",
    "gc_collect (2 per update)",
    "other+trl_empty_cache (no-op on CPU)",
]
OUR_SHARES = ["generation", "scoring", "update"]


def memory_rows(study: dict, sizes: list[str]) -> list[dict]:
    """(c): per size and strategy, the largest rank's bytes (FSDP's shards differ by a row or so)."""
    rows = []
    for size in sizes:
        per = {}
        for strategy in ("ddp", "fsdp"):
            ranks = [get(study, f"{size}_memory_{strategy}", f"memory_rank{r}") for r in (0, 1)]
            ranks = [r for r in ranks if r]
            if not ranks:
                per[strategy] = None
                continue
            per[strategy] = {
                k: max(r[k] for r in ranks) for k in ("param_bytes", "grad_bytes", "optimizer_bytes")
            }
            per[strategy]["rss"] = [r["peak_rss_mib"] for r in ranks]  # rank 0, rank 1
            per[strategy]["rss_above"] = [r["peak_rss_mib"] - r["rss_start_mib"] for r in ranks]
            per[strategy]["rss_built"] = [r["peak_rss_built_mib"] - r["rss_start_mib"] for r in ranks]
            per[strategy]["params"] = ranks[0]["params"]
        rows.append({"size": size, **per})
    return rows


def per_rank(xs) -> str:
    return "-" if not xs else " / ".join(f"{x:,.0f}" for x in xs)


def mib(x) -> str:
    return "-" if x is None else f"{x / MIB:,.2f}"


def fraction(a, b) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


# ================================================================================================ tables
def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def tables(study: dict, sizes: list[str]) -> dict[str, list[str]]:
    """The three tables as markdown lines (stdout prints the same)."""
    thr = throughput_rows(study, sizes)
    a = table(
        [
            "model",
            "figure",
            "ours",
            "TRL / bare",
            "ours/TRL",
            "unit",
            "ours peak RSS MiB",
            "TRL peak RSS MiB",
        ],
        [
            [
                f"{r['size']} ({ct.fmt(r['params'] and r['params'] / 1e6, '.2f')}M)",
                r["label"],
                ct.fmt(r["ours"]),
                ct.fmt(r["trl"]),
                r["ratio"],
                r["unit"],
                ct.fmt(r["rss_ours"], ",.0f"),
                ct.fmt(r["rss_trl"], ",.0f"),
            ]
            for r in thr
        ],
    )
    ex = explain_rows(study, sizes)
    b = table(
        [
            "model",
            "fp32 matmul peak GFLOP/s ours / bare",
            "SFT MFU ours / bare+AdamW %",
            "SFT ours at dropout 0.1 / bare+AdamW",
            "PPO s per update ours / TRL",
            "PPO ours gen/score/update %",
            "PPO TRL gen/score/optim/gc/other %",
            "PPO update MFU ours %",
            "GRPO s per step ours / TRL",
            "GRPO ours gen/score/update %",
            "GRPO TRL gen %",
        ],
        [
            [
                r["size"],
                f"{ct.fmt(r['matmul_gflops'], '.0f')} / {ct.fmt(r['matmul_gflops_bare'], '.0f')}",
                f"{pct(r['sft_mfu_ours'])} / {pct(r['sft_mfu_bare_adamw'])}",
                r["sft_ratio_dropout01_vs_bare_adamw"],
                f"{ct.fmt(r['ppo_s_per_update_ours'], '.2f')} / {ct.fmt(r['ppo_s_per_update_trl'], '.2f')}",
                shares(r["ppo_share_ours"], OUR_SHARES),
                shares(r["ppo_share_trl"], TRL_PPO_SHARES),
                pct(r["ppo_update_mfu_ours"]),
                f"{ct.fmt(r['grpo_s_per_step_ours'], '.2f')} / {ct.fmt(r['grpo_s_per_step_trl'], '.2f')}",
                shares(r["grpo_share_ours"], OUR_SHARES),
                pct(r["grpo_gen_share_trl"]),
            ]
            for r in ex
        ],
    )
    mem_rows = []
    for r in memory_rows(study, sizes):
        d, f = r.get("ddp"), r.get("fsdp")
        for name, m in (("DDP", d), ("FSDP", f)):
            mem_rows.append(
                [
                    r["size"],
                    name,
                    mib(m and m["param_bytes"]),
                    mib(m and m["grad_bytes"]),
                    mib(m and m["optimizer_bytes"]),
                    per_rank(m and m["rss"]),
                    per_rank(m and m["rss_above"]),
                    per_rank(m and m["rss_built"]),
                ]
            )
        mem_rows.append(
            [
                r["size"],
                "**FSDP/DDP**",
                *(fraction(f and f[k], d and d[k]) for k in ("param_bytes", "grad_bytes", "optimizer_bytes")),
                *(
                    " / ".join(fraction(x, y) for x, y in zip(f[k], d[k])) if f and d else "-"
                    for k in ("rss", "rss_above", "rss_built")
                ),
            ]
        )
    c = table(
        [
            "model",
            "2 processes",
            "params MiB/rank",
            "grads MiB/rank",
            "AdamW state MiB/rank",
            "peak RSS MiB, rank 0 / 1",
            "peak RSS above start MiB, rank 0 / 1",
            "of it before the step (model built and wrapped), rank 0 / 1",
        ],
        mem_rows,
    )
    return {"throughput": a, "explain": b, "memory": c}


def ratio_change(study: dict, sizes: list[str]) -> str:
    """`sft x -> y, ppo x -> y, grpo x -> y` from the first size to the last."""
    rows = throughput_rows(study, list(dict.fromkeys([sizes[0], sizes[-1]]))) if sizes else []
    parts = []
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r["ratio"] for r in rows if r["label"] == label]
        parts.append(f"{label.split(' (')[0]}: {' -> '.join(rs)}")
    return "; ".join(parts)


def span(sizes: list[str]) -> str:
    return " -> ".join(dict.fromkeys([sizes[0], sizes[-1]])) if sizes else "?"


def machine() -> dict:
    model = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "0")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": cores, "memory_gib": round(int(mem) / 2**20, 1), "os": platform.platform()}


def versions(python: Path | None, packages: list[str]) -> dict:
    """Package versions of an interpreter without importing them (importlib.metadata)."""
    if python is None:
        return {}
    code = "import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    try:
        out = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def markdown(study: dict, sizes: list[str]) -> str:
    m = study.get("meta", {})
    t = tables(study, sizes)
    mach = m.get("machine", {})
    ours_v, trl_v = m.get("versions_ours", {}), m.get("versions_trl", {})
    work = m.get("work", {})
    lines = [
        "# Scaling study: rlhf vs TRL at 0.86M, 10.8M and 25.5M parameters; DDP vs FSDP memory",
        "",
        "Written by `benchmarks/scaling.py` (issue 21, item 5); its docstring says what each figure is.",
        "",
        f"- command: `{m.get('command', '(from the run)')}`",
        f"- date: {m.get('date_start', '(from the run)')} -> {m.get('date_end', '(from the run)')} "
        f"(`date -u`), {ct.fmt(m.get('wall_seconds'), ',.0f')} s in all",
        f"- machine: {mach.get('cores', '?')} cores ({mach.get('cpu', '?')}), {mach.get('memory_gib', '?')} GiB, "
        f"{mach.get('os', '?')}",
        f"- versions: ours torch {ours_v.get('torch', '?')}; TRL side torch {trl_v.get('torch', '?')}, "
        f"transformers {trl_v.get('transformers', '?')}, trl {trl_v.get('trl', '?')}",
        f"- threads: ours {m.get('threads', '?')}, TRL's scripts 2 (hard-coded); (c) 1 per process",
        f"- load average (1/5/15 min): start {m.get('load_start', '?')} -> end {m.get('load_end', '?')}"
        + (f"; {m['busy_warning']}" if m.get("busy_warning") else ""),
        f"- quick mode (too few steps for figures): {m.get('quick', '?')}",
        "",
        "Timed work per size, identical on both sides (after each side's warm-up run: PPO 32 episodes, GRPO 2 steps):",
        "",
        *table(
            [
                "model",
                "PPO episodes",
                "GRPO steps (64 completions each)",
                "SFT steps: warm-up, per repeat, repeats",
            ],
            [
                [s, str(w["ppo_episodes"]), str(w["grpo_steps"]), ", ".join(map(str, w["sft_iters"]))]
                for s, w in work.items()
            ]
            or [["(from the run)", "", "", ""]],
        ),
        "",
        "## (a) + (b) Throughput and peak RSS, ours vs TRL (SFT: vs bare PyTorch on HF GPT-2; TRL has no SFT script)",
        "",
        *t["throughput"],
        "",
        f"Ratio (ours/TRL), {span(sizes)}: {ratio_change(study, sizes) or '(from the run)'}",
        "",
        "## Where the time goes (what moves the ratio)",
        "",
        "MFU = 6 N tokens/s over the fp32 matmul peak (torch.mm 1024^2 as bench_torch_baseline.py measures it, "
        "in each side's SFT process at its threads). Shares are of "
        "each side's timed loop: ours `time_share` of `train_ppo`; TRL's PPO phases from `bench_ppo.py` (scoring = "
        "reference/value/reward forwards + log-probs of the generated tokens; other includes GAE, whitening and "
        "logging); TRL's GRPO generation share from `bench_grpo.py`.",
        "",
        *t["explain"],
        "",
        "## (c) Per-rank memory of one SFT step, 2 processes: DDP vs FSDP",
        "",
        f"Global batch {MEMORY_BATCH[0]} x {MEMORY_BATCH[1]} tokens (8 rows per rank). Bytes: the larger rank's "
        "(FSDP shards differ by a row); AdamW state = exp_avg + exp_avg_sq (+ the per-parameter step counters), "
        "counted from the tensors each process holds. Peak RSS per rank; above start = minus the RSS after "
        "importing torch and joining the process group; before the step = the peak reached once the model is built "
        "whole, sharded (FSDP) and wrapped and the optimizer made, as the SFT stage does. Under FSDP rank 0 also "
        "keeps a plain copy of the model (`shard_model`: for its evaluation, sampling and the checkpoint), rank 1 "
        "does not.",
        "",
        *t["memory"],
        "",
        "## What it shows",
        "",
        "(filled in from the measured run)",
        "",
    ]
    return "\n".join(lines)


def print_tables(study: dict, sizes: list[str]) -> None:
    t = tables(study, sizes)
    for title, key in (
        ("(a) + (b) throughput and peak RSS", "throughput"),
        ("where the time goes", "explain"),
        ("(c) per-rank memory, 2 processes", "memory"),
    ):
        print(f"\n{title}")
        for line in t[key]:
            if not line.startswith("|---"):
                print(line)
    print(f"\nratio ours/TRL, {span(sizes)}: {ratio_change(study, sizes)}")


def date_u() -> str:
    return subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()


def rel(p: str | Path) -> str:
    p = Path(p)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES), help="model sizes (PEER_MODEL)")
    ap.add_argument(
        "--quick", action="store_true", help="1-2 timed steps per run: checks the script, no figures"
    )
    ap.add_argument("--no-trl", action="store_true", help="ours only (and the memory study): no ratios")
    ap.add_argument("--out", type=Path, default=HERE / "scaling.md", help="the markdown report")
    ap.add_argument("--logs", type=Path, default=ROOT / "runs" / "bench-scaling", help="result.json, logs")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for ours (TRL's scripts use 2)")
    ap.add_argument(
        "--trl-python",
        type=Path,
        default=os.environ.get("TRL_PYTHON") or DEFAULT_TRL_PYTHON,
        help="TRL venv's python (default: $TRL_PYTHON, else ../.venv-trl/bin/python)",
    )
    ap.add_argument("--peer-dir", type=Path, default=ct.DEFAULT_PEER_DIR, help="the TRL peer harness")
    ap.add_argument("--verbose", action="store_true", help="echo every subprocess's output")
    ap.add_argument("--skeleton", action="store_true", help=argparse.SUPPRESS)  # write --out with no figures
    ap.add_argument("--child", choices=("bare", "memory"), help=argparse.SUPPRESS)
    ap.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp", help=argparse.SUPPRESS)
    ap.add_argument("--sft-iters", type=ct.parse_iters, default=(5, 20, 5), help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.peer_dir = a.peer_dir.resolve()
    if a.child == "bare":
        child_bare(a)
        return
    if a.child == "memory":
        child_memory(a)
        return
    if a.skeleton:
        sizes = [s for s in SIZES if s in a.sizes]
        a.out.write_text(markdown({"runs": {}, "meta": {"work": {s: WORK[s] for s in sizes}}}, sizes))
        print(f"wrote {a.out}")
        return
    if not (a.peer_dir / "common.py").exists():
        ap.error(f"{a.peer_dir}: no common.py (the TRL peer harness); set --peer-dir")
    if not a.no_trl and not Path(a.trl_python).exists():
        ap.error(f"{a.trl_python}: no TRL interpreter; set --trl-python or TRL_PYTHON (or --no-trl)")
    if not TORCHRUN.exists():
        ap.error(f"{TORCHRUN}: torchrun not found next to this interpreter")
    a.logs.mkdir(parents=True, exist_ok=True)
    sizes = [s for s in SIZES if s in a.sizes]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so run_process can stop its child
    study = Study(a)
    t0 = time.perf_counter()
    command = " ".join([rel(sys.executable), rel(Path(__file__).resolve()), *map(shlex.quote, sys.argv[1:])])
    study.results["meta"] = {
        "command": command,
        "date_start": date_u(),
        "machine": machine(),
        "versions_ours": versions(Path(sys.executable), ["torch"]),
        "versions_trl": {} if a.no_trl else versions(a.trl_python, ["torch", "transformers", "trl"]),
        "threads": a.threads,
        "quick": a.quick,
        "work": {s: QUICK if a.quick else WORK[s] for s in sizes},
        "load_start": ct.loadavg(),
    }
    print(
        f"scaling: sizes {', '.join(sizes)} | ours {a.threads} threads | quick {a.quick} | load {ct.loadavg()}"
    )
    warn = ct.busy_warning("start")
    if warn:
        print(warn)
    for i, size in enumerate(sizes):
        for j, stage in enumerate(STAGES):
            study.stage(size, stage, first="trl" if (i + j) % 2 == 0 else "ours")
        study.memory(size)
    res = study.results
    res["meta"].update(date_end=date_u(), load_end=ct.loadavg(), wall_seconds=time.perf_counter() - t0)
    warn = ct.busy_warning("end")
    if warn:
        res["meta"]["busy_warning"] = warn
        print(warn)
    study.save()
    print_tables(res, sizes)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(markdown(res, sizes))
    failed = [k for k, v in res["runs"].items() if "error" in v]
    print(f"\n{len(res['runs'])} runs in {res['meta']['wall_seconds']:.0f} s; report {a.out}; logs {a.logs}")
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)} (logs in {a.logs})")


if __name__ == "__main__":
    main()
