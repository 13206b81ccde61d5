"""Stage 1: supervised fine-tuning. Next-token loss on response tokens only (prompt and padding masked).

train_sft(cfg) reads top to bottom: 1 set-up -> 2 model -> 3 data -> 4 optimizer -> 5 resume -> 6 loop
(accumulate, clip, step, log, evaluate, checkpoint) -> 7 final evaluation -> 8 save.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from rlhf.checkpoint import write_json
from rlhf.config import SFTConfig
from rlhf.data.collate import encode_prompt_response, length_bucketed_batches, sft_batch
from rlhf.data.loader import load_sft
from rlhf.data.tokenizer import ByteTokenizer
from rlhf.distributed import all_reduce_sum, device, is_main, no_sync, shard, share, world, wrap_ddp
from rlhf.errors import UserError
from rlhf.metrics import MetricsWriter
from rlhf.models.build import gpt_backbone_spec, load_policy, save_checkpoint, save_tokenizer
from rlhf.models.gpt import GPT
from rlhf.models.lora import merge_lora, trainable_params
from rlhf.stages.common import (
    adapt_for_training,
    autocast,
    clip_grads,
    config_dict,
    generate_texts,
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


def sft_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over response positions, and how many there were.

    logits (B, T, V) predict ids[:, t+1] at position t; loss_mask (B, T) marks positions whose target is a
    response token. Returning the *sum* lets the caller divide by the token count of the whole optimizer step,
    so gradient accumulation gives exactly the big-batch gradient.
    """
    targets = input_ids[:, 1:]  # (B, T-1)
    mask = loss_mask[:, :-1].bool()  # (B, T-1)
    nll = F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="sum")
    return nll, int(mask.sum())


def load_sft_data(cfg: SFTConfig):
    """(train examples, eval examples, task or None) as lists of (prompt, response)."""
    if cfg.data is None:
        task = get_task(
            cfg.task.name, seed=cfg.seed, label_noise=cfg.task.label_noise, length_bias=cfg.task.length_bias
        )
        train = [(e["prompt"], e["response"]) for e in task.sft_examples(cfg.task.n_train, split="train")]
        evals = [(e["prompt"], e["response"]) for e in task.sft_examples(cfg.task.n_eval, split="test")]
        return train, evals, task
    k = cfg.keys
    keys = k.column_keys()
    rows = [(e.prompt, e.response) for e in load_sft(cfg.data, keys)]
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(rows), generator=gen).tolist()
    n_eval = int(round(len(rows) * cfg.eval_fraction)) if len(rows) > 1 else 0
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]], None


@torch.no_grad()
def heldout_loss(model, batches) -> float:
    was = model.training
    model.eval()
    total, count = 0.0, 0
    dev = next(model.parameters()).device
    for b in batches:
        ids, loss_mask = b["input_ids"].to(dev), b["loss_mask"].to(dev)
        nll, n = sft_loss(model(ids), ids, loss_mask)
        total, count = total + float(nll), count + n
    model.train(was)
    return total / max(count, 1)


def gold_of_samples(model, tok, task, prompts, cfg: SFTConfig) -> dict:
    """Mean gold score, EOS rate and length of responses sampled at temperature 1 on held-out prompts."""
    res = generate_texts(
        model, tok, prompts, cfg.max_new_tokens, cfg.max_length - cfg.max_new_tokens, 1.0, cfg.seed
    )
    gold = [task.score(p, r["text"], r["finished"]) for p, r in zip(prompts, res)]
    return {
        "gold": sum(gold) / len(gold),
        "eos_rate": sum(r["finished"] for r in res) / len(res),
        "mean_length": sum(r["n_tokens"] for r in res) / len(res),
        "samples": [
            {"prompt": p, "response": r["text"], "gold": g} for p, r, g in zip(prompts[:8], res, gold)
        ],
    }


def shard_rows(batch: dict[str, torch.Tensor], dev: torch.device) -> tuple[dict[str, torch.Tensor], int]:
    """This process's rows of a global batch, trimmed to their longest sequence, on `dev`; and 1, or 0 for a
    stand-in row whose loss must count for nothing (fewer rows than processes; see `distributed.shard`)."""
    if world() == 1:
        return {k: v.to(dev) for k, v in batch.items()}, 1
    rows, real = shard(range(batch["input_ids"].size(0)))
    width = int(batch["attention_mask"][rows].sum(1).max())
    return {k: v[rows, :width].to(dev) for k, v in batch.items()}, int(real)


