"""`rlhf experiment algorithms`: the bake-off. PPO, GRPO, RLOO, REINFORCE++, DPO and best-of-N from one SFT model
and one reward model, on one budget of sampled responses, over several seeds, each scored by the gold judge.

Budgets: every on-policy run samples `--budget` responses (PPO and REINFORCE++: one per prompt; GRPO and RLOO:
4 per prompt, so a quarter as many prompts, with the same responses per update). DPO trains on `--budget`
preference pairs, each two SFT samples of a training prompt labelled by the same reward model (the one the online
methods optimise, so every method sees the same proxy); its sampling and labelling time is part of its time.
Best-of-N draws N SFT samples per held-out prompt and keeps the one the reward model scores highest - measured on
one pool of `--pool` SFT samples per prompt (`rlhf.rl.best_of_n`), its KL exactly that of the pool's distribution.

Every trained policy is evaluated the same way: one sample per held-out prompt (the same prompts, the same
sampling seed, temperature 0.7), gold and proxy per sample, KL to the SFT policy (the sum over tokens of
log pi - log pi_SFT of the sampled response, `rlhf compare`'s estimate). Confidence intervals resample seeds, then
prompts within each seed (both sources of noise: which run training produced, and which prompts it was scored on).

Sub-runs: runs/sft, runs/reward (unless --sft / --reward), runs/<algorithm>-<strength>-seed<k> per run,
runs/dpo-pairs-seed<k>.jsonl. Per-prompt evaluation rows of every run: evals/<run>.jsonl.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from rlhf.config import AlgorithmsConfig, CompareConfig, DPOConfig, GRPOConfig, PPOConfig, RLOOConfig
from rlhf.distributed import device
from rlhf.eval.compare import rollout_eval
from rlhf.experiments.common import (
    Ctx,
    begin,
    ci_line_plot,
    export_metrics,
    finish,
    reward_run,
    sft_run,
    write_pairs,
)
from rlhf.models.build import load_policy
from rlhf.rl.best_of_n import best_of_n_kl, best_of_n_kl_bound, best_of_n_weights
from rlhf.rollout import RewardModelSource
from rlhf.stages.common import say
from rlhf.stages.dpo import train_dpo
from rlhf.stages.ppo import train_ppo
from rlhf.tasks import DETECTORS, get_task
from rlhf.tasks.judge import has_premise

NAME = "algorithms"
DESCRIPTION = (
    "The bake-off: PPO, GRPO, RLOO, REINFORCE++, DPO and best-of-N from one SFT model and one reward model, on the "
    "same budget of sampled responses (DPO: as many reward-model-labelled pairs), each at 2-3 KL strengths and "
    "several seeds, every policy scored by the gold judge on the same held-out prompts. The frontier (gold against "
    "sqrt KL to the SFT policy) says which algorithm buys the most true quality per nat of drift; best-of-N, which "
    "trains nothing, is the reference curve. One task and small models: a measurement, not a verdict."
)
# The on-policy algorithms: the command whose defaults each uses, and its completions per prompt.
ON_POLICY = {
    "ppo": (PPOConfig, {}),
    "grpo": (GRPOConfig, {}),
    "rloo": (RLOOConfig, {}),
    # REINFORCE++ is `rlhf ppo --advantage reinforce++ --value-model none` (docs/algorithms.md section 5).
    "reinforce++": (PPOConfig, {"advantage": "reinforce++", "value_model": "none"}),
}
EVAL_TEMPERATURE = 0.7  # PPO's rollout temperature; KL is measured between the two policies at it
KL_LIMIT = 1.0  # the ranking's "best gold at KL <= 1"
MAX_PAIR_ROUNDS = 4  # DPO's pair drawing: rounds of replacing skipped (identical / empty) pairs
# Per-run figures of one algorithm that the seed aggregation carries over (their mean over seeds).
EXTRA = ("pairs", "skipped_pairs", "sampled_pairs", "distinct_per_prompt")


def run(cfg: AlgorithmsConfig) -> dict:
    ctx = begin(cfg, NAME)
    s = ctx.setting
    budget = cfg.budget or s.episodes
    sft = sft_run(ctx)
    reward = Path(cfg.reward) if cfg.reward is not None else reward_run(ctx, "reward", sft)[0]
    task = get_task("instruct", seed=cfg.seed)
    prompts = task.prompts(s.compare_prompts, split="test")
    ev = Evaluator(ctx, sft, reward, prompts, task)

    records: list[dict] = []  # one per (algorithm, strength, seed)
    for k in range(cfg.seeds):
        seed = cfg.seed + k
        for algo in cfg.algorithms:
            if algo in ON_POLICY:
                for beta in cfg.kl_coefs:
                    records.append(on_policy_run(ctx, ev, algo, beta, seed, budget, sft, reward))
            elif algo == "dpo":
                records += dpo_runs(ctx, ev, cfg.dpo_betas, seed, budget, sft, reward)
            else:
                records += best_of_n_runs(ctx, ev, cfg, seed)

    runs = aggregate(records, ev.sft_gold, cfg)
    ranking = rank(runs)
    best_of_n_check = [
        {"n": r["strength"], "kl_measured": r["kl"], "kl_bound": best_of_n_kl_bound(int(r["strength"]))}
        for r in runs
        if r["algorithm"] == "best-of-n"
    ]
    summary = {
        "budget": budget,
        "seeds": cfg.seeds,
        "kl_coefs": cfg.kl_coefs,
        "dpo_betas": cfg.dpo_betas,
        "best_of": cfg.best_of,
        "pool": cfg.pool,
        "eval_prompts": len(prompts),
        "gold_sft": float(ev.sft_gold.mean()),
        "proxy_sft": ev.sft_summary["proxy"],
        "ranking": ranking,
        "best_of_n_kl": best_of_n_check,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
        "samples": {f"{r['run']}": r["_samples"] for r in runs if r.get("_samples")},
    }
    plots = make_plots(ctx, runs, summary)
    return finish(ctx, NAME, DESCRIPTION, summary, plots)


class Evaluator:
    """Scores policies on the held-out prompts: one sample each (same prompts, same seed), gold, proxy, KL to SFT,
    length and the hack detectors. Holds the SFT model (reference and best-of-N sampler) and the reward model."""

    def __init__(self, ctx: Ctx, sft: Path, reward: Path, prompts: list[str], task):
        self.ctx, self.prompts, self.task = ctx, prompts, task
        self.sft, self.tok, _ = load_policy(sft)
        self.sft.to(device()).eval()
        # The proxy as `rlhf compare` reports it: normalised by the reward model's own statistics, unclipped.
        self.proxy = RewardModelSource(reward, self.tok, device(), True, 0.0)
        self.cfg = CompareConfig(response_length=ctx.setting.response_length, temperature=EVAL_TEMPERATURE)
        self.seed = ctx.cfg.seed + 1
        sft_rows = self.rows(self.sft, "sft")
        self.sft_gold = torch.tensor([r["gold"] for r in sft_rows])
        self.sft_summary = summarise(sft_rows, task)

    def rows(self, policy, name: str) -> list[dict]:
        rows = rollout_eval(
            policy, self.sft, self.proxy, self.tok, self.prompts, self.cfg, self.seed, self.task
        )
        self.write(name, rows)
        return rows

    def sample(self, prompts: list[str], seed: int) -> list[dict]:
        """SFT samples of `prompts` (one each), with proxy and gold: DPO's pairs and best-of-N's pool."""
        return rollout_eval(self.sft, self.sft, self.proxy, self.tok, prompts, self.cfg, seed, self.task)

    def write(self, name: str, rows: list[dict]) -> None:
        path = self.ctx.out / "evals" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def summarise(rows: list[dict], task) -> dict:
    """Means over one evaluation's samples: gold, proxy, kl, length, EOS rate and the hack rates."""
    n = len(rows)
    out = {k: sum(r[k] for r in rows) / n for k in ("gold", "proxy", "kl", "length", "finished")}
    out["hack"] = task.hack_rates([r["prompt"] for r in rows], [r["response"] for r in rows])
    return out


