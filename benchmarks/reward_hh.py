"""Reward model on real HH-RLHF harmless pairs: `rlhf reward --model minilm` vs TRL's RewardTrainer, side by side.

    python benchmarks/reward_hh.py [--data ../shared/data/hh-rlhf-harmless/pairs.jsonl.gz] [--out runs/bench-reward-hh]
                                   [--trl-python ../.venv-trl/bin/python] [--trl-max-length N] [--skip-trl] [-- EXTRA RLHF REWARD FLAGS]

1. Resolve `rlhf reward --data DATA --model minilm [EXTRA]` exactly as the CLI does, and split DATA with the
   stage's own code (`load_pair_data`: seed, --eval-fraction). The two halves are written as HH-style JSONL
   (`{"chosen": prompt + chosen, "rejected": prompt + rejected}`: the original transcripts), so TRL trains on
   the very texts we train on (TRL's implicit-prompt format; it tokenises each whole transcript).
2. Run ours as the user would: the acceptance command `rlhf reward --data DATA --model minilm --out DIR`
   (+ EXTRA), which holds out the same pairs itself. Time = wall clock of the whole command.
3. Run TRL's peer script `bench_reward_hh.py --train --eval` with our resolved epochs, lr, max_length and
   batch size (its own interpreter, 2 threads), and parse its `RESULT reward_hh {...}` line.

Prints `reward_hh: ours acc=... ece=... time=...s | trl acc=... time=...s | ratio time=...` and a
`RESULT reward_hh_compare {...}` line; everything is also written to OUT/result.json. Run one benchmark at a time
on an otherwise idle machine: the load average is recorded before and after each side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl.gz"
DEFAULT_TRL_DIR = ROOT.parent / "shared" / "peers" / "trl"
DEFAULT_TRL_PYTHON = ROOT.parent / ".venv-trl" / "bin" / "python"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(
                json.dumps({"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]})
                + "\n"
            )


def trl_ties(rows: list[dict], max_length: int) -> list[bool]:
    """Per held-out pair: do chosen and rejected become identical under the TRL script's scoring?

    The peer script scores whole transcripts with right truncation at max_length: when both texts share their
    first max_length tokens it sees the same input twice, gives a tie, and counts the pair as wrong.
    """
    from rlhf.models.hf import _transformers, resolve_model_path

    tok = _transformers().AutoTokenizer.from_pretrained(str(resolve_model_path("minilm")))
    ids = lambda text: tok(text, truncation=True, max_length=max_length)["input_ids"]  # noqa: E731
    return [ids(r["prompt"] + r["chosen"]) == ids(r["prompt"] + r["rejected"]) for r in rows]


def ours_accuracy_on(checkpoint: Path, rows: list[dict], keep: list[bool]) -> float:
    """Our checkpoint's held-out accuracy on the pairs where `keep` is True (re-scored, same code as training)."""
    from rlhf.models.build import load_scalar
    from rlhf.stages.reward import encode_pairs, score_pairs

    model, tok, config = load_scalar(checkpoint)
    sub = [r for r, k in zip(rows, keep) if k]
    c, r = score_pairs(model, tok, encode_pairs(tok, sub, config["max_length"]))
    return float((c > r).float().mean())


def run_ours(data: Path, out: Path, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "rlhf",
        "reward",
        "--data",
        str(data),
        "--model",
        "minilm",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]
    print("ours:", " ".join(cmd), flush=True)
    before, t0 = load(), time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    threads = json.loads((out / "config.json").read_text())["run_config"]["threads"]
    return {
        "eval_accuracy": s["accuracy"],
        "ece": s["ece"],
        "eval_pairs": s["n_pairs"],
        "pairs_trained": s["n_train"],
        "n_truncated": s["n_truncated"],
        "wall_seconds": wall,
        "train_seconds": s["seconds"],
        "steps": s["steps"],
        "threads": threads,
        "load_before": before,
        "load_after": load(),
    }