def train_sft(cfg: SFTConfig) -> dict:
    # 1. Set-up: seeds, threads, output directory; under torchrun, the process group and this rank's device.
    out = setup_run(cfg)
    dev = device()
    t0 = time.time()

    # 2. Model: a fresh GPT of --arch, --init's weights, or a Hugging Face causal LM (--model PATH); its
    #    tokenizer encodes the data. Then LoRA adapters / gradient checkpointing when asked.
    tok = ByteTokenizer()
    if cfg.init is not None and cfg.model != "gpt":
        raise UserError("--init and --model both name the starting weights; give one")
    if cfg.init is not None:
        model, tok, parent_cfg = load_policy(cfg.init)
        backbone = parent_cfg["backbone"]
    elif cfg.model != "gpt":
        from rlhf.models.hf import load_hf_policy

        model, tok, backbone = load_hf_policy(cfg.model)
    else:
        if cfg.lora_rank > 0:
            raise UserError(
                "--lora-rank adapts pretrained weights: give --init or --model (a fresh GPT is random)"
            )
        cfg.arch.vocab_size = tok.vocab_size
        model = GPT(cfg.arch)
        backbone = gpt_backbone_spec(cfg.arch)
    lora = adapt_for_training(model, cfg)
    model.to(dev).train()

    # 3. Data: tokenise with truncation (oldest prompt tokens first), counted - never dropped.
    train, evals, task = load_sft_data(cfg)
    enc_train = [encode_prompt_response(tok, p, r, cfg.max_length) for p, r in train]
    enc_eval = [encode_prompt_response(tok, p, r, cfg.max_length) for p, r in evals]
    n_truncated = sum(e.truncated for e in enc_train) + sum(e.truncated for e in enc_eval)
    eval_batches = [
        sft_batch(enc_eval[i : i + cfg.batch_size], tok.pad_id)
        for i in range(0, len(enc_eval), cfg.batch_size)
    ]
    say(f"sft: {len(enc_train)} train / {len(enc_eval)} held-out examples, {n_truncated} truncated")

    # 4. Optimizer and schedule: the number of optimizer steps follows from epochs (or --max-steps).
    micro_per_epoch = max(1, -(-len(enc_train) // cfg.batch_size))
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * micro_per_epoch / cfg.optim.grad_accum))
    opt = make_optimizer(model, cfg.optim)
    lengths = [len(e.ids) for e in enc_train]

    orders: dict[int, list[list[int]]] = {}

    def micro_batch(index: int):
        """The index-th micro-batch of the run: epoch e's order depends only on (seed, e), so resume is exact."""
        epoch, pos = divmod(index, micro_per_epoch)
        if epoch not in orders:
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            orders[epoch] = length_bucketed_batches(lengths, cfg.batch_size, gen)
        return sft_batch([enc_train[i] for i in orders[epoch][pos]], tok.pad_id)

    # 5. Resume: weights, optimizer, RNG states and the data position from the newest resume checkpoint.
    step = 0
    restored = restore_training_state(out, {"policy": model}, {"policy": opt}) if cfg.resume else None
    if restored is not None:
        step = restored[0]
        say(f"sft: resumed at step {step}")
    metrics = MetricsWriter(
        out / "metrics.jsonl", resume_step=step if restored is not None else None, tensorboard=cfg.tensorboard
    )

    first = step == 0 and is_main()  # evaluation happens on rank 0 only
    gold = task is not None and cfg.gold_samples > 0  # --gold-samples 0 skips the gold measurement
    gold_before = gold_of_samples(model, tok, task, _gold_prompts(task, cfg), cfg) if gold and first else None
    loss_before = heldout_loss(model, eval_batches) if eval_batches and first else None

    # 6. Loop: each optimizer step accumulates grad_accum micro-batches, normalised by the step's token count.
    #    Under torchrun every rank builds the same global micro-batches and trains on its rows (shard_rows); DDP
    #    averages the gradients over ranks.
    train_model = wrap_ddp(model)
    bar = progress(total_steps, "sft", cfg.progress, initial=step)
    tokens_seen, t_loop = 0, time.time()
    while step < total_steps:
        lr = cfg.optim.lr * lr_factor(step, total_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        set_lr(opt, lr)
        batches = [micro_batch(step * cfg.optim.grad_accum + j) for j in range(cfg.optim.grad_accum)]
        # The global step's target tokens, known to every rank (each builds the same global micro-batches).
        n_tokens = sum(int(b["loss_mask"][:, :-1].sum()) for b in batches)
        loss_sum = 0.0
        for j, b in enumerate(batches):
            b, real = shard_rows(b, dev)
            with no_sync(train_model, sync=j == len(batches) - 1):  # one all-reduce per optimizer step
                with autocast(cfg.dtype, dev):
                    logits = train_model(b["input_ids"])
                nll, _ = sft_loss(logits, b["input_ids"], b["loss_mask"])
                # Each rank's token sum over the GLOBAL count, x world() because DDP averages the ranks'
                # gradients: the result is exactly the one-process gradient of the global token mean.
                (nll * (real * world()) / max(n_tokens, 1)).backward()
            loss_sum += float(nll.detach()) * real
            tokens_seen += int(b["attention_mask"].sum()) * real
        grad_norm = clip_grads(model, cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        row = {}
        if step % cfg.log_every == 0 or step == total_steps:
            loss_sum = float(all_reduce_sum(loss_sum))  # over all ranks' tokens
            row = {"loss": loss_sum / max(n_tokens, 1), "lr": lr, "grad_norm": grad_norm}
            row["tokens_per_s"] = float(all_reduce_sum(tokens_seen)) / max(time.time() - t_loop, 1e-9)
        if eval_batches and is_main() and (step % cfg.eval_every == 0 or step == total_steps):
            row["eval/loss"] = heldout_loss(model, eval_batches)
        if row:
            metrics.log(step, **row)
            bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}")
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps and is_main():
            save_training_state(out, step, {"policy": model}, {"policy": opt})
    bar.close()
    metrics.close()
    train_seconds = time.time() - t0
    if not is_main():  # rank 0 evaluates and saves; the other ranks wait for its summary
        return share(None)

    # 7. Final evaluation: held-out loss, and the gold score of samples on the built-in task.
    loss_after = heldout_loss(model, eval_batches) if eval_batches else None
    gold_after = gold_of_samples(model, tok, task, _gold_prompts(task, cfg), cfg) if gold else None

    # 8. Save the model checkpoint and the summary.
    config = {
        "kind": "policy",
        "stage": "sft",
        "backbone": backbone,
        "tokenizer": save_tokenizer(tok, out),
        "parent": str(cfg.init) if cfg.init else (cfg.model if cfg.model != "gpt" else None),
        "step": step,
        "lora": lora,
        "run_config": config_dict(cfg),
    }
    n_trainable = trainable_params(model)
    save_checkpoint(out, merge_lora(model), config)  # adapters folded in: the next stage reads plain weights
    summary = {
        "steps": step,
        "n_train": len(enc_train),
        "n_eval": len(enc_eval),
        "n_truncated": n_truncated,
        "eval_loss_before": loss_before,
        "eval_loss": loss_after,
        "gold_before": gold_before["gold"] if gold_before else None,
        "gold_after": gold_after["gold"] if gold_after else None,
        "eos_rate": gold_after["eos_rate"] if gold_after else None,
        "mean_length": gold_after["mean_length"] if gold_after else None,
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_trainable": n_trainable,
        "seconds": round(train_seconds, 2),
        "samples": gold_after["samples"] if gold_after else [],
    }
    write_json(out / "summary.json", summary)
    _report(summary, out)
    return share(summary)


def _gold_prompts(task, cfg: SFTConfig) -> list[str]:
    return task.prompts(cfg.gold_samples, split="test")


def _report(s: dict, out) -> None:
    def f(x):
        return "-" if x is None else f"{x:.3f}"

    say(
        f"sft: {s['steps']} steps in {s['seconds']:.1f}s | held-out loss {f(s['eval_loss_before'])} -> "
        f"{f(s['eval_loss'])} | gold {f(s['gold_before'])} -> {f(s['gold_after'])}"
    )
    print(f"outputs: {out}/ (model.safetensors, config.json, metrics.jsonl, summary.json)")
