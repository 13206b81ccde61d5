"""Stage 2: the reward model. Bradley-Terry loss on preference pairs; accuracy and calibration on held-out pairs.

train_reward(cfg): 1 set-up -> 2 data -> 3 model -> 4 optimizer -> 5 resume -> 6 loop -> 7 evaluation ->
8 reward normalisation -> 9 save. `run_reward_eval(cfg)` re-scores any checkpoint on any pairs file.

Ensembles (--ensemble K): `train_reward_ensemble` runs that recipe once per member, each into OUT/member-k/ on its
own bootstrap resample of the pairs with seed + k, then evaluates the ensemble and writes OUT/config.json naming the
members; with --ensemble-shared-trunk the recipe runs once with K heads, each head's loss weighted by its own
bootstrap counts of the pairs.
"""

from __future__ import annotations

import dataclasses
import json
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
    load_reward_ensemble,
    save_checkpoint,
    save_tokenizer,
)
from rlhf.models.gpt import GPT
from rlhf.models.heads import RewardEnsemble, ScalarModel
from rlhf.models.lora import merge_lora
from rlhf.rl import (
    bradley_terry_loss,
    center_rewards_loss,
    ensemble_std,
    expected_calibration_error,
    normalize_scores,
    reduce_ensemble,
    reliability_table,
)
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
    """(chosen scores, rejected scores), each (N,), in the order of `pairs`; (K, N) from a K-head model or a
    RewardEnsemble."""
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
    return torch.cat(chosen, -1), torch.cat(rejected, -1)


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
    return scored_metrics(c, r, pairs, n_bins)


def scored_metrics(c: torch.Tensor, r: torch.Tensor, pairs: list[EncodedPair], n_bins: int) -> dict:
    """`evaluate` from scores already computed: chosen `c` and rejected `r` (N,) of `pairs`."""
    out = pair_metrics(c, r, n_bins)
    out["n_truncated"] = sum(p.truncated for p in pairs)
    gold = [(i, p.gold_agrees) for i, p in enumerate(pairs) if p.gold_agrees is not None]
    if gold:
        idx = torch.tensor([i for i, _ in gold])
        rm_prefers_chosen = (c[idx] > r[idx]).tolist()
        out["gold_agreement"] = sum(a == g for a, (_, g) in zip(rm_prefers_chosen, gold)) / len(gold)
    return out


def ensemble_metrics(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    pairs: list[EncodedPair],
    norms: list[dict | None],
    how: str,
    lam: float,
    n_bins: int,
) -> dict:
    """An ensemble's metrics from its members' scores `chosen`, `rejected` (K, N) of `pairs`.

    The top-level figures are the ensemble's: each member's scores normalised with its own statistics (`norms`),
    then reduced (`reduce_ensemble`), as PPO scores completions - so its margin and ECE are in normalised units.
    `members`: each member's own metrics on its raw scores. `ensemble.disagreement`: the members' std of the
    normalised score of a response, averaged over every chosen and rejected response; `ensemble.split_pairs`: the
    share of pairs that the members do not all rank the same way."""
    members = [scored_metrics(c, r, pairs, n_bins) for c, r in zip(chosen, rejected)]

    def normalised(s: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                normalize_scores(x, n["mean"] if n else None, n["std"] if n else None, 0.0)
                for x, n in zip(s, norms)
            ]
        )

    nc, nr = normalised(chosen), normalised(rejected)
    out = scored_metrics(reduce_ensemble(nc, how, lam), reduce_ensemble(nr, how, lam), pairs, n_bins)
    prefers = (chosen > rejected).float().mean(0)  # (N,) share of members ranking chosen first
    out["members"] = [{k: v for k, v in m.items() if k != "reliability"} for m in members]
    out["ensemble"] = {
        "size": len(members),
        "reduce": how,
        "lambda": lam,
        "disagreement": float(ensemble_std(torch.cat([nc, nr], 1)).mean()),
        "split_pairs": float(((prefers > 0) & (prefers < 1)).float().mean()),
        "member_accuracy_mean": sum(m["accuracy"] for m in members) / len(members),
    }
    return out


