"""Stage 2: the reward model. Bradley-Terry loss on preference pairs; accuracy and calibration on held-out pairs.

train_reward(cfg): 1 set-up -> 2 data -> 3 model -> 4 optimizer -> 5 resume -> 6 loop -> 7 evaluation ->
8 reward normalisation -> 9 save. `run_reward_eval(cfg)` re-scores any checkpoint on any pairs file.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rlhf.checkpoint import write_json
from rlhf.config import RewardConfig, RewardEvalConfig
from rlhf.data.collate import (
    encode_prompt_response,
    length_bucketed_batches,
    pad,
)
from rlhf.data.pairs import EncodedPair, batch_lengths, encode_pairs, load_pair_data, pair_batch
from rlhf.data.tokenizer import ByteTokenizer, Tokenizer
from rlhf.distributed import device, is_main, local_param_bytes, shard_model, share, unsharded
from rlhf.errors import UserError
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
    config_dict,
    make_optimizer,
    say,
    setup_run,
)
from rlhf.stages.train_loop import TrainLoop


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
            f"{', '.join(map(str, cfg.data))}: no training pairs left after holding out --eval-fraction "
            f"{cfg.eval_fraction}"
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
    # --strategy fsdp: before the optimizer (it replaces the parameters); --dtype bf16: bf16 compute, fp32 reduce
    model = shard_model(model, cfg.strategy, mixed_precision=cfg.dtype == "bf16")
    opt = make_optimizer(model, cfg.optim)
    lengths = batch_lengths(model.reads_packed_pairs, train)
    orders: dict[int, list[list[int]]] = {}

    def micro_batch(index: int) -> list[EncodedPair]:
        """Length-bucketed batches; epoch e's order depends only on (seed, e), so resume is exact."""
        epoch, pos = divmod(index, micro_per_epoch)
        if epoch not in orders:
            orders[epoch] = length_bucketed_batches(
                lengths, cfg.batch_size, torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            )
        return [train[i] for i in orders[epoch][pos]]

    def held_out(m) -> dict:
        ev = evaluate(m, tok, held, 2 * cfg.batch_size, cfg.n_bins) if held else {}
        return {f"eval/{k}": ev[k] for k in ("accuracy", "margin", "ece") if k in ev}

    # 5. Resume, metrics, checkpoints: the shared loop (stages/train_loop.py).
    loop = TrainLoop(
        "reward", cfg, out, model, opt, total_steps, micro_batch, held_out, ddp_method="score_pairs"
    )

    # 6. Loop: chosen + rejected in one forward; BT loss (+ margin, smoothing, centering), mean over the step's pairs.
    #    Under torchrun every rank takes its pairs of each global micro-batch; DDP averages the gradients.
    t_loop = time.time()
    for step in loop:
        step.total = sum(len(b) for b in step.batches)  # the step's pairs
        for chunk, real in step.shards():
            ids, segments = pair_batch(chunk, tok.pad_id)
            with autocast(cfg.dtype, device()):
                rc, rr = loop.train_model(ids.to(device()), segments.to(device()), tok.pad_id)
            rc, rr = rc.float(), rr.float()
            margin = None
            if any(p.margin is not None for p in chunk):
                margin = torch.tensor([p.margin or 0.0 for p in chunk], dtype=rc.dtype, device=rc.device)
            loss = bradley_terry_loss(rc, rr, margin, cfg.label_smoothing)
            if cfg.center_rewards > 0:
                loss = loss + cfg.center_rewards * center_rewards_loss(rc, rr)
            # The losses are means over this chunk: times its size, a sum over its pairs.
            step.backward(
                loss * len(chunk),
                real,
                loss=float(loss.detach()) * len(chunk),
                accuracy=int((rc > rr).sum()),
                margin=float((rc - rr).detach().sum()),
            )
    loop_seconds = time.time() - t_loop
    step = loop.step
    train_seconds = time.time() - t0
    param_bytes = local_param_bytes(model)  # this process's share (FSDP) or the whole model (DDP)
    model = unsharded(model)  # FSDP: the trained weights gathered into rank 0's copy
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
        "param_bytes_per_process": param_bytes,
        "steps": step,
        "seconds": round(train_seconds, 2),
        "loop_seconds": round(loop_seconds, 3),
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
