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
from rlhf.data.loader import load_mixture
from rlhf.data.tokenizer import ByteTokenizer
from rlhf.distributed import device, is_main, local_param_bytes, shard_model, share, unsharded
from rlhf.errors import UserError
from rlhf.models.build import gpt_backbone_spec, load_policy, save_checkpoint, save_tokenizer
from rlhf.models.gpt import GPT
from rlhf.models.lora import merge_lora, trainable_params
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
from rlhf.tasks import get_task, task_options


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
    if not cfg.data:
        task = get_task(cfg.task.name, seed=cfg.seed, **task_options(cfg.task))
        train = [(e["prompt"], e["response"]) for e in task.sft_examples(cfg.task.n_train, split="train")]
        evals = [(e["prompt"], e["response"]) for e in task.sft_examples(cfg.task.n_eval, split="test")]
        return train, evals, task
    k = cfg.keys
    train, evals = load_mixture(
        cfg.data, "sft", k.column_keys(), cfg.data_weights, cfg.seed, k.split, cfg.eval_fraction
    )
    return [(e.prompt, e.response) for e in train], [(e.prompt, e.response) for e in evals], None


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


def sft_targets(e) -> int:
    """Next-token targets of the loss in encoded example `e`: the positions sft_batch's loss_mask marks."""
    return len(e.ids) - 1 - max(e.prompt_len - 1, 0)  # as sft_batch's loss_mask


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
    block = backbone.get("arch", {}).get(
        "block_size"
    )  # a built-in GPT's positions; HF models truncate themselves
    if block and cfg.max_length > block:
        raise UserError(
            f"--max-length {cfg.max_length} exceeds the model's block size {block}; use at most {block}"
        )
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
    # --strategy fsdp: before the optimizer (it replaces the parameters); --dtype bf16: bf16 compute, fp32 reduce
    model = shard_model(model, cfg.strategy, mixed_precision=cfg.dtype == "bf16")
    opt = make_optimizer(model, cfg.optim)
    lengths = [len(e.ids) for e in enc_train]

    orders: dict[int, list[list[int]]] = {}

    def micro_batch(index: int) -> list:
        """The index-th micro-batch of the run: epoch e's order depends only on (seed, e), so resume is exact."""
        epoch, pos = divmod(index, micro_per_epoch)
        if epoch not in orders:
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            orders[epoch] = length_bucketed_batches(lengths, cfg.batch_size, gen)
        return [enc_train[i] for i in orders[epoch][pos]]

    def evaluate(m) -> dict:
        return {"eval/loss": heldout_loss(m, eval_batches)} if eval_batches else {}

    # 5. Resume (weights, optimizer, RNG states, data position), metrics and checkpoints: the shared loop.
    loop = TrainLoop("sft", cfg, out, model, opt, total_steps, micro_batch, evaluate, state_name="policy")
    whole = (
        unsharded(model) if not loop.resumed else None
    )  # evaluation happens on rank 0 only, on the whole model
    first = not loop.resumed and is_main()
    gold = task is not None and cfg.gold_samples > 0  # --gold-samples 0 skips the gold measurement
    gold_before = gold_of_samples(whole, tok, task, _gold_prompts(task, cfg), cfg) if gold and first else None
    loss_before = heldout_loss(whole, eval_batches) if eval_batches and first else None

    # 6. Loop: each optimizer step accumulates grad_accum micro-batches, normalised by the step's token count.
    #    Under torchrun every rank builds the same global micro-batches and trains on its rows; DDP averages the
    #    gradients over ranks.
    for step in loop:
        # The global step's target tokens, known to every rank (each builds the same global micro-batches).
        step.total = max(sum(sft_targets(e) for b in step.batches for e in b), 1)
        for examples, real in step.shards():
            b = {k: v.to(dev) for k, v in sft_batch(examples, tok.pad_id).items()}
            with autocast(cfg.dtype, dev):
                logits = loop.train_model(b["input_ids"])
            nll, _ = sft_loss(logits, b["input_ids"], b["loss_mask"])
            step.backward(nll, real, loss=float(nll.detach()), tokens=int(b["attention_mask"].sum()))
    step = loop.step
    train_seconds = time.time() - t0
    param_bytes = local_param_bytes(model)  # this process's share (FSDP) or the whole model (DDP)
    model = unsharded(model)  # FSDP: the trained weights gathered into rank 0's copy
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
        "param_bytes_per_process": param_bytes,
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
