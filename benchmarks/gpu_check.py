"""GPU readiness in one run (`benchmarks/gpu_check.sh` calls this): what a machine with an NVIDIA GPU runs first.

1. the tests that take a device (`tests/test_device.py` with RLHF_TEST_DEVICE);
2. `rlhf demo --device DEVICE` (the real demo on a GPU; a small one on the CPU);
3. SFT / PPO / GRPO throughput of a GPT-2-small-shaped model (12 layers x 768; on the CPU 2 x 64, fp32 only) in fp32 and bf16,
   on the built-in task (short sequences: prompts of ~20 tokens, answers up to 32);
4. the peak memory of each (GPU: torch.cuda.max_memory_allocated; CPU: the process's peak RSS);
5. FSDP: SFT and GRPO under `torchrun --strategy fsdp` on every GPU of the machine (bf16 compute with fp32 gradient
   reduction, nccl; on the CPU 2 gloo processes in fp32), with each process's share of the parameters;
6. OUT/summary.json with every figure, and a table on stdout.

A step that fails is recorded in the summary (its error's last lines) and the others still run; the script then
exits 1, so one broken piece does not hide what works.

Each measurement runs in its own process, so each peak is its own. `--device cpu` runs the same steps at small
sizes in a few minutes: CI runs it (tests/test_gpu_check.py), so the script cannot rot before a GPU sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run one rlhf command in a fresh process and print its summary plus the peak memory as one JSON line.
CHILD = r"""
import json, resource, sys, torch
from rlhf import cli
summary = cli.run(sys.argv[1:])
peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and "cuda" in sys.argv else (
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print("GPU_CHECK " + json.dumps({"summary": {k: v for k, v in summary.items() if k != "samples"},
                                 "peak_bytes": int(peak)}, default=str))
"""

SIZES = {  # (n_layer, n_embd, n_head), steps / episodes per measurement
    "cuda": {"arch": (12, 768, 12), "sft_steps": 30, "ppo_episodes": 256, "grpo_episodes": 64, "batch": 16},
    "cpu": {"arch": (2, 64, 2), "sft_steps": 5, "ppo_episodes": 8, "grpo_episodes": 4, "batch": 4},
}
QUICK_DEMO = ["--sft-epochs", "0.02", "--rm-pairs", "50", "--rm-epochs", "0.2", "--episodes", "16",
              "--compare-prompts", "8"]  # fmt: skip


def run(argv: list[str], env: dict | None = None) -> dict:
    """One rlhf command in a child process: its summary, peak memory and wall time; raises with the log's tail."""
    t0 = time.time()
    argv = [*argv, "--overwrite"]  # a second check into the same --out replaces the first's runs
    res = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(
            f"gpu_check: `rlhf {' '.join(argv)}` failed ({res.returncode}):\n{res.stderr[-3000:]}"
        )
    line = next(x for x in res.stdout.splitlines() if x.startswith("GPU_CHECK "))
    return {**json.loads(line[len("GPU_CHECK ") :]), "wall_s": round(time.time() - t0, 2)}


def throughput(device: str, dtype: str, out: Path) -> dict:
    size = SIZES[device]
    n_layer, n_embd, n_head = size["arch"]
    common = ["--device", device, "--no-progress"] + (["--threads", "1"] if device == "cpu" else [])
    arch = ["--arch.n-layer", str(n_layer), "--arch.n-embd", str(n_embd), "--arch.n-head", str(n_head)]
    sft_dir, rm_dir = out / f"sft-{dtype}", out / f"reward-{dtype}"
    sft = run(["sft", *arch, *common, "--dtype", dtype, "--max-steps", str(size["sft_steps"]), "--batch-size",
               str(size["batch"]), "--gold-samples", "0", "--log-every", "1", "--out", str(sft_dir)])  # fmt: skip
    rows = [json.loads(x) for x in (sft_dir / "metrics.jsonl").read_text().splitlines()]
    tok_s = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    # The reward model only has to exist for PPO / GRPO to score with it: a few steps from the SFT weights.
    run(
        [
            "reward",
            "--init",
            str(sft_dir),
            *common,
            "--dtype",
            dtype,
            "--max-steps",
            "3",
            "--out",
            str(rm_dir),
        ]
    )
    rl = ["--sft", str(sft_dir), "--reward", str(rm_dir), *common, "--dtype", dtype, "--rollout-batch",
          str(size["batch"]), "--response-length", "32"]  # fmt: skip
    ppo = run(["ppo", *rl, "--episodes", str(size["ppo_episodes"]), "--out", str(out / f"ppo-{dtype}")])
    grpo = run(["grpo", *rl, "--episodes", str(size["grpo_episodes"]), "--out", str(out / f"grpo-{dtype}")])
    return {
        "sft_tokens_per_s": round(tok_s[-1], 1),
        "sft_peak_bytes": sft["peak_bytes"],
        "ppo_episodes_per_s": round(ppo["summary"]["episodes"] / ppo["summary"]["loop_seconds"], 2),
        "ppo_peak_bytes": ppo["peak_bytes"],
        "grpo_completions_per_s": round(grpo["summary"]["completions"] / grpo["summary"]["loop_seconds"], 2),
        "grpo_peak_bytes": grpo["peak_bytes"],
    }


def fsdp(device: str, out: Path) -> dict:
    """SFT and GRPO under torchrun --strategy fsdp: every GPU (bf16 mixed precision), or 2 CPU processes."""
    import torch

    size = SIZES[device]
    n_layer, n_embd, n_head = size["arch"]
    procs = torch.cuda.device_count() if device == "cuda" else 2
    dtype = "bf16" if device == "cuda" else "fp32"
    common = ["--device", device, "--no-progress", "--strategy", "fsdp", "--dtype", dtype]
    common += ["--threads", "1"] if device == "cpu" else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if device == "cpu" else None
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]

    def launch(argv: list[str], where: Path) -> dict:
        res = subprocess.run([*torchrun, "-m", "rlhf", *argv, "--out", str(where), "--overwrite"], capture_output=True,
                             text=True, env=env)  # fmt: skip
        if res.returncode != 0:
            raise SystemExit(
                f"gpu_check: torchrun rlhf {argv[0]} --strategy fsdp failed:\n{res.stderr[-3000:]}"
            )
        return json.loads((where / "summary.json").read_text())

    arch = ["--arch.n-layer", str(n_layer), "--arch.n-embd", str(n_embd), "--arch.n-head", str(n_head)]
    sft = launch(["sft", *arch, *common, "--max-steps", str(size["sft_steps"]), "--batch-size",
                  str(size["batch"] * procs), "--gold-samples", "0", "--log-every", "1"], out / "sft")  # fmt: skip
    rows = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    grpo = launch(["grpo", "--sft", str(out / "sft"), "--reward-fn", "gold", *common, "--rollout-batch",
                   str(size["batch"] * procs), "--response-length", "32", "--episodes",
                   str(size["grpo_episodes"] * procs)], out / "grpo")  # fmt: skip
    return {
        "processes": procs,
        "dtype": dtype,
        "sft_tokens_per_s": round([r["tokens_per_s"] for r in rows if "tokens_per_s" in r][-1], 1),
        "sft_param_bytes_per_process": sft["param_bytes_per_process"],
        "grpo_completions_per_s": round(grpo["completions"] / grpo["loop_seconds"], 2),
        "grpo_param_bytes_per_process": grpo["param_bytes_per_process"],
    }


