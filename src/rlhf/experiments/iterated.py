"""`rlhf experiment iterated`: iterated reward-model retraining on labelled policy samples ("adversarial examples").

Sub-runs: runs/sft (unless --sft); runs/reward-1 on the task's first pairs (runs/pairs-1.jsonl); then per round r:
runs/ppo-r (PPO from SFT against RM_r), runs/ppo-r-compare (held-out gold with its CI); the PPO and SFT policies
sampled on training prompts, each (policy sample, SFT sample) pair labelled by the task's own annotator
(`InstructTask.label`: the same noisy, biased rule as its generated pairs) and appended to the pairs; and, before
the next round, runs/reward-(r+1) retrained from the SFT checkpoint on the union (runs/pairs-(r+1).jsonl).

Every reward model starts from the SFT checkpoint, like the first one, rather than continuing the previous one:
each round's model then differs from the first only by the pairs it saw, so a change in agreement is the data's
doing, not extra optimisation steps (and an old model's blind spots are not carried forward in its weights).

Per round: RM_r's gold agreement on policy samples - on held-out prompts, pairs (policy_r sample, SFT sample)
whose gold scores differ, the share RM_r ranks as the gold judge does (and RM_(r+1)'s on the same pairs: the
patch); the policy's held-out gold with a 95% CI; proxy and KL.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from rlhf.config import IteratedConfig, TaskConfig
from rlhf.distributed import device
from rlhf.experiments.common import (
    GOLD,
    KL,
    PROXY,
    _plt,
    _save,
    begin,
    compare_run,
    finish,
    ppo_run,
    reward_run,
    sft_run,
    tail_mean,
    write_pairs,
)
from rlhf.models.build import load_policy, load_scalar
from rlhf.stages.common import generate_texts, say
from rlhf.stages.reward import encode_pairs, score_pairs
from rlhf.tasks import InstructTask

NAME = "iterated"
DESCRIPTION = (
    "Iterated reward-model retraining. Each round runs PPO from the SFT policy against the current reward model "
    "with a small KL coefficient, so the policy finds what the model over-rates; its samples on training prompts "
    "are paired with SFT samples, labelled by the task's own (noisy) annotator and added to the reward model's "
    "pairs, and the model is retrained from SFT on the union. Reported per round: how often the reward model "
    "ranks (policy sample, SFT sample) pairs of held-out prompts as the gold judge does, and the policy's "
    "held-out gold score."
)
TEMPERATURE = 0.7  # PPO's and `rlhf compare`'s sampling temperature


def label_pairs(
    task: InstructTask, prompts: list[str], policy: list[dict], sft: list[dict], rng: random.Random
) -> tuple[list[dict], dict[str, int]]:
    """(labelled pairs, {"identical": n, "empty": n} skipped): each (policy, SFT) pair of `generate_texts` rows
    ({text, finished}) labelled by `task.label`. Skipped: the same text twice (teaches nothing) and an empty
    response (an immediate EOS; the pairs loader refuses empty fields)."""
    rows, skipped = [], {"identical": 0, "empty": 0}
    for p, a, b in zip(prompts, policy, sft):
        if not a["text"].strip() or not b["text"].strip():
            skipped["empty"] += 1
            continue
        if a["text"] == b["text"]:
            skipped["identical"] += 1
            continue
        a_first = task.label(p, a["text"], b["text"], rng, a["finished"], b["finished"])
        chosen, rejected = (a, b) if a_first else (b, a)
        rows.append({"prompt": p, "chosen": chosen["text"], "rejected": rejected["text"]})
    return rows, skipped


def rm_agreement(rm_dir: Path, rows: list[dict], gold_prefers_chosen: list[bool]) -> float:
    """The share of `rows` (prompt/chosen/rejected) the reward model ranks as the gold judge does."""
    model, tok, config = load_scalar(rm_dir)
    model.to(device())
    c, r = score_pairs(model, tok, encode_pairs(tok, rows, config.get("max_length", 256)), 64)
    return float(((c > r) == torch.tensor(gold_prefers_chosen)).float().mean())


def gold_agreement(rm_dir: Path, pairs: list[dict]) -> tuple[float | None, int]:
    """(share of pairs the reward model ranks as the gold judge does, number of pairs), over `pairs` with
    prompt, policy/sft texts and their (finished-aware) gold scores; ties in gold are left out."""
    pairs = [p for p in pairs if p["gold_policy"] != p["gold_sft"]]
    if not pairs:
        return None, 0
    rows = [{"prompt": p["prompt"], "chosen": p["policy"], "rejected": p["sft"]} for p in pairs]
    return rm_agreement(rm_dir, rows, [p["gold_policy"] > p["gold_sft"] for p in pairs]), len(rows)


def task_pair_agreement(task: InstructTask, rm_dir: Path, n: int) -> float:
    """The reward model's gold agreement on the task's own held-out pairs (the distribution it started from)."""
    rows = task.preference_pairs(n, split="test")
    return rm_agreement(rm_dir, rows, [p["gold_chosen"] > p["gold_rejected"] for p in rows])


def sample_both(
    policy_dir: Path, sft_dir: Path, prompts: list[str], length: int, seed: int
) -> tuple[list, list]:
    """One response per prompt from the policy and from SFT (the same seed for both): lists of generate_texts rows."""
    out = []
    for d in (policy_dir, sft_dir):
        model, tok, config = load_policy(d)
        model.to(device())
        block = config["backbone"].get("arch", {}).get("block_size", 512)
        out.append(generate_texts(model, tok, prompts, length, block - length, TEMPERATURE, seed))
    return out[0], out[1]


def run(cfg: IteratedConfig) -> dict:
    ctx = begin(cfg, NAME)
    s = ctx.setting
    n_policy = cfg.policy_pairs or round(1.5 * s.rm_pairs)  # outweighing the first pairs: see the docs
    n_heldout = 4 * s.compare_prompts  # prompts of the agreement pairs: ~half have gold ties or equal texts
    sft = sft_run(ctx)
    # The annotator: the task's labeller (label noise, and the length bias when asked), seeded by --seed.
    task = InstructTask(seed=cfg.seed, length_bias=cfg.length_bias)
    rng = random.Random(f"iterated:{cfg.seed}:labels")
    pairs = task.preference_pairs(s.rm_pairs, split="train")
    heldout_prompts = task.prompts(n_heldout, split="test")
    train_prompts = InstructTask(seed=cfg.seed + 1).prompts(n_policy * cfg.rounds, split="train")

    def train_rm(r: int, rows: list[dict]) -> Path:
        data = write_pairs(ctx.runs / f"pairs-{r}.jsonl", rows)
        # Every RM from the SFT checkpoint, on a file (all rounds alike); its pairs are all for training.
        return reward_run(ctx, f"reward-{r}", sft, task=TaskConfig(), data=data, eval_fraction=0.0)[0]

    rm = train_rm(1, pairs)
    rounds, samples = [], {}
    for r in range(1, cfg.rounds + 1):
        # 1. PPO from SFT against RM_r (a fresh run each round).
        policy, rows = ppo_run(ctx, f"ppo-{r}", sft, rm, kl_coef=cfg.kl_coef)
        cmp = compare_run(ctx, f"ppo-{r}", sft, policy, rm)
        samples[f"round {r}"] = cmp["samples"][:6]
        # 2. RM_r's gold agreement on this policy's samples of held-out prompts (paired with SFT's).
        pol, ref = sample_both(policy, sft, heldout_prompts, s.response_length, cfg.seed + 7 * r)
        held = [
            {
                "prompt": p,
                "policy": a["text"],
                "sft": b["text"],
                "gold_policy": task.score(p, a["text"], a["finished"]),
                "gold_sft": task.score(p, b["text"], b["finished"]),
            }
            for p, a, b in zip(heldout_prompts, pol, ref)
        ]
        agree, n_agree = gold_agreement(rm, held)
        row = {
            "round": r,
            "rm_pairs": len(pairs),
            "rm_agreement_policy": agree,
            "agreement_pairs": n_agree,
            "rm_agreement_task_pairs": task_pair_agreement(task, rm, s.eval_pairs),
            "heldout_gold": cmp.get("gold_ppo"),
            "heldout_gold_sft": cmp.get("gold_sft"),
            "heldout_gold_diff_ci95": cmp.get("gold_diff_ci95"),
            "heldout_proxy": cmp["proxy_ppo"],
            "heldout_kl": cmp["kl_ppo"],
            "heldout_length": cmp["length_ppo"],
            "final_gold": tail_mean(rows, GOLD),
            "final_proxy": tail_mean(rows, PROXY),
            "final_kl": tail_mean(rows, KL),
        }
        say(f"round {r}: RM_{r} gold agreement on policy samples {agree} ({n_agree} pairs)")
        if r < cfg.rounds:
            # 3. Label (policy, SFT) pairs on fresh training prompts; add them; retrain from SFT -> RM_(r+1).
            prompts = train_prompts[(r - 1) * n_policy : r * n_policy]
            pol, ref = sample_both(policy, sft, prompts, s.response_length, cfg.seed + 7 * r + 1)
            new, skipped = label_pairs(task, prompts, pol, ref, rng)
            pairs = pairs + new
            row.update({"added_pairs": len(new), **{f"skipped_{k}": v for k, v in skipped.items()}})
            rm = train_rm(r + 1, pairs)
            # The patch: the retrained model on the same held-out pairs this round's model was measured on.
            row["next_rm_agreement_policy"] = gold_agreement(rm, held)[0]
        rounds.append(row)
    write_rounds(ctx.out / "metrics" / "rounds.jsonl", rounds)

    first, last = rounds[0], rounds[-1]
    summary = {
        "runs": rounds,
        "length_bias": cfg.length_bias,
        "kl_coef": cfg.kl_coef,
        "policy_pairs_per_round": n_policy,
        "agreement_first": first["rm_agreement_policy"],
        "agreement_last": last["rm_agreement_policy"],
        "agreement_rises": (last["rm_agreement_policy"] or 0) > (first["rm_agreement_policy"] or 0),
        "heldout_gold_first": first["heldout_gold"],
        "heldout_gold_last": last["heldout_gold"],
        "samples": samples,
    }
    plots = make_plots(ctx.out / "plots", rounds)
    return finish(ctx, NAME, DESCRIPTION, summary, plots)


def write_rounds(path: Path, rounds: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rounds))


def make_plots(plots_dir: Path, rounds: list[dict]) -> dict[str, str]:
    """agreement.png and gold.png from the per-round rows; returns {file: caption}."""
    plt = _plt()
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(xs, [r["rm_agreement_policy"] for r in rounds], marker="o", label="RM_r on policy_r samples")
    nxt = [
        (r["round"], r["next_rm_agreement_policy"])
        for r in rounds
        if r.get("next_rm_agreement_policy") is not None
    ]
    if nxt:
        ax.plot([x for x, _ in nxt], [y for _, y in nxt], marker="s", linestyle="--",
                label="RM_(r+1) on the same samples (after retraining)")  # fmt: skip
    ax.plot(xs, [r["rm_agreement_task_pairs"] for r in rounds], marker=".", color="grey",
            label="RM_r on the task's held-out pairs")  # fmt: skip
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(xs)
    ax.set_xlabel("round r")
    ax.set_ylabel("gold agreement (share of pairs)")
    ax.set_title("RM vs gold on (policy, SFT) pairs of held-out prompts", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, plt, plots_dir / "agreement.png")

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    gold = [r["heldout_gold"] for r in rounds]
    lo = [r["heldout_gold"] - (r["heldout_gold_sft"] + r["heldout_gold_diff_ci95"][0]) for r in rounds]
    hi = [(r["heldout_gold_sft"] + r["heldout_gold_diff_ci95"][1]) - r["heldout_gold"] for r in rounds]
    ax.errorbar(xs, gold, yerr=[lo, hi], marker="o", capsize=4, label="PPO policy of round r (95% CI)")
    ax.plot(xs, [r["heldout_gold_sft"] for r in rounds], color="grey", linestyle="--", label="SFT")
    ax.set_xticks(xs)
    ax.set_xlabel("round r")
    ax.set_ylabel("mean gold score (held-out prompts)")
    ax.set_title("Held-out gold score of each round's policy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, plt, plots_dir / "gold.png")

    def fmt(key, f):
        return ", ".join(format(r[key], f) if r.get(key) is not None else "n/a" for r in rounds)

    return {
        "agreement.png": "Share of (policy sample, SFT sample) pairs on held-out prompts, gold scores differing, "
        f"that the round's reward model ranks as the gold judge does, per round ({fmt('rm_agreement_policy', '.3f')}"
        "); dashed: the next round's retrained model on the same pairs; grey: on the task's own held-out pairs.",
        "gold.png": f"Held-out gold score of each round's PPO policy ({fmt('heldout_gold', '+.3f')}), bars the "
        "95% bootstrap CI (SFT's score plus the CI of the PPO - SFT difference); dashed: SFT.",
    }
