"""Stage 2: the reward model. Bradley-Terry loss on preference pairs; accuracy and calibration on held-out pairs.

train_reward(cfg): 1 set-up -> 2 data -> 3 model -> 4 optimizer -> 5 resume -> 6 loop -> 7 evaluation ->
8 reward normalisation -> 9 save. `run_reward_eval(cfg)` re-scores any checkpoint on any pairs file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.checkpoint import write_json
from rlhf.config import RewardConfig, RewardEvalConfig
from rlhf.data.collate import (
    Encoded,
    encode_prompt_response,
    length_bucketed_batches,
    pack_pairs,
    pad,
    shared_prefix_length,
)
from rlhf.data.loader import load_pairs
from rlhf.data.tokenizer import ByteTokenizer, Tokenizer
from rlhf.distributed import all_reduce_sum, device, is_main, no_sync, shard, share, world, wrap_ddp
from rlhf.errors import UserError
from rlhf.metrics import MetricsWriter
from rlhf.models.build import (
    disable_dropout,
    gpt_backbone_spec,
    load_policy,
    load_scalar,
    save_checkpoint,
    save_tokenizer,
)
from rlhf.models.gpt import GPT
from rlhf.models.heads import ScalarModel
from rlhf.models.lora import merge_lora
from rlhf.rl import bradley_terry_loss, center_rewards_loss, expected_calibration_error, reliability_table
from rlhf.stages.common import (
    adapt_for_training,
    autocast,
    clip_grads,
    config_dict,
    lr_factor,
    make_optimizer,
    progress,
    restore_training_state,
    save_training_state,
    say,
    set_lr,
    setup_run,
)
from rlhf.tasks import get_task


@dataclass
class EncodedPair:
    chosen: Encoded
    rejected: Encoded
    margin: float | None
    gold_agrees: bool | None = (
        None  # built-in task: does the gold judge prefer `chosen`? (None for user data)
    )

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def load_pair_data(cfg, split_user_file: bool) -> tuple[list[dict], list[dict], object]:
    """(train pairs, held-out pairs, task or None) as dicts with prompt/chosen/rejected/margin[/gold_agrees]."""
    if cfg.data is None:
        t = cfg.task
        task = get_task(
            t.name, seed=cfg.seed, label_noise=t.label_noise, length_bias=t.length_bias, label_by=t.label_by
        )

        def pairs(split: str, n: int) -> list[dict]:
            return [
                {**p, "margin": None, "gold_agrees": p["gold_chosen"] > p["gold_rejected"]}
                for p in task.preference_pairs(n, split=split)
            ]

        return pairs("train", t.n_train if split_user_file else 0), pairs("test", t.n_eval), task
    rows = [
        {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "margin": p.margin}
        for p in load_pairs(cfg.data, cfg.keys.column_keys())
    ]
    if not split_user_file:
        return [], rows, None
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_eval = int(round(len(rows) * cfg.eval_fraction))
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]], None


def encode_pairs(
    tok: Tokenizer, rows: list[dict], max_length: int, use_margin: bool = True
) -> list[EncodedPair]:
    """Tokenise (prompt, chosen) and (prompt, rejected), EOS appended so the score is read at the EOS."""
    return [
        EncodedPair(
            encode_prompt_response(tok, r["prompt"], r["chosen"], max_length),
            encode_prompt_response(tok, r["prompt"], r["rejected"], max_length),
            r.get("margin") if use_margin else None,
            r.get("gold_agrees"),
        )
        for r in rows
    ]


def pair_batch(pairs: list[EncodedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed pairs `(ids, segments)` (B, T): the shared prompt once, then both responses
    (`ScalarModel.score_pairs` scores chosen and rejected in one forward pass)."""
    return pack_pairs([p.chosen.ids for p in pairs], [p.rejected.ids for p in pairs], pad_id)


def batch_lengths(model: ScalarModel, pairs: list[EncodedPair]) -> list[int]:
    """Each pair's share of a padded batch, for length bucketing: its packed row where the trunk reads packed
    pairs, else the longer of its two rows."""
    if model.reads_packed_pairs:
        return [len(p.chosen.ids) + len(p.rejected.ids) - shared_prefix_length(p.chosen.ids, p.rejected.ids)
                for p in pairs]  # fmt: skip
    return [max(len(p.chosen.ids), len(p.rejected.ids)) for p in pairs]