def step(summary: dict, key: str, fn, *args, save=None) -> None:
    """summary[key] = fn(*args), or {"error": its last lines} when it fails (the other steps still run); then
    `save()`, so a run stopped part-way still leaves the figures it got."""
    try:
        summary[key] = fn(*args)
    except (SystemExit, Exception) as e:  # noqa: BLE001 - a GPU check reports every failure and goes on
        summary[key] = {"error": str(e)[-1500:]}
        print(f"gpu_check: {key} FAILED: {str(e)[-1500:]}", file=sys.stderr, flush=True)
    if save is not None:
        save()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    a = ap.parse_args()
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: --device cuda but PyTorch sees no CUDA GPU (use --device cpu to check the script)"
        )
    out = a.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    summary = {
        "device": a.device,
        "gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else None,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "arch": "x".join(map(str, SIZES[a.device]["arch"][:2])),
    }

    print(f"gpu_check: 1/4 tests/test_device.py on {a.device}", flush=True)
    env = {**os.environ, "RLHF_TEST_DEVICE": a.device}
    t = time.time()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(ROOT / "tests" /
                            "test_device.py")], cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    summary["tests"] = {"passed": tests.returncode == 0, "seconds": round(time.time() - t, 1),
                        "result": next((x for x in tests.stdout.splitlines() if " passed" in x or " failed" in x), "")}  # fmt: skip
    if tests.returncode != 0:
        print(tests.stdout[-3000:] + tests.stderr[-2000:], file=sys.stderr)

    def save() -> None:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    save()
    print(f"gpu_check: 2/4 rlhf demo --device {a.device}", flush=True)

    def demo() -> dict:
        demo_args = ["demo", "--device", a.device, "--no-progress", "--out", str(out / "demo")]
        d = run(demo_args + (QUICK_DEMO + ["--threads", "1"] if a.device == "cpu" else []))
        s = d["summary"]
        return {"gold_sft": s["gold_sft"], "gold_policy": s["gold_ppo"], "gold_diff": s["gold_diff"],
                "gold_diff_ci95": s["gold_diff_ci95"], "kl": s["kl_ppo"], "seconds": d["wall_s"],
                "peak_bytes": d["peak_bytes"]}  # fmt: skip

    step(summary, "demo", demo, save=save)
    summary["throughput"] = {}
    # On the CPU bf16 autocast is 14x slower than fp32 and tests/test_device.py already trains in it: fp32 only.
    for dtype in ("fp32", "bf16") if a.device == "cuda" else ("fp32",):
        print(f"gpu_check: 3/4 SFT / PPO / GRPO throughput, {dtype}", flush=True)
        step(summary["throughput"], dtype, throughput, a.device, dtype, out / "throughput", save=save)
    print("gpu_check: 4/4 FSDP under torchrun (SFT, GRPO)", flush=True)
    step(summary, "fsdp", fsdp, a.device, out / "fsdp", save=save)
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    mib = 1 << 20
    print(f"\ngpu_check on {summary['gpu'] or 'cpu'} (torch {summary['torch']}, GPT {summary['arch']}):")
    print(f"  tests/test_device.py: {'passed' if summary['tests']['passed'] else 'FAILED'} "
          f"({summary['tests']['result']})")  # fmt: skip
    d = summary["demo"]
    if "error" in d:
        print("  demo: FAILED")
    else:
        print(
            f"  demo: gold {d['gold_sft']:+.3f} -> {d['gold_policy']:+.3f}, gain {d['gold_diff']:+.3f} CI "
            f"{d['gold_diff_ci95']}, KL {d['kl']:.3f}, {d['seconds']:.0f} s, peak {d['peak_bytes'] / mib:,.0f} MiB"
        )
    print(
        f"  {'dtype':<6}{'SFT tok/s':>12}{'PPO eps/s':>12}{'GRPO compl/s':>14}{'peak MiB (sft/ppo/grpo)':>28}"
    )
    for dtype, f in summary["throughput"].items():
        if "error" in f:
            print(f"  {dtype:<6}FAILED")
            continue
        peaks = "/".join(
            f"{f[k] / mib:,.0f}" for k in ("sft_peak_bytes", "ppo_peak_bytes", "grpo_peak_bytes")
        )
        print(f"  {dtype:<6}{f['sft_tokens_per_s']:>12,.0f}{f['ppo_episodes_per_s']:>12.2f}"
              f"{f['grpo_completions_per_s']:>14.2f}{peaks:>28}")  # fmt: skip
    f = summary["fsdp"]
    if "error" in f:
        print("  fsdp: FAILED")
    else:
        print(f"  fsdp ({f['processes']} processes, {f['dtype']}): SFT {f['sft_tokens_per_s']:,.0f} tok/s, GRPO "
              f"{f['grpo_completions_per_s']:.2f} compl/s, parameters per process "
              f"{f['sft_param_bytes_per_process'] / mib:,.1f} MiB")  # fmt: skip
    print(f"summary: {out / 'summary.json'} ({summary['seconds']:.0f} s)")
    failed = [k for k in ("demo", "fsdp") if "error" in summary[k]]
    failed += [f"throughput {k}" for k, v in summary["throughput"].items() if "error" in v]
    if failed or not summary["tests"]["passed"]:
        print(f"gpu_check: FAILED: {', '.join(failed + ([] if summary['tests']['passed'] else ['tests']))}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