def build_reward_model(cfg: RewardConfig) -> tuple[ScalarModel, Tokenizer, dict]:
    """(scalar model, tokenizer, backbone spec): built-in GPT (fresh or from --init) or a Hugging Face trunk; with
    --ensemble-shared-trunk, --ensemble heads on it."""
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
    heads = cfg.ensemble if cfg.ensemble_shared_trunk else 1
    return disable_dropout(ScalarModel(trunk, pooling=cfg.pooling, n_heads=heads)), tok, spec


def reward_stats_on(model, tok, rows: list[dict], max_length: int, batch_size: int = 64) -> dict | list[dict]:
    """Mean/std of rewards on (prompt, response) rows: stored so PPO can normalise scores to mean 0, std 1 (a K-head
    model: one per head)."""
    enc = [encode_prompt_response(tok, r["prompt"], r["response"], max_length) for r in rows]
    scores = []
    dev = next(model.parameters()).device
    with torch.no_grad():
        model.eval()
        for i in range(0, len(enc), batch_size):
            ids, mask = pad([e.ids for e in enc[i : i + batch_size]], tok.pad_id)
            scores.append(model.score(ids.to(dev), mask.to(dev)).float().cpu())
    s = torch.cat(scores, -1)
    if s.dim() == 2:
        return [{"mean": float(x.mean()), "std": float(x.std()), "n": len(x)} for x in s]
    return {"mean": float(s.mean()), "std": float(s.std()), "n": len(s)}


