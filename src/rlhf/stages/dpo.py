"""Offline preference optimisation (`rlhf dpo`): DPO, IPO, cDPO, robust DPO, hinge and SimPO on preference pairs.

train_dpo(cfg) reads top to bottom: 1 set-up -> 2 policy and reference -> 3 pairs -> 4 reference log-probs (once,
before training) -> 5 optimizer + the shared loop (resume, metrics, checkpoints) -> 6 loop -> 7 save.

Every loss reads the summed log-probability of each response given its prompt (`pair_logps`). On the built-in
GPT a pair is one packed row - the prompt once, then the chosen and the rejected response, each attending only to
the prompt and itself (`data.pairs.pair_batch`) - which gives exactly the log-probs of two separate rows
(tests/test_dpo.py); other models read the two rows.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from rlhf.checkpoint import write_json
from rlhf.config import DPOConfig
from rlhf.data.collate import length_bucketed_batches, unpack_pairs
from rlhf.data.pairs import EncodedPair, batch_lengths, encode_pairs, load_pair_data, pair_batch
from rlhf.distributed import device, is_main, local_param_bytes, shard_model, share, unsharded
from rlhf.errors import UserError
from rlhf.models.build import disable_dropout, load_policy, save_checkpoint, save_tokenizer
from rlhf.models.lora import AdapterDisabledReference, merge_lora
from rlhf.rl import dpo_loss, logprobs_from_logits, simpo_loss
from rlhf.stages.common import (
    adapt_for_training,
    autocast,
    config_dict,
    generate_texts,
    make_optimizer,
    say,
    setup_run,
)
from rlhf.stages.train_loop import TrainLoop

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected", "loss")  # fmt: skip


def reads_packed_pairs(model) -> bool:
    """The built-in GPT (LoRA or not, or the adapter-disabled reference around it) reads packed pair rows."""
    return bool(getattr(getattr(model, "model", model), "reads_packed_pairs", False))


def path_logps(
    logits: torch.Tensor, ids: torch.Tensor, length: torch.Tensor, prompt_len: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the response tokens' log-probs (R,), their count (R,)) of sequences laid out left to right.

    logits (R, T, V) at each position predict ids (R, T) one step later; a row's response is its tokens from
    `prompt_len` up to `length` (EOS included).
    """
    logps = logprobs_from_logits(logits[:, :-1], ids[:, 1:])  # (R, T-1): token t+1 given the tokens up to t
    t = torch.arange(1, ids.size(1), device=ids.device).unsqueeze(0)  # index of each target token
    response = (t >= prompt_len.unsqueeze(1)) & (t < length.unsqueeze(1))
    return torch.where(response, logps, torch.zeros_like(logps)).sum(1), response.sum(1)


def pair_logps(
    model: nn.Module, pairs: list[EncodedPair], pad_id: int, packed: bool
) -> tuple[torch.Tensor, ...]:
    """(chosen sums, rejected sums, chosen token counts, rejected token counts), each (B,), of the responses'
    log-probs under `model` (a causal LM, or the DDP wrapper around one)."""
    dev = device()
    ids, segments = (t.to(dev) for t in pair_batch(pairs, pad_id))
    chosen_len = torch.tensor([p.chosen.prompt_len for p in pairs], device=dev)
    rejected_len = torch.tensor([p.rejected.prompt_len for p in pairs], device=dev)
    if not packed:
        rows, mask = unpack_pairs(ids, segments, pad_id)  # (2B, T'): chosen rows, then rejected rows
        s, n = path_logps(model(rows, mask), rows, mask.sum(1), torch.cat([chosen_len, rejected_len]))
        B = len(pairs)
        return s[:B], s[B:], n[:B], n[B:]
    # Packed: the LM head reads only the positions that predict a response token, along each branch's path (the
    # prompt, then that branch): a (B, Kc + Kr, V) slice instead of the (B, T, V) logits of every position.
    T = ids.size(1)
    positions, targets, masks = [], [], []
    for branch, prompt_len in ((1, chosen_len), (2, rejected_len)):
        keep = (segments == 0) | (segments == branch)
        order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices  # the branch's path, in order
        n_response = keep.sum(1) - prompt_len  # (B,) response tokens, EOS included
        k = torch.arange(int(n_response.max()), device=dev).unsqueeze(0)
        at = (prompt_len.unsqueeze(1) - 1 + k).clamp(0, T - 2)  # path index predicting response token k
        positions.append(order.gather(1, at))
        targets.append(ids.gather(1, order.gather(1, at + 1)))
        masks.append(k < n_response.unsqueeze(1))
    logits = model(ids, None, positions=torch.cat(positions, 1), segments=segments)
    logps = logprobs_from_logits(logits, torch.cat(targets, 1))
    logps = torch.where(torch.cat(masks, 1), logps, torch.zeros_like(logps))
    kc = positions[0].size(1)
    return logps[:, :kc].sum(1), logps[:, kc:].sum(1), masks[0].sum(1), masks[1].sum(1)


