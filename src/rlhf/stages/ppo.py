"""Stage 3, on-policy RL: PPO, GRPO, RLOO and REINFORCE++ in one loop (`rlhf ppo`, `rlhf grpo`, `rlhf rloo`).

train_ppo(cfg) reads top to bottom; the algorithms differ only in pure pieces chosen by options (the advantage
estimator in rlhf.rl.ADVANTAGES, where the KL goes, the loss aggregation), never in the loop. The numbered details
[Dn] match docs/ppo_details.md, the algorithms docs/algorithms.md:

  1 set-up -> 2 models (policy + optional value, reference, scorer) -> 3 prompts -> 4 optimizer + KL controller
  -> 5 resume -> for each update: 6 rollout (sample, log-probs, values, scores) -> 7 rewards -> 8 advantages
  -> 9 update (epochs x minibatches) -> 10 metrics, guards, checkpoint; then 11 save.
"""

from __future__ import annotations

import time

import torch

from rlhf import stop
from rlhf.checkpoint import write_json
from rlhf.config import PPOConfig
from rlhf.data.collate import encode_prompt
from rlhf.data.loader import load_prompt_table
from rlhf.data.tokenizer import same_vocabulary
from rlhf.distributed import (
    all_reduce_mean,
    all_reduce_sum,
    device,
    gathered,
    is_main,
    is_sharded,
    local_param_bytes,
    rank,
    reduce_metrics,
    shard,
    shard_model,
    share,
    unsharded,
    world,
    wrap_ddp,
)
from rlhf.errors import UserError
from rlhf.metrics import MetricsWriter
from rlhf.models.build import disable_dropout, load_policy, load_scalar, save_checkpoint, save_tokenizer
from rlhf.models.heads import ScalarModel
from rlhf.models.lora import AdapterDisabledReference, merge_lora
from rlhf.models.policy_value import PolicyValue
from rlhf.rl import (
    ADVANTAGES,
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    kl_penalty,
    masked_mean,
    masked_whiten,
    missing_eos_penalty,
    per_token_rewards,
)
from rlhf.rollout import build_scorer, rollout
from rlhf.stages.common import (
    adapt_for_training,
    autocast,
    config_dict,
    end_of_step,
    lr_factor,
    make_optimizer,
    progress,
    restore_training_state,
    save_training_state,
    say,
    set_lr,
    setup_run,
)
from rlhf.stages.ppo_update import ppo_update
from rlhf.tasks import get_task, task_options


def load_prompt_pool(cfg: PPOConfig) -> tuple[list[str], dict[str, list], object]:
    """(prompts, their other columns for reward functions, the built-in task or None)."""
    task = get_task(cfg.task.name, seed=cfg.seed, **task_options(cfg.task))
    if cfg.prompts is None:
        prompts = task.prompts(cfg.task.n_train, split="train")
        return prompts, task.prompt_columns(prompts), task
    prompts, columns = load_prompt_table(cfg.prompts, cfg.keys.column_keys(), cfg.keys.split)
    return prompts, columns, None


def build_models(cfg: PPOConfig, policy: torch.nn.Module, tok, dev: torch.device):
    """(PolicyValue, reference or None, LoRA spec) around the SFT `policy` [D2, D3].

    The value model ('separate') starts from the reward model - or, when that reads another vocabulary (a BERT
    reward model for a GPT-2 policy), from the SFT trunk with a fresh head, since it must read the policy's tokens.
    The reference is a frozen SFT copy, the policy with its LoRA adapters disabled (no second copy), or nothing at
    all with --kl-coef 0. Dropout off everywhere.
    """
    value = None
    if cfg.value_model == "separate":
        value, rm_tok, _ = load_scalar(cfg.reward)
        if not same_vocabulary(tok, rm_tok):
            say(
                f"{cfg.reward} has another vocabulary than the policy: value model from {cfg.sft}, fresh head"
            )
            value = ScalarModel(load_policy(cfg.sft)[0])
    lora = adapt_for_training(policy, cfg)
    if value is not None:
        adapt_for_training(value.trunk, cfg)
    ref = None
    if cfg.kl_coef > 0 and lora is not None:
        ref = AdapterDisabledReference(policy)
    elif cfg.kl_coef > 0:
        ref, _, _ = load_policy(cfg.sft)
        disable_dropout(ref).to(dev).eval().requires_grad_(False)
    model = PolicyValue(policy, value, cfg.value_model)
    disable_dropout(model).to(dev)
    return model, ref, lora