def run_trl(python: Path, script: Path, train: Path, held: Path, cfg, max_length: int) -> dict:
    cmd = [
        str(python),
        str(script),
        "--train",
        str(train),
        "--eval",
        str(held),
        "--epochs",
        str(cfg.epochs),
        "--lr",
        str(cfg.optim.lr),
        "--max-length",
        str(max_length),
        "--batch-size",
        str(cfg.batch_size),
        "--seed",
        str(cfg.seed),
    ]
    print("trl:", " ".join(cmd), flush=True)
    before = load()
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT reward_hh ")]
    if p.returncode != 0 or not lines:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"TRL run failed (exit {p.returncode})")
    return {**json.loads(lines[-1].split(" ", 2)[2]), "load_before": before, "load_after": load()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-reward-hh")
    ap.add_argument("--trl-python", type=Path, default=Path(os.environ.get("TRL_PYTHON", DEFAULT_TRL_PYTHON)))
    ap.add_argument("--trl-script", type=Path, default=DEFAULT_TRL_DIR / "bench_reward_hh.py")
    ap.add_argument("--trl-max-length", type=int, default=0, help="TRL's max_length (0 = ours, resolved)")
    ap.add_argument("--skip-trl", action="store_true", help="only run ours")
    ap.add_argument("--skip-ours", action="store_true", help="only run TRL (on the same split)")
    ap.add_argument(
        "extra", nargs="*", help="extra `rlhf reward` flags, after `--` (TRL gets the resolved values)"
    )
    a = ap.parse_args()

    from rlhf.cli import parse
    from rlhf.stages.reward import load_pair_data

    a.out.mkdir(parents=True, exist_ok=True)
    rm_out = a.out / "ours"
    _, cfg = parse(["reward", "--data", str(a.data), "--model", "minilm", "--out", str(rm_out), *a.extra])
    train_rows, eval_rows, _ = load_pair_data(cfg, split_user_file=True)
    train_file, eval_file = a.out / "train.jsonl", a.out / "eval.jsonl"
    write_jsonl(train_file, train_rows)
    write_jsonl(eval_file, eval_rows)
    settings = {
        "epochs": cfg.epochs,
        "lr": cfg.optim.lr,
        "max_length": cfg.max_length,
        "batch_size": cfg.batch_size,
        "pooling": cfg.pooling,
        "seed": cfg.seed,
        "eval_fraction": cfg.eval_fraction,
    }
    print(f"split: {len(train_rows)} train / {len(eval_rows)} held-out pairs -> {train_file}, {eval_file}")
    print(f"resolved defaults: {settings} | load {load()}", flush=True)

    result = {
        "data": str(a.data),
        "n_train": len(train_rows),
        "n_eval": len(eval_rows),
        "settings": settings,
        "extra_flags": a.extra,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    previous = a.out / "result.json"
    if not a.skip_ours:
        result["ours"] = run_ours(a.data, rm_out, a.extra)
    elif previous.exists() and "ours" in json.loads(previous.read_text()):
        result["ours"] = {
            **json.loads(previous.read_text())["ours"],
            "reused": True,
        }  # same split, same flags
    if not a.skip_trl:
        trl_len = a.trl_max_length or cfg.max_length
        result["trl"] = run_trl(a.trl_python, a.trl_script, train_file, eval_file, cfg, trl_len)
        ties = trl_ties(eval_rows, trl_len)
        n_seen = len(ties) - sum(ties)
        result["trl"]["eval_pairs_tied_by_truncation"] = sum(ties)
        result["trl"]["eval_accuracy_untied"] = result["trl"]["eval_accuracy"] * len(ties) / max(1, n_seen)
        if (rm_out / "config.json").exists() and "ours" in result:
            result["ours"]["eval_accuracy_on_trl_untied"] = ours_accuracy_on(
                rm_out, eval_rows, [not t for t in ties]
            )
    (a.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")

    parts = []
    if "ours" in result:
        o = result["ours"]
        parts.append(
            f"ours acc={o['eval_accuracy']:.3f} ece={o['ece']:.3f} time={o['wall_seconds']:.0f}s "
            f"(train {o['train_seconds']:.0f}s, {o['pairs_trained']} pairs, "
            f"{o['pairs_trained'] * cfg.epochs / o['train_seconds']:.2f} pairs/s)"
        )
    if "trl" in result:
        t = result["trl"]
        parts.append(
            f"trl acc={t['eval_accuracy']:.3f} time={t['train_seconds']:.0f}s ({t['pairs_trained']} pairs kept, "
            f"{t['pairs_per_s']:.2f} pairs/s, max_length {t['max_length']})"
        )
    if "ours" in result and "trl" in result:
        parts.append(f"ratio time={result['ours']['wall_seconds'] / result['trl']['train_seconds']:.2f}")
        if "eval_accuracy_on_trl_untied" in result["ours"]:
            parts.append(
                f"on the {result['n_eval'] - result['trl']['eval_pairs_tied_by_truncation']} held-out pairs TRL "
                f"does not tie: ours {result['ours']['eval_accuracy_on_trl_untied']:.3f} "
                f"trl {result['trl']['eval_accuracy_untied']:.3f}"
            )
    print("reward_hh: " + " | ".join(parts))
    print("RESULT reward_hh_compare " + json.dumps(result))


if __name__ == "__main__":
    main()