def pair_losses(
    policy_out: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, torch.Tensor] | None, cfg: DPOConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """(per-pair losses (B,), summed TRL metrics) from the policy's (and the reference's) response log-probs."""
    pc, pr, nc, nr = policy_out
    if cfg.loss_type == "simpo":  # length-normalised log-probs, no reference
        c_avg, r_avg = pc / nc.clamp(min=1), pr / nr.clamp(min=1)
        losses = simpo_loss(c_avg, r_avg, cfg.beta, cfg.simpo_gamma)
        chosen_r, rejected_r = (cfg.beta * c_avg).detach(), (cfg.beta * r_avg).detach()
    else:
        losses, chosen_r, rejected_r = dpo_loss(
            pc, pr, ref[0], ref[1], cfg.beta, cfg.loss_type, cfg.label_smoothing
        )
    if cfg.rpo_alpha > 0:  # RPO: the chosen response's NLL per token
        losses = losses + cfg.rpo_alpha * (-pc / nc.clamp(min=1))
    stats = {
        "loss": float(losses.detach().sum()),
        "rewards/chosen": float(chosen_r.sum()),
        "rewards/rejected": float(rejected_r.sum()),
        "rewards/accuracies": float((chosen_r > rejected_r).float().sum()),
        "rewards/margins": float((chosen_r - rejected_r).sum()),
        "logps/chosen": float(pc.detach().sum()),
        "logps/rejected": float(pr.detach().sum()),
    }
    return losses, stats


@torch.inference_mode()
def reference_logps(ref, pairs: list[EncodedPair], pad_id: int, dtype: str, batch_size: int) -> torch.Tensor:
    """(N, 2) the reference's summed log-probs of (chosen, rejected) for every pair, in batches."""
    packed = reads_packed_pairs(ref)
    out = []
    for i in range(0, len(pairs), batch_size):
        with autocast(dtype, device()):
            c, r, _, _ = pair_logps(ref, pairs[i : i + batch_size], pad_id, packed)
        out.append(torch.stack([c.float(), r.float()], 1))
    return torch.cat(out) if out else torch.zeros(0, 2, device=device())