def train_ppo(cfg: PPOConfig) -> dict:
    # 1. Set-up (under torchrun: the process group and this rank's device).
    out = setup_run(cfg)
    dev = device()
    t_start = time.time()

    # 2. Models [D2, D3]: policy (+ value), reference (none with --kl-coef 0), and the scorer: reward models,
    #    reward functions (imported now, so a broken one fails before anything trains) and the gold judge.
    policy, tok, sft_cfg = load_policy(cfg.sft)
    pool, columns, task = load_prompt_pool(cfg)
    scorer = build_scorer(cfg, tok, task, dev)
    model, ref, lora = build_models(cfg, policy, tok, dev)

    # 3. Prompts: a pool reshuffled every pass [D12].
    block = sft_cfg["backbone"].get("arch", {}).get("block_size", cfg.max_prompt_length + cfg.response_length)
    if cfg.response_length >= block:
        raise UserError(
            f"--response-length {cfg.response_length} leaves no room for a prompt in block_size {block}"
        )
    max_prompt = min(cfg.max_prompt_length, block - cfg.response_length)
    enc_prompts = [encode_prompt(tok, p, max_prompt) for p in pool]
    n_prompt_truncated = sum(t for _, t in enc_prompts)
    n_updates = max(1, cfg.episodes // cfg.rollout_batch)
    G = cfg.samples_per_prompt
    if cfg.rollout_batch % world() or (cfg.rollout_batch // world() * G) % cfg.mini_batches:
        raise UserError(
            f"--rollout-batch {cfg.rollout_batch} x --samples-per-prompt {G} completions must split into "
            f"--mini-batches {cfg.mini_batches}"
            + (f", after dividing the prompts by {world()} processes" if world() > 1 else "")
        )
    say(
        f"{cfg.advantage}: {len(pool)} prompts ({n_prompt_truncated} truncated), {n_updates} updates x "
        f"{cfg.rollout_batch} prompts x {G} completions"
    )

    def prompt_batch(update: int) -> list[int]:
        """Prompt indices for an update: pass k over the pool is a permutation seeded by (seed, k)."""
        start = update * cfg.rollout_batch
        idx = []
        while len(idx) < cfg.rollout_batch:
            k, pos = divmod(start + len(idx), len(pool))
            perm = torch.randperm(
                len(pool), generator=torch.Generator().manual_seed(cfg.seed * 7919 + k)
            ).tolist()
            idx += perm[pos : pos + cfg.rollout_batch - len(idx)]
        return idx

    # 4. --strategy fsdp: policy (+ value) sharded as one tree, the frozen reference as its own (whole during the
    #    rollout only, `gathered`); then the optimizer over the sharded policy (+ value); KL controller [D10].
    model = shard_model(model, cfg.strategy, mixed_precision=cfg.dtype == "bf16")
    if ref is not None and not isinstance(ref, AdapterDisabledReference):  # LoRA: the policy, adapters off
        ref = shard_model(ref, cfg.strategy, mixed_precision=cfg.dtype == "bf16", rank0_copy=False)
    opt = make_optimizer(model, cfg.optim, {"value": cfg.value_lr_mult, "value_head": cfg.value_lr_mult})
    kl_ctl = (
        AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.kl_target > 0
        else FixedKLController(cfg.kl_coef)
    )

    # 5. Resume: weights, optimizer, KL controller, RNG states; the update index fixes the data position.
    update = 0
    restored = (
        restore_training_state(out, {"policy_value": model}, {"policy_value": opt}) if cfg.resume else None
    )
    if restored is not None:
        update, extra = restored
        kl_ctl.load_state_dict(extra["kl_ctl"])
        say(f"{cfg.advantage}: resumed at update {update}")
    metrics = MetricsWriter(
        out / "metrics.jsonl",
        resume_step=update if restored is not None else None,
        tensorboard=cfg.tensorboard,
    )

    # Under torchrun every rank samples, scores and trains on its share of each global rollout batch (whole
    # groups: a prompt's completions stay on one rank); the update runs through DDP (gradients averaged),
    # generation through the unwrapped policy.
    train_model = wrap_ddp(model)
    keep_graph = (
        train_model is model and not is_sharded(model) and cfg.mini_batches == 1 and cfg.optim.grad_accum == 1
    )
    reduce = all_reduce_sum if world() > 1 else None  # whitening with every rank's statistics

    def forward_context():
        return autocast(cfg.dtype, dev)

    bar = progress(n_updates, cfg.advantage, cfg.progress, initial=update)
    timing = {"generation": 0.0, "scoring": 0.0, "update": 0.0}
    kl_history, warned = [], set()
    t_loop = time.time()
    with stop.graceful():  # SIGTERM / SIGINT: finish the update, write a resume checkpoint, stop
        while update < n_updates:
            t0 = time.time()
            lr = cfg.optim.lr * lr_factor(update, n_updates, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
            set_lr(opt, lr)
            idx, _ = shard(prompt_batch(update))  # this rank's prompts of the global rollout batch

            # 6. Rollout [D1, D4, D6, D7]: G completions per prompt, log-probs (policy, reference) at the sampling
            #    temperature, values, scores. One stream per (seed, update, rank): ranks sample independently.
            gen = torch.Generator(device=dev).manual_seed((cfg.seed * 1_000_003 + update) * world() + rank())
            with gathered(model, ref):  # FSDP: whole models for sampling, resharded after
                exp = rollout(
                    model,
                    ref,
                    scorer,
                    tok,
                    [pool[i] for i in idx],
                    [enc_prompts[i][0] for i in idx],
                    {k: [v[i] for i in idx] for k, v in columns.items()},
                    cfg,
                    gen,
                    forward_context,
                    keep_graph,
                )
            r_mask = exp.response_mask

            # 7. Rewards [D5, D8, D9]: missing-EOS penalty on the score; per-token KL (estimator of choice) as a
            #    penalty in the reward (--kl-in reward) or left for the loss (--kl-in loss); the score on the last token.
            scores = missing_eos_penalty(exp.scores, exp.finished, cfg.missing_eos_penalty)
            if exp.ref_logprobs is not None:
                kl = kl_penalty(exp.logprobs, exp.ref_logprobs, cfg.kl_estimator) * r_mask
            else:
                kl = torch.zeros_like(exp.logprobs)
            beta_in_reward = kl_ctl.value if cfg.kl_in == "reward" else 0.0
            rewards, non_score = per_token_rewards(scores, kl, r_mask, beta_in_reward)
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, r_mask, shift_mean=False, all_reduce=reduce)

            # 8. Advantages [D11, D13]: GAE + whitening, GRPO / RLOO within each prompt's group, or REINFORCE++
            #    (rlhf.rl.ADVANTAGES; under torchrun, batch statistics over every rank's tokens).
            advantages, returns = ADVANTAGES[cfg.advantage](
                rewards,
                r_mask,
                exp.values,
                group_size=G,
                gamma=cfg.gamma,
                lam=cfg.lam,
                scale_rewards=cfg.scale_rewards,
                all_reduce=reduce,
            )

            # 9. Update [D14-D16]: epochs x minibatches x micro-batches of the clipped surrogate (+ value loss).
            model.train()
            stats = ppo_update(train_model, opt, exp, advantages, returns, cfg, update, kl_ctl.value)
            exp.graph = None
            t3 = time.time()

            # 10. KL controller, metrics, warnings, resume checkpoint.
            mean_kl = float(
                all_reduce_mean(kl.sum(1).mean())
            )  # over the global batch: ranks' shards are equal
            kl_history.append(mean_kl)
            kl_ctl.update(mean_kl, cfg.rollout_batch)
            update += 1
            timing["generation"] += exp.seconds["generation"]
            timing["scoring"] += exp.seconds["scoring"]
            timing["update"] += t3 - t0 - exp.seconds["generation"] - exp.seconds["scoring"]
            zero_std = (
                float(torch.isclose(scores.view(-1, G).std(1), torch.zeros(())).float().mean())
                if G > 1
                else 0.0
            )
            truncated = float((~exp.finished).float().mean())
            if is_main():
                warn_once(warned, "zero_std", zero_std > 0.5,
                          f"{cfg.advantage}: more than half the groups of update {update} got the same score for every "
                          "completion (their score teaches nothing); raise --samples-per-prompt or "
                          "--temperature, or use a reward with finer grades")  # fmt: skip
                warn_once(warned, "truncated", truncated > 0.5,
                          f"{cfg.advantage}: more than half the completions of update {update} hit "
                          f"--response-length {cfg.response_length} without EOS; raise --response-length (or use "
                          "--mask-truncated / --missing-eos-penalty)")  # fmt: skip
            if update % cfg.log_every == 0 or update == n_updates:
                row = {
                    "episode": update * cfg.rollout_batch,
                    "objective/kl": mean_kl,
                    "objective/kl_coef": float(kl_ctl.value),
                    "objective/entropy": float((-exp.logprobs * r_mask).sum(1).mean()),
                    "policy/entropy_avg": float(masked_mean(exp.entropy, r_mask)),
                    "objective/scores": float(exp.scores.mean()),
                    "objective/non_score_reward": float(non_score.sum(1).mean()),
                    "objective/rlhf_reward": float(scores.mean() + non_score.sum(1).mean()),
                    "kl": float(masked_mean(kl, r_mask)),
                    "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,  # over the batch, as TRL
                    "val/num_eos_tokens": int(exp.finished.sum()),
                    "completions/mean_length": float(r_mask.sum(1).float().mean()),
                    "completions/max_length": int(r_mask.sum(1).max()),
                    "completions/clipped_ratio": truncated,
                    "tokens/real": int(exp.mask.sum()),
                    "lr": lr,
                    "eps": cfg.rollout_batch / (t3 - t0),
                    **stats,
                    "time/generation": exp.seconds["generation"],
                    "time/scoring": exp.seconds["scoring"],
                    "time/update": t3 - t0 - exp.seconds["generation"] - exp.seconds["scoring"],
                }
                if G > 1:
                    row["frac_reward_zero_std"] = zero_std
                if returns is not None:
                    row["val/explained_variance"] = float(explained_variance(exp.values, returns, r_mask))
                if exp.gold:
                    row["gold/score"] = sum(exp.gold) / len(exp.gold)
                row |= scorer.ensemble_metrics()  # reward-model ensembles: the members' disagreement
                if task is not None:  # the share of completions showing each bias a labeller may have
                    row |= task.hack_rates(exp.prompts, exp.texts)
                if (
                    len(exp.score_parts) > 1 or cfg.reward_weights
                ):  # each source's mean score, before weighting
                    row |= {f"objective/scores_{i}": float(p.mean()) for i, p in enumerate(exp.score_parts)}
                row = reduce_metrics(
                    row, sums=("val/num_eos_tokens", "tokens/real")
                )  # means over ranks, counts summed
                if exp.ref_logprobs is None:  # --kl-coef 0 loads no reference: the KL is unmeasured, not 0
                    row["objective/kl"] = row["kl"] = None
                metrics.log(update, **row)
                bar.set_postfix(
                    kl=f"{mean_kl:.2f}",
                    score=f"{row['objective/scores']:.2f}",
                    gold=f"{row.get('gold/score', float('nan')):.2f}",
                )
            bar.update(1)
            end_of_step(
                cfg.advantage,
                out,
                update,
                n_updates,
                cfg.save_every,
                lambda u=update: save_training_state(
                    out, u, {"policy_value": model}, {"policy_value": opt}, {"kl_ctl": kl_ctl.state_dict()}
                ),
                every_rank=is_sharded(model),  # FSDP: every process writes its shards
            )
    loop_seconds = time.time() - t_loop
    bar.close()
    seconds = time.time() - t_start
    param_bytes = local_param_bytes(model)  # this process's share (FSDP) or the whole policy (+ value)
    model = unsharded(model)  # FSDP: the trained weights gathered into rank 0's copy (every rank takes part)
    if not is_main():  # rank 0 saves; the other ranks wait for its summary
        return share(None)

    # 11. Save the policy (a normal policy checkpoint: `rlhf sample`, `rlhf compare` and RL again can read it).
    config = {
        **sft_cfg,
        "stage": cfg.stage,
        "parent": str(cfg.sft),
        "reward": str(cfg.reward) if cfg.reward_fn == "model" else cfg.reward_fn,
        "step": update,
        "tokenizer": save_tokenizer(tok, out),  # a Hugging Face tokenizer is copied beside the weights
        "lora": lora,
        "run_config": config_dict(cfg),
    }
    config.pop("rlhf_version", None)
    save_checkpoint(out, merge_lora(model.policy), config)  # adapters folded in: a plain policy checkpoint
    total = sum(timing.values()) or 1.0
    summary = {
        "updates": update,
        "episodes": update * cfg.rollout_batch,
        "completions": update * cfg.rollout_batch * G,
        "seconds": round(seconds, 2),
        "loop_seconds": round(loop_seconds, 3),
        **dict.fromkeys(("kl_initial", "kl_final", "kl_max")),  # unmeasured without a reference (--kl-coef 0)
        **(
            {"kl_initial": kl_history[0], "kl_final": kl_history[-1], "kl_max": max(kl_history)}
            if kl_history and ref is not None
            else {}
        ),
        "time_share": {k: round(v / total, 3) for k, v in timing.items()},
        "n_prompts": len(pool),
        "param_bytes_per_process": param_bytes,
        "n_prompt_truncated": n_prompt_truncated,
    }
    write_json(out / "summary.json", summary)
    say(
        f"{cfg.advantage}: {update} updates in {seconds:.1f}s | KL "
        f"{'unmeasured' if summary['kl_final'] is None else format(summary['kl_final'], '.3f')} | "
        f"time share {summary['time_share']}"
    )
    print(f"outputs: {out}/")
    return share(summary)


def warn_once(warned: set, key: str, condition: bool, message: str) -> None:
    """A loud warning the first time `condition` holds (training goes on: it may be a phase, not a failure)."""
    if condition and key not in warned:
        warned.add(key)
        say(f"WARNING: {message}")
