"""`rlhf compare`: the SFT policy and a trained policy (PPO, GRPO, RLOO, REINFORCE++, DPO) side by side.

Proxy reward (the learned reward model), gold score (the task's judge - the truth), the gold difference with a
95% bootstrap confidence interval over prompts, gold win rate, KL of the trained policy to the reference,
lengths, and a table of samples. Reads checkpoints only; trains nothing. The summary's keys say `ppo` for the
trained policy whatever trained it (experiments and reports read them); `policy_stage` names the stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf.checkpoint import write_json
from rlhf.config import CompareConfig
from rlhf.data.collate import encode_prompt, pad
from rlhf.data.loader import load_prompts
from rlhf.distributed import device, is_main, share
from rlhf.errors import UserError
from rlhf.generation import sample
from rlhf.models.build import load_policy
from rlhf.rollout import Completions, RewardModelSource, response_logprobs, right_align
from rlhf.stages.common import say, setup_run
from rlhf.tasks import get_task, task_options


def bootstrap_ci(diffs: torch.Tensor, n_boot: int, seed: int, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the mean of `diffs` (one value per prompt)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(diffs), (n_boot, len(diffs)), generator=gen)
    means = diffs[idx].mean(1)
    lo, hi = torch.quantile(
        means.double(), torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.double)
    )
    return [float(lo), float(hi)]


@torch.inference_mode()
def rollout_eval(
    policy,
    ref,
    proxy: RewardModelSource,
    tok,
    prompts: list[str],
    cfg: CompareConfig,
    seed: int,
    task,
):
    """Sample from `policy`; per sample: text, gold, proxy score, KL to `ref` (sum of k1 over tokens), length, and
    for an ensemble the members' disagreement (the std of their normalised scores, averaged over its batch).

    `proxy` is PPO's own reward-model scorer (normalised, unclipped here): it re-encodes the samples for a reward
    model with another vocabulary, and reduces an ensemble's K scores with --ensemble-reduce."""
    dev = next(policy.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    max_prompt = policy.cfg.block_size - cfg.response_length if hasattr(policy, "cfg") else 512
    if max_prompt < 2:  # bos + at least one prompt token must fit beside the response
        raise UserError(
            f"--response-length {cfg.response_length} leaves no room for a prompt in the policy's block size "
            f"{policy.cfg.block_size}; use at most {policy.cfg.block_size - 2}"
        )
    rows = []
    for start in range(0, len(prompts), 64):
        chunk = prompts[start : start + 64]
        p_ids, p_mask = pad([encode_prompt(tok, p, max_prompt)[0] for p in chunk], tok.pad_id, side="left")
        p_ids, p_mask = p_ids.to(dev), p_mask.to(dev)
        r = sample(
            policy, p_ids, p_mask, cfg.response_length, tok.eos_id, tok.pad_id, cfg.temperature, generator=gen
        )
        ids, mask, resp_pos = right_align(p_ids, p_mask, r.response_ids, r.response_mask, tok.pad_id)
        lp = response_logprobs(policy, ids, mask, resp_pos, cfg.temperature)
        lp_ref = response_logprobs(ref, ids, mask, resp_pos, cfg.temperature)
        kl = ((lp - lp_ref) * r.response_mask).sum(1)
        texts = [tok.decode(row[m].tolist()) for row, m in zip(r.response_ids, r.response_mask)]
        scores = proxy(Completions(ids, mask, chunk, texts, r.finished, {}))
        for j, p in enumerate(chunk):
            text = texts[j]
            fin = bool(r.finished[j])
            rows.append(
                {
                    "prompt": p,
                    "response": text,
                    "finished": fin,
                    "gold": task.score(p, text, fin) if task else None,
                    "proxy": float(scores[j]),
                    "ensemble_std": proxy.disagreement,
                    "kl": float(kl[j]),
                    "length": int(r.response_mask[j].sum()),
                }
            )
    return rows


def run_compare(cfg: CompareConfig) -> dict:
    out = setup_run(cfg)
    # Under torchrun (e.g. inside `rlhf demo`) rank 0 compares; the others wait for its summary.
    if not is_main():
        return share(None)
    sft, tok, _ = load_policy(cfg.sft)
    ppo, _, ppo_cfg = load_policy(cfg.policy)
    # The proxy as PPO scores it: each member normalised by its own statistics, an ensemble's K scores reduced
    # (one reward model: its normalised score). Unclipped, as compare always reported it.
    proxy = RewardModelSource(cfg.reward, tok, device(), True, 0.0, cfg.ensemble_reduce, cfg.ensemble_lambda)
    for m in (sft, ppo):
        m.to(device()).eval()
    task = get_task(cfg.task.name, seed=cfg.seed, **task_options(cfg.task))
    if cfg.prompts is None:
        prompts = task.prompts(cfg.n_prompts, split="test")
    else:
        k = cfg.keys
        prompts = load_prompts(cfg.prompts, k.column_keys(), k.split)[: cfg.n_prompts]
        task = None
    prompts_rep = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    # The same seed for both policies: differences come from the weights, not the dice.
    rows_sft = rollout_eval(sft, sft, proxy, tok, prompts_rep, cfg, cfg.seed + 1, task)
    rows_ppo = rollout_eval(ppo, sft, proxy, tok, prompts_rep, cfg, cfg.seed + 1, task)

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    summary = {
        "policy_stage": ppo_cfg.get("stage", "policy"),
        "n_prompts": len(prompts),
        "samples_per_prompt": cfg.samples_per_prompt,
        "temperature": cfg.temperature,
        "proxy_sft": mean(rows_sft, "proxy"),
        "proxy_ppo": mean(rows_ppo, "proxy"),
        "kl_ppo": mean(rows_ppo, "kl"),
        "length_sft": mean(rows_sft, "length"),
        "length_ppo": mean(rows_ppo, "length"),
        "eos_rate_sft": mean(rows_sft, "finished"),
        "eos_rate_ppo": mean(rows_ppo, "finished"),
    }
    if len(proxy.norms) > 1:  # an ensemble: its size, the reduction the proxy used, the members' disagreement
        summary["ensemble"] = {
            "size": len(proxy.norms),
            "reduce": cfg.ensemble_reduce,
            "lambda": cfg.ensemble_lambda,
            "std_sft": mean(rows_sft, "ensemble_std"),
            "std_ppo": mean(rows_ppo, "ensemble_std"),
        }
    if task is not None:
        g_sft = torch.tensor([r["gold"] for r in rows_sft]).view(len(prompts), -1).mean(1)
        g_ppo = torch.tensor([r["gold"] for r in rows_ppo]).view(len(prompts), -1).mean(1)
        diff = g_ppo - g_sft
        wins = sum(
            (a > b) + 0.5 * (a == b)
            for a, b in zip((r["gold"] for r in rows_ppo), (r["gold"] for r in rows_sft))
        )
        summary.update(
            {
                "gold_sft": float(g_sft.mean()),
                "gold_ppo": float(g_ppo.mean()),
                "gold_diff": float(diff.mean()),
                "gold_diff_ci95": bootstrap_ci(diff, cfg.bootstrap, cfg.seed),
                "gold_win_rate": float(wins) / len(rows_ppo),
            }
        )
        # The share of samples showing each annotator bias (tasks.judge.detect): a hack shows as a rising rate.
        for name, rows in (("sft", rows_sft), ("ppo", rows_ppo)):
            summary[f"hack_{name}"] = task.hack_rates(
                [r["prompt"] for r in rows], [r["response"] for r in rows]
            )
    train_summary = Path(cfg.policy) / "summary.json"
    if train_summary.exists():
        t = json.loads(train_summary.read_text())
        summary["kl_train"] = {k: t.get(f"kl_{k}") for k in ("initial", "final", "max")}
    summary["samples"] = [
        {
            "prompt": a["prompt"],
            "sft": a["response"],
            "ppo": b["response"],
            "gold_sft": a["gold"],
            "gold_ppo": b["gold"],
        }
        for a, b in zip(rows_sft[:: cfg.samples_per_prompt][:12], rows_ppo[:: cfg.samples_per_prompt][:12])
    ]
    write_json(out / "summary.json", summary)
    say(format_table(summary))
    print(f"outputs: {out}/summary.json")
    return share(summary)


def format_table(s: dict) -> str:
    name = s.get("policy_stage", "ppo").upper()
    lines = [f"{'':<18}{'SFT':>10}{name:>10}"]
    for row, a, b, fmt in [
        ("gold score", s.get("gold_sft"), s.get("gold_ppo"), "+.3f"),
        ("proxy reward", s["proxy_sft"], s["proxy_ppo"], "+.3f"),
        ("mean length", s["length_sft"], s["length_ppo"], ".1f"),
        ("EOS rate", s["eos_rate_sft"], s["eos_rate_ppo"], ".2f"),
    ]:
        if a is not None:
            lines.append(f"{row:<18}{format(a, fmt):>10}{format(b, fmt):>10}")
    for key, a in s.get("hack_sft", {}).items():  # hack/padded_rate -> "padded rate"
        b = s["hack_ppo"][key]
        if a or b:
            lines.append(f"{key.removeprefix('hack/').replace('_', ' '):<18}{a:>10.2f}{b:>10.2f}")
    if "gold_diff_ci95" in s:
        lo, hi = s["gold_diff_ci95"]
        lines.append(
            f"{'gold ' + name + '-SFT':<18}{s['gold_diff']:+.3f}  95% CI [{lo:+.3f}, {hi:+.3f}]  win rate {s['gold_win_rate']:.2f}"
        )
    lines.append(f"{'KL(' + name + ' || SFT)':<18}{s['kl_ppo']:.3f} nats per response")
    return "\n".join(lines)