def bootstrap_indices(n: int, seed: int) -> list[int]:
    """A bootstrap resample of n items: n draws with replacement, seeded (each item is left out with p ~ 1/e)."""
    return torch.randint(n, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def bootstrap_weights(k: int, n: int, seed: int) -> torch.Tensor:
    """(k, n) Poisson(1) counts: k bootstrap resamples of n items as loss weights (the Poisson bootstrap; each
    count has mean 1, and an item is left out with p = 1/e as with draws with replacement)."""
    return torch.poisson(torch.ones(k, n), generator=torch.Generator().manual_seed(seed))


def train_reward(cfg: RewardConfig) -> dict:
    """`rlhf reward`: one reward model, K heads on a shared trunk, or K independent members (--ensemble K)."""
    if cfg.ensemble > 1 and not cfg.ensemble_shared_trunk:
        return train_reward_ensemble(cfg)
    return _train(cfg, setup_run(cfg))


def _train(cfg: RewardConfig, out: Path, data: tuple | None = None, resample: bool = False) -> dict:
    """The recipe below into `out`; `data` = load_pair_data's (train, held-out, task) when an ensemble shares it,
    `resample` = train on a bootstrap resample of the training pairs (an ensemble member, seeded by --seed)."""
    # 1. Set-up (setup_run is the caller's).
    t0 = time.time()
    K = cfg.ensemble if cfg.ensemble_shared_trunk else 1

    # 2. Data: pairs, tokenised with EOS appended; truncation counted, nothing dropped.
    model, tok, backbone = build_reward_model(cfg)
    lora = adapt_for_training(model.trunk, cfg)  # the head stays fully trained
    # Bradley-Terry sees only r+ - r-, so the head's bias gets a zero gradient - in floats, rounding noise, which
    # Adam would scale up into lr-sized random steps. Train it only when --center-rewards gives it a real gradient.
    model.head.bias.requires_grad_(cfg.center_rewards > 0)
    if backbone["type"] == "gpt":  # never longer than the (possibly --init) model can read
        cfg.max_length = min(cfg.max_length, backbone["arch"]["block_size"])
    train_rows, eval_rows, task = data if data is not None else load_pair_data(cfg, split_user_file=True)
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
    if resample:  # an independent ensemble member: its own bootstrap resample of the pairs
        train = [train[i] for i in bootstrap_indices(len(train), cfg.seed)]
    weights = None
    if K > 1:  # a shared trunk: each head's loss weights the pairs by its own bootstrap counts
        weights = bootstrap_weights(K, len(train), cfg.seed).to(device())
        row_of = {id(p): i for i, p in enumerate(train)}

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
        """Held-out metrics (K heads: the mean of the heads' own, before any normalisation statistics exist)."""
        if not held:
            return {}
        c, r = score_pairs(m, tok, held, 2 * cfg.batch_size)
        evs = [
            scored_metrics(c_, r_, held, cfg.n_bins)
            for c_, r_ in zip(c.view(-1, len(held)), r.view(-1, len(held)))
        ]
        return {f"eval/{k}": sum(ev[k] for ev in evs) / len(evs) for k in ("accuracy", "margin", "ece")}

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
            w = None if weights is None else weights[:, [row_of[id(p)] for p in chunk]]  # (K, b)
            loss = bradley_terry_loss(rc, rr, margin, cfg.label_smoothing, w)
            if cfg.center_rewards > 0:
                loss = loss + cfg.center_rewards * center_rewards_loss(rc, rr)
            # The losses are means over this chunk (and heads): times its size, a sum over its pairs.
            step.backward(
                loss * len(chunk),
                real,
                loss=float(loss.detach()) * len(chunk),
                accuracy=int((rc > rr).sum()) if K == 1 else float((rc > rr).float().mean(0).sum()),
                margin=float((rc - rr).detach().sum()) / K,
            )
    loop_seconds = time.time() - t_loop
    step = loop.step
    train_seconds = time.time() - t0
    param_bytes = local_param_bytes(model)  # this process's share (FSDP) or the whole model (DDP)
    model = unsharded(model)  # FSDP: the trained weights gathered into rank 0's copy
    if not is_main():  # rank 0 evaluates and saves; the other ranks wait for its summary
        return share(None)

    # 7. Evaluation on the held-out pairs (K heads: after step 8, whose statistics the ensemble's score needs).
    ev = evaluate(model, tok, held, 2 * cfg.batch_size, cfg.n_bins) if held and K == 1 else {}

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
    ensemble = None
    if K > 1:  # one statistic per head; the checkpoint's own reward_norm is head 0's (what load_scalar reads)
        ensemble = {"size": K, "shared_trunk": True, "reward_norm": norm}
        if held:
            c, r = score_pairs(model, tok, held, 2 * cfg.batch_size)
            ev = ensemble_metrics(c, r, held, norm, "mean", 1.0, cfg.n_bins)
        norm = norm[0]

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
    if ensemble is not None:
        config["ensemble"] = ensemble
    save_checkpoint(out, merge_lora(model), config)  # adapters folded in: PPO reads plain weights
    summary = {
        **{k: v for k, v in ev.items() if k != "reliability"},
        "n_train": len(train),
        "n_truncated": n_truncated,
        "param_bytes_per_process": param_bytes,
        "steps": step,
        "seconds": round(train_seconds, 2),
        "loop_seconds": round(loop_seconds, 3),
        "reward_norm": norm if ensemble is None else ensemble["reward_norm"],
        "reliability": ev.get("reliability", []),
    }
    write_json(out / "summary.json", summary)
    _report(summary, out)
    return share(summary)


def train_reward_ensemble(cfg: RewardConfig) -> dict:
    """--ensemble K independent members: `_train` once per member into OUT/member-k/ (seed + k, its own bootstrap
    resample of the same training pairs - every member holds out the same pairs), then the ensemble's evaluation
    and OUT/config.json naming the members. With --resume, finished members are kept and the next one resumes."""
    # 1. Set-up; the pairs are split once, so no member trains on another's held-out pairs.
    out = setup_run(cfg)
    t0 = time.time()
    data = load_pair_data(cfg, split_user_file=True)

    # 2. Members, one after another: each a normal reward checkpoint (every tool that reads one reads a member).
    names, summaries = [f"member-{k}" for k in range(cfg.ensemble)], []
    for k, name in enumerate(names):
        member = dataclasses.replace(
            cfg, out=out / name, seed=cfg.seed + k, ensemble=1, ensemble_shared_trunk=False
        )
        done = member.out / "summary.json"
        if cfg.resume and done.exists() and (member.out / "model.safetensors").exists():
            say(f"reward: {name} already trained, kept")
            summaries.append(json.loads(done.read_text()))
            continue
        say(
            f"reward: ensemble {name} of {cfg.ensemble} (seed {member.seed}, a bootstrap resample of the pairs)"
        )
        summaries.append(_train(member, setup_run(member), data, resample=True))
    if not is_main():
        return share(None)

    # 3. The ensemble on the held-out pairs: each member alone, the ensemble (mean of normalised scores), and the
    #    members' disagreement.
    members = [load_reward_ensemble(out / name) for name in names]
    first = json.loads((out / names[0] / "config.json").read_text())
    norms = [n[0] for _, _, _, n in members]
    ensemble = RewardEnsemble([m.members[0] for m, _, _, _ in members]).to(device())
    tok = members[0][1]
    held = encode_pairs(tok, data[1], first["max_length"], cfg.use_margin)
    ev = {}
    if held:
        c, r = score_pairs(ensemble, tok, held, 2 * cfg.batch_size)
        ev = ensemble_metrics(c, r, held, norms, "mean", 1.0, cfg.n_bins)

    # 4. Save: OUT/config.json names the members (its other keys are member 0's, which load_scalar reads).
    if "path" in first["tokenizer"]:  # a Hugging Face tokenizer stays in member 0's directory
        first["tokenizer"] = {**first["tokenizer"], "path": f"{names[0]}/{first['tokenizer']['path']}"}
    config = {
        **first,
        "reward_norm": norms[0],
        "run_config": config_dict(cfg),
        "ensemble": {"size": cfg.ensemble, "shared_trunk": False, "members": names, "reward_norm": norms},
    }
    write_json(out / "config.json", config)
    summary = {
        **{k: v for k, v in ev.items() if k != "reliability"},
        "n_train": summaries[0].get("n_train"),
        "n_truncated": summaries[0].get("n_truncated"),
        "steps": sum(s.get("steps") or 0 for s in summaries),
        "seconds": round(time.time() - t0, 2),
        "reward_norm": norms,
        "reliability": ev.get("reliability", []),
    }
    write_json(out / "summary.json", summary)
    _report(summary, out)
    return share(summary)


def run_reward_eval(cfg: RewardEvalConfig) -> dict:
    """`rlhf reward eval`: score a checkpoint on a pairs file (or the built-in task's held-out pairs)."""
    out = setup_run(cfg)
    model, tok, config, norms = load_reward_ensemble(cfg.checkpoint)  # a plain reward model: K = 1
    model.to(device())
    max_length = cfg.max_length or config.get("max_length", 256)
    _, rows, _ = load_pair_data(cfg, split_user_file=False)
    pairs = encode_pairs(tok, rows, max_length)
    c, r = score_pairs(model, tok, pairs, cfg.batch_size)  # (K, N)
    if model.size == 1:
        ev = scored_metrics(c[0], r[0], pairs, cfg.n_bins)
    else:
        ev = ensemble_metrics(c, r, pairs, norms, cfg.ensemble_reduce, cfg.ensemble_lambda, cfg.n_bins)
    summary = {"checkpoint": str(cfg.checkpoint), **ev}
    write_json(out / "summary.json", summary)
    _report(summary, out)
    return summary


def _report(s: dict, out: Path) -> None:
    for k, m in enumerate(s.get("members", [])):
        say(
            f"reward: member {k}: accuracy {m['accuracy']:.3f} | margin {m['margin']:.3f} | ECE {m['ece']:.3f}"
        )
    if "ensemble" in s:
        e = s["ensemble"]
        reduce = e["reduce"] + (f" (lambda {e['lambda']:g})" if e["reduce"] == "mean-minus-std" else "")
        say(
            f"reward: ensemble of {e['size']} ({reduce} of normalised scores); members disagree by std "
            f"{e['disagreement']:.3f} per response and split on {e['split_pairs']:.1%} of pairs"
        )
    if "accuracy" in s:
        gold = f" | gold agreement {s['gold_agreement']:.3f}" if "gold_agreement" in s else ""
        say(
            f"reward: {'ensemble ' if 'ensemble' in s else ''}accuracy {s['accuracy']:.3f} | margin {s['margin']:.3f} | ECE {s['ece']:.3f} | "
            f"{s['n_pairs']} pairs, {s['n_truncated']} truncated{gold}"
        )
    print(f"outputs: {out}/")