def on_policy_run(
    ctx: Ctx, ev: Evaluator, algo: str, beta: float, seed: int, budget: int, sft, reward
) -> dict:
    """One PPO / GRPO / RLOO / REINFORCE++ run from SFT at KL coefficient `beta`, then its evaluation."""
    command, extra = ON_POLICY[algo]
    s = ctx.setting
    per_prompt = extra.get("samples_per_prompt", command.__dataclass_fields__["samples_per_prompt"].default)
    name = f"{algo}-{beta:g}-seed{seed}"
    say(f"== {algo}: kl_coef {beta:g}, seed {seed}")
    options = {
        "out": ctx.runs / name,
        "sft": sft,
        "reward": reward,
        # The same responses in all: --budget of them, the setting's count per update.
        "episodes": max(1, budget // per_prompt),
        "rollout_batch": max(1, s.rollout_batch // per_prompt),
        "response_length": s.response_length,
        "kl_coef": beta,
        "save_every": 0,
        "seed": seed,
        "threads": ctx.cfg.threads,
        "progress": ctx.cfg.progress,
        **extra,
    }
    if algo == "ppo":
        options["value_model"] = s.value_model
    cfg = command(**options)
    cfg.optim.lr = s.ppo_lr
    t0 = time.time()
    train_ppo(cfg)
    seconds = time.time() - t0
    export_metrics(ctx, name, cfg.out)
    policy, _, _ = load_policy(cfg.out)
    policy.to(device()).eval()
    return record(ev, algo, beta, seed, name, ev.rows(policy, name), seconds)


def dpo_runs(ctx: Ctx, ev: Evaluator, betas: list[float], seed: int, budget: int, sft, reward) -> list[dict]:
    """DPO at each beta on `budget` pairs: two SFT samples of a training prompt, the one the reward model scores
    higher chosen. A pair with the same text twice or an empty response teaches nothing: it is skipped (counted)
    and another prompt drawn in its place, so DPO trains on `budget` informative pairs (up to 4 rounds of
    drawing). The sampling and labelling time is added to every beta's training time."""
    say(f"== DPO pairs: {budget} x 2 SFT samples, labelled by the reward model, seed {seed}")
    t0 = time.time()
    task = get_task("instruct", seed=seed)
    pairs, skipped, drawn = [], 0, 0
    for round_ in range(MAX_PAIR_ROUNDS):
        need = budget - len(pairs)
        if need <= 0:
            break
        # The task's prompts extend (never reshuffle) as more are asked for: each round takes the next `need`.
        prompts = task.prompts(drawn + need, split="train")[drawn:]
        drawn += need
        rows = ev.sample([p for p in prompts for _ in range(2)], seed + 7919 * (round_ + 1))
        for a, b in zip(rows[::2], rows[1::2]):
            if a["response"] == b["response"] or not a["response"].strip() or not b["response"].strip():
                skipped += 1
                continue
            chosen, rejected = (a, b) if a["proxy"] >= b["proxy"] else (b, a)
            pairs.append(
                {"prompt": a["prompt"], "chosen": chosen["response"], "rejected": rejected["response"]}
            )
    path = write_pairs(ctx.runs / f"dpo-pairs-seed{seed}.jsonl", pairs)
    label_seconds = time.time() - t0
    out = []
    for beta in betas:
        name = f"dpo-{beta:g}-seed{seed}"
        say(f"== dpo: beta {beta:g}, seed {seed} ({len(pairs)} pairs, {skipped} skipped)")
        cfg = DPOConfig(
            out=ctx.runs / name,
            sft=sft,
            data=[path],
            beta=beta,
            eval_fraction=0.0,
            gold_samples=0,
            save_every=0,
            seed=seed,
            threads=ctx.cfg.threads,
            progress=ctx.cfg.progress,
        )
        cfg.optim.lr = ctx.setting.ppo_lr
        t1 = time.time()
        train_dpo(cfg)
        seconds = label_seconds + time.time() - t1
        export_metrics(ctx, name, cfg.out)
        policy, _, _ = load_policy(cfg.out)
        policy.to(device()).eval()
        r = record(ev, "dpo", beta, seed, name, ev.rows(policy, name), seconds)
        r["pairs"], r["skipped_pairs"], r["sampled_pairs"] = len(pairs), skipped, drawn
        out.append(r)
    return out


def best_of_n_runs(ctx: Ctx, ev: Evaluator, cfg: AlgorithmsConfig, seed: int) -> list[dict]:
    """Best-of-N for every N from one pool of `cfg.pool` SFT samples per held-out prompt: each N's expected gold,
    proxy, length and hack rates under its selection weights, and its KL to the pool's distribution (identical
    responses are one outcome: they tie). Time: the pool's sampling and scoring time x N / pool."""
    say(f"== best-of-N: {cfg.pool} SFT samples per held-out prompt, seed {seed}")
    m = cfg.pool
    t0 = time.time()
    pool = ev.sample([p for p in ev.prompts for _ in range(m)], seed + 104729)
    seconds = time.time() - t0
    ev.write(f"best-of-n-pool-seed{seed}", pool)
    out = []
    for n in cfg.best_of:
        per_prompt = []
        for i in range(len(ev.prompts)):
            group = pool[i * m : (i + 1) * m]
            # One reward per distinct text (a batch's padding can move a repeated text's score by ~1e-7).
            first = {}
            rewards = torch.tensor(
                [first.setdefault(r["response"], r["proxy"]) for r in group], dtype=torch.float64
            )
            w = best_of_n_weights(rewards, n)
            flags = [ev.task.detect(r["prompt"], r["response"]) for r in group]
            row = {
                "prompt": group[0]["prompt"],
                "gold": float(sum(wi * r["gold"] for wi, r in zip(w, group))),
                "proxy": float((w * rewards).sum()),
                "kl": best_of_n_kl(rewards, n),
                "length": float(sum(wi * r["length"] for wi, r in zip(w, group))),
                "finished": float(sum(wi * r["finished"] for wi, r in zip(w, group))),
                "hack": {d: float(sum(wi * f[d] for wi, f in zip(w, flags))) for d in DETECTORS},
                "distinct": len(first),
            }
            per_prompt.append(row)
        name = f"best-of-{n}-seed{seed}"
        rec = record(ev, "best-of-n", n, seed, name, per_prompt, seconds * n / m)
        rec["distinct_per_prompt"] = sum(r["distinct"] for r in per_prompt) / len(per_prompt)
        out.append(rec)
    return out


def record(ev: Evaluator, algo: str, strength: float, seed: int, name: str, rows: list[dict], seconds: float):
    """One run's figures (means over the held-out prompts) and its per-prompt gold, for the seed aggregation."""
    n = len(rows)
    if algo == "best-of-n":  # expectations already; hack rates per prompt
        hack = {f"hack/{d}_rate": sum(r["hack"][d] for r in rows) / n for d in DETECTORS}
        prem = [r for r in rows if has_premise(r["prompt"])]
        if prem:  # the sycophantic rate is over premise prompts only (judge.hack_rates)
            hack["hack/sycophantic_rate"] = sum(r["hack"]["sycophantic"] for r in prem) / len(prem)
        else:
            hack["hack/sycophantic_rate"] = 0.0
    else:
        hack = ev.task.hack_rates([r["prompt"] for r in rows], [r["response"] for r in rows])
    return {
        "algorithm": algo,
        "strength": strength,
        "seed": seed,
        "run": name,
        "gold": sum(r["gold"] for r in rows) / n,
        "proxy": sum(r["proxy"] for r in rows) / n,
        "kl": sum(r["kl"] for r in rows) / n,
        "length": sum(r["length"] for r in rows) / n,
        "eos_rate": sum(float(r["finished"]) for r in rows) / n,
        "seconds": seconds,
        "hack": hack,
        "_gold": torch.tensor([float(r["gold"]) for r in rows]),
        "_samples": [
            {"prompt": r["prompt"], "response": r["response"], "gold": r["gold"]}
            for r in rows[:4]
            if "response" in r
        ],
    }


def nested_bootstrap_ci(
    per_seed: list[torch.Tensor], n_boot: int, seed: int, level: float = 0.95
) -> list[float]:
    """Percentile interval of the mean over seeds of each seed's mean over prompts, resampling seeds and then the
    prompts within each drawn seed (a one-seed list resamples prompts only)."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.stack(per_seed).double()  # (S, P)
    s, p = table.shape
    pick_seed = torch.randint(0, s, (n_boot, s), generator=gen)
    pick_prompt = torch.randint(0, p, (n_boot, s, p), generator=gen)
    means = table[pick_seed.unsqueeze(-1), pick_prompt].mean((1, 2))
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.double)
    lo, hi = torch.quantile(means, q)
    return [float(lo), float(hi)]


def aggregate(records: list[dict], sft_gold: torch.Tensor, cfg: AlgorithmsConfig) -> list[dict]:
    """One row per (algorithm, strength): means over seeds, the gold CI and the gold-minus-SFT CI (seeds, then
    prompts), mean time."""
    keys = list(dict.fromkeys((r["algorithm"], r["strength"]) for r in records))
    out = []
    for algo, strength in keys:
        rs = [r for r in records if r["algorithm"] == algo and r["strength"] == strength]

        def mean(k, rs=rs):
            return sum(r[k] for r in rs) / len(rs)

        golds = [r["_gold"] for r in rs]
        label = {"best-of-n": f"best-of-{int(strength)}", "dpo": f"dpo beta={strength:g}"}.get(
            algo, f"{algo} kl={strength:g}"
        )
        row = {
            "algorithm": algo,
            "strength": strength,
            "run": label,
            "seeds": len(rs),
            "gold": mean("gold"),
            "gold_ci95": nested_bootstrap_ci(golds, cfg.bootstrap, cfg.seed),
            "gold_minus_sft_ci95": nested_bootstrap_ci(
                [g - sft_gold for g in golds], cfg.bootstrap, cfg.seed
            ),
            "gold_seed_sd": float(torch.tensor([r["gold"] for r in rs]).std()) if len(rs) > 1 else None,
            "proxy": mean("proxy"),
            "kl": mean("kl"),
            "sqrt_kl": math.sqrt(max(0.0, mean("kl"))),
            "length": mean("length"),
            "eos_rate": mean("eos_rate"),
            "seconds": mean("seconds"),
            "gold_gain_per_cpu_second": (mean("gold") - float(sft_gold.mean()))
            / max(1e-9, mean("seconds") * max(1, cfg.threads or torch.get_num_threads())),
            **{k: sum(r["hack"][k] for r in rs) / len(rs) for k in rs[0]["hack"]},
            **{k: sum(r[k] for r in rs) / len(rs) for k in EXTRA if k in rs[0]},
            "_samples": rs[0]["_samples"],
        }
        out.append(row)
    return out


def rank(runs: list[dict]) -> list[dict]:
    """Per algorithm: its best run at KL <= 1 (highest mean gold among its strengths whose mean KL is at most 1) and
    its best gold gain per CPU-second; ranked by the first (algorithms with no run inside the limit last)."""
    rows = []
    for algo in dict.fromkeys(r["algorithm"] for r in runs):
        mine = [r for r in runs if r["algorithm"] == algo]
        inside = [r for r in mine if r["kl"] <= KL_LIMIT]
        best = max(inside, key=lambda r: r["gold"]) if inside else None
        fastest = max(mine, key=lambda r: r["gold_gain_per_cpu_second"])
        rows.append(
            {
                "algorithm": algo,
                "best_run_kl_le_1": best["run"] if best else None,
                "gold_kl_le_1": best["gold"] if best else None,
                "gold_kl_le_1_ci95": best["gold_ci95"] if best else None,
                "kl": best["kl"] if best else None,
                "best_gold_any_kl": max(r["gold"] for r in mine),
                "gold_gain_per_cpu_second": fastest["gold_gain_per_cpu_second"],
                "fastest_run": fastest["run"],
            }
        )
    rows.sort(key=lambda r: -math.inf if r["gold_kl_le_1"] is None else r["gold_kl_le_1"], reverse=True)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    by_speed = sorted(rows, key=lambda r: r["gold_gain_per_cpu_second"], reverse=True)
    for i, r in enumerate(by_speed, 1):
        r["rank_per_cpu_second"] = i
    return rows


def _curves(runs: list[dict], x: str, y: str) -> dict[str, list[tuple[float, float, list[float] | None]]]:
    curves: dict[str, list] = {}
    for r in runs:
        ci = r["gold_ci95"] if y == "gold" else None
        curves.setdefault(r["algorithm"], []).append((r[x], r[y], ci))
    return {a: sorted(pts) for a, pts in curves.items()}


def make_plots(ctx: Ctx, runs: list[dict], summary: dict) -> dict[str, str]:
    plots = ctx.out / "plots"
    gold_sft = summary["gold_sft"]
    ci_line_plot(
        plots / "frontier.png",
        "Gold against sqrt KL (95% CI: seeds, then prompts)",
        "sqrt KL(policy || SFT), nats^0.5",
        "held-out gold score",
        _curves(runs, "sqrt_kl", "gold"),
        (gold_sft, "SFT"),
        dashed=("best-of-n",),
    )
    ci_line_plot(
        plots / "proxy.png",
        "Proxy reward against sqrt KL",
        "sqrt KL(policy || SFT), nats^0.5",
        "proxy (normalised reward-model score)",
        _curves(runs, "sqrt_kl", "proxy"),
        (summary["proxy_sft"], "SFT"),
        dashed=("best-of-n",),
    )
    ci_line_plot(
        plots / "gold_time.png",
        "Gold against wall-clock seconds",
        "seconds (training; best-of-N: sampling N per held-out prompt)",
        "held-out gold score",
        _curves(runs, "seconds", "gold"),
        (gold_sft, "SFT"),
        dashed=("best-of-n",),
    )
    top = summary["ranking"][0] if summary["ranking"] else None
    bon = [r for r in runs if r["algorithm"] == "best-of-n"]
    bon_text = (
        "best-of-N (dashed) runs from "
        + ", ".join(
            f"N={int(r['strength'])}: KL {r['kl']:.2f}, gold {r['gold']:+.3f}"
            for r in bon[:: max(1, len(bon) // 3)]
        )
        if bon
        else "no best-of-N run"
    )
    lead = (
        f"best at KL <= 1: {top['algorithm']} ({top['best_run_kl_le_1']}, gold {top['gold_kl_le_1']:+.3f})"
        if top and top["gold_kl_le_1"] is not None
        else "no run stayed within KL 1"
    )
    return {
        "frontier.png": f"Held-out gold against sqrt KL to the SFT policy, one curve per algorithm (points: its KL "
        f"strengths, seed means, 95% CI bars), SFT's gold dotted ({gold_sft:+.3f}); {lead}; {bon_text}.",
        "proxy.png": "The reward model's normalised score on the same samples against sqrt KL: where a curve rises "
        "and the frontier's does not, the proxy is being over-optimised.",
        "gold_time.png": "Held-out gold against wall-clock seconds per run (training, including DPO's pair sampling "
        "and labelling; best-of-N: sampling and scoring N responses per held-out prompt), seed means.",
    }