@torch.no_grad()
def score_pairs(model: ScalarModel, tok: Tokenizer, pairs: list[EncodedPair], batch_size: int = 32):
    """(chosen scores, rejected scores), each (N,), in the order of `pairs`."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        ids, segments = pair_batch(chunk, tok.pad_id)
        c, r = model.score_pairs(ids.to(dev), segments.to(dev), tok.pad_id)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    model.train(was)
    return torch.cat(chosen), torch.cat(rejected)


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, n_bins: int = 10) -> dict:
    """Accuracy, mean margin, reward statistics and calibration of sigma(r+ - r-) as P(chosen preferred).

    Calibration is measured on both orderings of each pair (p and 1-p, outcome 1 and 0), so the reliability
    table covers [0, 1] symmetrically instead of only the half above 0.5.
    """
    d = chosen - rejected
    p = torch.sigmoid(d)
    probs = torch.cat([p, 1 - p])
    outcomes = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    both = torch.cat([chosen, rejected])
    return {
        "n_pairs": len(d),
        "accuracy": float((d > 0).float().mean()),
        "margin": float(d.mean()),
        "reward_chosen": float(chosen.mean()),
        "reward_rejected": float(rejected.mean()),
        "reward_mean": float(both.mean()),
        "reward_std": float(both.std()) if len(both) > 1 else 0.0,
        "ece": expected_calibration_error(probs, outcomes, n_bins),
        "reliability": reliability_table(probs, outcomes, n_bins),
    }


def evaluate(model, tok, pairs: list[EncodedPair], batch_size: int, n_bins: int) -> dict:
    """pair_metrics on `pairs`, plus agreement with the gold judge where the pairs know it (built-in task)."""
    c, r = score_pairs(model, tok, pairs, batch_size)
    out = pair_metrics(c, r, n_bins)
    out["n_truncated"] = sum(p.truncated for p in pairs)
    gold = [(i, p.gold_agrees) for i, p in enumerate(pairs) if p.gold_agrees is not None]
    if gold:
        idx = torch.tensor([i for i, _ in gold])
        rm_prefers_chosen = (c[idx] > r[idx]).tolist()
        out["gold_agreement"] = sum(a == g for a, (_, g) in zip(rm_prefers_chosen, gold)) / len(gold)
    return out


def build_reward_model(cfg: RewardConfig) -> tuple[ScalarModel, Tokenizer, dict]:
    """(scalar model, tokenizer, backbone spec): built-in GPT (fresh or from --init) or a Hugging Face trunk."""
    if cfg.model == "gpt":
        if cfg.init is not None:
            trunk, tok, parent = load_policy(cfg.init)
            spec = parent["backbone"]
        else:
            tok = ByteTokenizer()
            cfg.arch.vocab_size = tok.vocab_size
            trunk, spec = GPT(cfg.arch), gpt_backbone_spec(cfg.arch)
    else:
        from rlhf.data.tokenizer import HFTokenizer
        from rlhf.models.hf import load_hf_trunk, resolve_model_path

        trunk, spec = load_hf_trunk(cfg.model)
        tok = HFTokenizer(str(resolve_model_path(cfg.model)))
    return disable_dropout(ScalarModel(trunk, pooling=cfg.pooling)), tok, spec


def reward_stats_on(model, tok, rows: list[dict], max_length: int, batch_size: int = 64) -> dict:
    """Mean/std of rewards on (prompt, response) rows: stored so PPO can normalise scores to mean 0, std 1."""
    enc = [encode_prompt_response(tok, r["prompt"], r["response"], max_length) for r in rows]
    scores = []
    dev = next(model.parameters()).device
    with torch.no_grad():
        model.eval()
        for i in range(0, len(enc), batch_size):
            ids, mask = pad([e.ids for e in enc[i : i + batch_size]], tok.pad_id)
            scores.append(model.score(ids.to(dev), mask.to(dev)).float().cpu())
    s = torch.cat(scores)
    return {"mean": float(s.mean()), "std": float(s.std()), "n": len(s)}


def train_reward(cfg: RewardConfig) -> dict:
    # 1. Set-up.
    out = setup_run(cfg)
    t0 = time.time()

    # 2. Data: pairs, tokenised with EOS appended; truncation counted, nothing dropped.
    model, tok, backbone = build_reward_model(cfg)
    lora = adapt_for_training(model.trunk, cfg)  # the head stays fully trained
    # Bradley-Terry sees only r+ - r-, so the head's bias gets a zero gradient - in floats, rounding noise, which
    # Adam would scale up into lr-sized random steps. Train it only when --center-rewards gives it a real gradient.
    model.head.bias.requires_grad_(cfg.center_rewards > 0)
    if backbone["type"] == "gpt":  # never longer than the (possibly --init) model can read
        cfg.max_length = min(cfg.max_length, backbone["arch"]["block_size"])
    train_rows, eval_rows, task = load_pair_data(cfg, split_user_file=True)
    if not train_rows:
        raise UserError(
            f"{cfg.data}: no training pairs left after holding out --eval-fraction {cfg.eval_fraction}"
        )
    train = encode_pairs(tok, train_rows, cfg.max_length, cfg.use_margin)
    held = encode_pairs(tok, eval_rows, cfg.max_length, cfg.use_margin)
    n_truncated = sum(p.truncated for p in train) + sum(p.truncated for p in held)
    say(
        f"reward: {len(train)} train / {len(held)} held-out pairs, {n_truncated} truncated at {cfg.max_length} tokens"
    )

    # 3-4. Model is built above (moved to this process's device); optimizer and schedule.
    model.to(device()).train()
    micro_per_epoch = max(1, -(-len(train) // cfg.batch_size))
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * micro_per_epoch / cfg.optim.grad_accum))
    opt = make_optimizer(model, cfg.optim)
    lengths = batch_lengths(model, train)
    orders: dict[int, list[list[int]]] = {}

    def micro_batch(index: int) -> list[EncodedPair]:
        """Length-bucketed batches; epoch e's order depends only on (seed, e), so resume is exact."""
        epoch, pos = divmod(index, micro_per_epoch)
        if epoch not in orders:
            orders[epoch] = length_bucketed_batches(
                lengths, cfg.batch_size, torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            )
        return [train[i] for i in orders[epoch][pos]]

    # 5. Resume.
    step = 0
    restored = restore_training_state(out, {"reward": model}, {"reward": opt}) if cfg.resume else None
    if restored is not None:
        step = restored[0]
        say(f"reward: resumed at step {step}")
    metrics = MetricsWriter(
        out / "metrics.jsonl", resume_step=step if restored is not None else None, tensorboard=cfg.tensorboard
    )

    # 6. Loop: chosen + rejected in one forward; BT loss (+ margin, smoothing, centering), mean over the step's pairs.
    #    Under torchrun every rank takes its pairs of each global micro-batch; DDP averages the gradients.
    train_model = wrap_ddp(model, method="score_pairs")
    bar = progress(total_steps, "reward", cfg.progress, initial=step)
    while step < total_steps:
        lr = cfg.optim.lr * lr_factor(step, total_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        set_lr(opt, lr)
        chunks = [micro_batch(step * cfg.optim.grad_accum + j) for j in range(cfg.optim.grad_accum)]
        n_pairs = sum(len(c) for c in chunks)
        loss_sum, correct, margin_sum = 0.0, 0, 0.0
        for j, chunk in enumerate(chunks):
            chunk, real = shard(chunk)  # this rank's pairs (all of them in one process)
            ids, segments = pair_batch(chunk, tok.pad_id)
            with no_sync(train_model, sync=j == len(chunks) - 1):  # one all-reduce per optimizer step
                with autocast(cfg.dtype, device()):
                    rc, rr = train_model(ids.to(device()), segments.to(device()), tok.pad_id)
                rc, rr = rc.float(), rr.float()
                margin = None
                if any(p.margin is not None for p in chunk):
                    margin = torch.tensor([p.margin or 0.0 for p in chunk], dtype=rc.dtype, device=rc.device)
                loss = bradley_terry_loss(rc, rr, margin, cfg.label_smoothing)
                if cfg.center_rewards > 0:
                    loss = loss + cfg.center_rewards * center_rewards_loss(rc, rr)
                # The loss is a mean over this chunk; weight by its share so the step's loss is a mean over all
                # pairs (x world(): DDP averages the ranks' gradients, which must add up instead).
                (loss * (len(chunk) * real * world()) / n_pairs).backward()
            loss_sum += float(loss.detach()) * len(chunk) * real
            correct += int((rc > rr).sum()) * real
            margin_sum += float((rc - rr).detach().sum()) * real
        grad_norm = clip_grads(model, cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        row = {}
        if step % cfg.log_every == 0 or step == total_steps:
            sums = torch.tensor([loss_sum, correct, margin_sum], dtype=torch.float64)
            loss_sum, correct, margin_sum = all_reduce_sum(sums).tolist()  # over all ranks' pairs
            row = {
                "loss": loss_sum / n_pairs,
                "accuracy": correct / n_pairs,
                "margin": margin_sum / n_pairs,
                "lr": lr,
                "grad_norm": grad_norm,
            }
        if held and is_main() and (step % cfg.eval_every == 0 or step == total_steps):
            ev = evaluate(model, tok, held, 2 * cfg.batch_size, cfg.n_bins)
            row.update({"eval/accuracy": ev["accuracy"], "eval/margin": ev["margin"], "eval/ece": ev["ece"]})
            bar.set_postfix(eval_acc=f"{ev['accuracy']:.3f}")
        if row:
            metrics.log(step, **row)
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps and is_main():
            save_training_state(out, step, {"reward": model}, {"reward": opt})
    bar.close()
    metrics.close()
    train_seconds = time.time() - t0
    if not is_main():  # rank 0 evaluates and saves; the other ranks wait for its summary
        return share(None)

    # 7. Evaluation on the held-out pairs.
    ev = evaluate(model, tok, held, 2 * cfg.batch_size, cfg.n_bins) if held else {}

    # 8. Reward normalisation statistics on the SFT distribution (built-in task: its demonstrations; user data:
    #    every training response), stored in config.json for PPO.
    if task is not None:
        norm_rows = task.sft_examples(512, split="train")
    else:
        norm_rows = [
            {"prompt": r["prompt"], "response": r[k]}
            for r in train_rows[:256]
            for k in ("chosen", "rejected")
        ]
    norm = reward_stats_on(model, tok, norm_rows, cfg.max_length)

    # 9. Save.
    config = {
        "kind": "scalar",
        "stage": "reward",
        "backbone": backbone,
        "tokenizer": save_tokenizer(tok, out),
        "pooling": cfg.pooling,
        "max_length": cfg.max_length,
        "reward_norm": norm,
        "parent": str(cfg.init) if cfg.init else (cfg.model if cfg.model != "gpt" else None),
        "step": step,
        "lora": lora,
        "run_config": config_dict(cfg),
    }
    save_checkpoint(out, merge_lora(model), config)  # adapters folded in: PPO reads plain weights
    summary = {
        **{k: v for k, v in ev.items() if k != "reliability"},
        "n_train": len(train),
        "n_truncated": n_truncated,
        "steps": step,
        "seconds": round(train_seconds, 2),
        "reward_norm": norm,
        "reliability": ev.get("reliability", []),
    }
    write_json(out / "summary.json", summary)
    _report(summary, out)
    return share(summary)


def run_reward_eval(cfg: RewardEvalConfig) -> dict:
    """`rlhf reward eval`: score a checkpoint on a pairs file (or the built-in task's held-out pairs)."""
    out = setup_run(cfg)
    model, tok, config = load_scalar(cfg.checkpoint)
    model.to(device())
    max_length = cfg.max_length or config.get("max_length", 256)
    _, rows, _ = load_pair_data(cfg, split_user_file=False)
    pairs = encode_pairs(tok, rows, max_length)
    summary = {"checkpoint": str(cfg.checkpoint), **evaluate(model, tok, pairs, cfg.batch_size, cfg.n_bins)}
    write_json(out / "summary.json", summary)
    _report(summary, out)
    return summary


def _report(s: dict, out: Path) -> None:
    if "accuracy" in s:
        gold = f" | gold agreement {s['gold_agreement']:.3f}" if "gold_agreement" in s else ""
        say(
            f"reward: accuracy {s['accuracy']:.3f} | margin {s['margin']:.3f} | ECE {s['ece']:.3f} | "
            f"{s['n_pairs']} pairs, {s['n_truncated']} truncated{gold}"
        )
    print(f"outputs: {out}/")