def train_dpo(cfg: DPOConfig) -> dict:
    # 1. Set-up.
    out = setup_run(cfg)
    dev = device()
    t0 = time.time()

    # 2. Policy from SFT (LoRA adapters when asked); the reference: a frozen SFT copy, the policy with its adapters
    #    off, or none (SimPO).
    policy, tok, sft_cfg = load_policy(cfg.sft)
    lora = adapt_for_training(policy, cfg)
    disable_dropout(policy).to(dev).train()
    ref = None
    if cfg.loss_type != "simpo":
        if lora is not None:
            ref = AdapterDisabledReference(policy)
        else:
            ref = disable_dropout(load_policy(cfg.sft)[0]).to(dev).eval().requires_grad_(False)
    packed = reads_packed_pairs(policy)

    # 3. Pairs (prompt, chosen, rejected) from --data or the built-in task; truncation counted, nothing dropped.
    block = sft_cfg["backbone"].get("arch", {}).get("block_size", 512)
    max_length = cfg.max_length or block
    if cfg.gold_samples and cfg.max_new_tokens > max_length - 2:
        raise UserError(
            f"--max-new-tokens {cfg.max_new_tokens} leaves no room for a prompt in --max-length {max_length} "
            "(the policy's block size when 0); lower it, or pass --gold-samples 0"
        )
    if max_length > block:
        raise UserError(f"--max-length {max_length} exceeds the policy's block size {block}")
    train_rows, eval_rows, task = load_pair_data(cfg, split_user_file=True)
    if not train_rows:
        raise UserError(
            f"{', '.join(map(str, cfg.data))}: no training pairs left after holding out --eval-fraction "
            f"{cfg.eval_fraction}"
        )
    train = encode_pairs(tok, train_rows, max_length, use_margin=False)
    held = encode_pairs(tok, eval_rows, max_length, use_margin=False)
    n_truncated = sum(p.truncated for p in train) + sum(p.truncated for p in held)
    # A pair whose responses are the same teaches nothing (its loss has no gradient): kept, counted, reported.
    n_identical = sum(p.chosen.ids == p.rejected.ids for p in train + held)
    say(
        f"dpo: {len(train)} train / {len(held)} held-out pairs, {n_truncated} truncated at {max_length} tokens, "
        f"{n_identical} with chosen == rejected | loss {cfg.loss_type}, beta {cfg.beta}"
    )

    # 4. Reference log-probs of every pair, once (--precompute-ref); then a frozen copy is no longer needed.
    ref_train = ref_held = None
    if ref is not None and cfg.precompute_ref:
        ref_train = reference_logps(ref, train, tok.pad_id, cfg.dtype, 2 * cfg.batch_size)
        ref_held = reference_logps(ref, held, tok.pad_id, cfg.dtype, 2 * cfg.batch_size)
        if lora is None:
            ref = None

    def reference(
        pairs: list[EncodedPair], index: list[int], table
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if cfg.loss_type == "simpo":
            return None
        if table is not None:
            rows = table[torch.tensor(index, device=table.device)]
            return rows[:, 0], rows[:, 1]
        with torch.no_grad(), autocast(cfg.dtype, dev):
            c, r, _, _ = pair_logps(ref, pairs, tok.pad_id, reads_packed_pairs(ref))
        return c.float(), r.float()

    # 5. Optimizer; the shared loop (schedule, resume, metrics, checkpoints, progress).
    micro_per_epoch = max(1, -(-len(train) // cfg.batch_size))
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * micro_per_epoch / cfg.optim.grad_accum))
    # --strategy fsdp: before the optimizer (it replaces the parameters); --dtype bf16: bf16 compute, fp32 reduce
    policy = shard_model(policy, cfg.strategy, mixed_precision=cfg.dtype == "bf16")
    opt = make_optimizer(policy, cfg.optim)
    lengths = batch_lengths(packed, train)
    orders: dict[int, list[list[int]]] = {}

    def micro_batch(index: int) -> list[int]:
        """Pair indices of the index-th micro-batch: length-bucketed, epoch e's order seeded by (seed, e)."""
        epoch, pos = divmod(index, micro_per_epoch)
        if epoch not in orders:
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            orders[epoch] = length_bucketed_batches(lengths, cfg.batch_size, gen)
        return orders[epoch][pos]

    gold_prompts = (
        task.prompts(cfg.gold_samples, split="test") if task is not None and cfg.gold_samples else []
    )

    def gold_score(m) -> float:
        res = generate_texts(m, tok, gold_prompts, cfg.max_new_tokens, max_length - cfg.max_new_tokens,
                             cfg.temperature, cfg.seed)  # fmt: skip
        return sum(task.score(p, r["text"], r["finished"]) for p, r in zip(gold_prompts, res)) / len(res)

    @torch.no_grad()
    def evaluate(m) -> dict:
        row = {}
        if held:
            was = m.training
            m.eval()
            sums: dict[str, float] = {}
            for i in range(0, len(held), 2 * cfg.batch_size):
                chunk = held[i : i + 2 * cfg.batch_size]
                with autocast(cfg.dtype, dev):
                    out_p = pair_logps(m, chunk, tok.pad_id, packed)
                _, stats = pair_losses(
                    tuple(t.float() for t in out_p),
                    reference(chunk, list(range(i, i + len(chunk))), ref_held),
                    cfg,
                )
                sums = {k: sums.get(k, 0.0) + v for k, v in stats.items()}
            m.train(was)
            row = {f"eval/{k}": v / len(held) for k, v in sums.items()}
        if gold_prompts:
            row["gold/score"] = gold_score(m)
        return row

    loop = TrainLoop("dpo", cfg, out, policy, opt, total_steps, micro_batch, evaluate, state_name="policy")
    whole = unsharded(policy) if gold_prompts and not loop.resumed else None  # FSDP: every rank takes part
    gold_before = gold_score(whole) if gold_prompts and not loop.resumed and is_main() else None

    # 6. Loop: the policy's response log-probs (one packed row per pair on the built-in GPT), the reference's from
    #    the table, the loss of --loss-type; sums over the step's pairs (every process's), as the shared loop wants.
    t_loop = time.time()
    for step in loop:
        step.total = sum(len(b) for b in step.batches)  # the step's pairs
        for index, real in step.shards():
            pairs = [train[i] for i in index]
            with autocast(cfg.dtype, dev):
                out_p = pair_logps(loop.train_model, pairs, tok.pad_id, packed)
            losses, stats = pair_losses(
                tuple(t.float() for t in out_p), reference(pairs, index, ref_train), cfg
            )
            step.backward(losses.sum(), real, **stats)
    loop_seconds = time.time() - t_loop
    seconds = time.time() - t0
    param_bytes = local_param_bytes(policy)  # this process's share (FSDP) or the whole model (DDP)
    policy = unsharded(policy)  # FSDP: the trained weights gathered into rank 0's copy
    if not is_main():  # rank 0 evaluates and saves; the other ranks wait for its summary
        return share(None)

    # 7. Final evaluation and save (a normal policy checkpoint: sample, compare, export, RL can read it).
    final = evaluate(policy)
    config = {
        **sft_cfg,
        "stage": "dpo",
        "parent": str(cfg.sft),
        "step": loop.step,
        "tokenizer": save_tokenizer(tok, out),
        "lora": lora,
        "run_config": config_dict(cfg),
    }
    config.pop("rlhf_version", None)
    save_checkpoint(out, merge_lora(policy), config)
    summary = {
        "steps": loop.step,
        "n_train": len(train),
        "n_eval": len(held),
        "n_truncated": n_truncated,
        "param_bytes_per_process": param_bytes,
        "n_identical": n_identical,
        "loss_type": cfg.loss_type,
        "seconds": round(seconds, 2),
        "loop_seconds": round(loop_seconds, 3),
        "gold_before": gold_before,
        "gold_after": final.get("gold/score"),
        **{k: v for k, v in final.items() if k != "gold/score"},
    }
    write_json(out / "summary.json", summary)
    acc = summary.get("eval/rewards/accuracies")
    say(
        f"dpo: {loop.step} steps in {seconds:.1f}s | held-out reward accuracy "
        f"{'-' if acc is None else f'{acc:.3f}'} | gold {_fmt(gold_before)} -> {_fmt(summary['gold_after'])}"
    )
    print(f"outputs: {out}/")
    return share(summary)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:+.3f}"
