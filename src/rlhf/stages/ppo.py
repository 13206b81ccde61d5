"""Stage 3: PPO against a frozen reward model, with a per-token KL penalty to the frozen SFT reference.

train_ppo(cfg) reads top to bottom. The numbered details [Dn] match docs/ppo_details.md:

  1 set-up -> 2 models (policy, reference, value, reward; dropout off) -> 3 prompts -> 4 optimizer + KL controller
  -> 5 resume -> for each update: 6 rollout -> 7 log-probs + values -> 8 scores -> 9 per-token rewards
  -> 10 GAE + whitening -> 11 PPO epochs x minibatches -> 12 metrics + checkpoint; then 13 save.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from rlhf.checkpoint import write_json
from rlhf.concurrent import run_concurrently
from rlhf.config import PPOConfig
from rlhf.data.collate import encode_prompt, pad, reencode
from rlhf.data.loader import load_prompts
from rlhf.data.tokenizer import Tokenizer, same_vocabulary
from rlhf.distributed import (
    all_reduce_mean,
    device,
    is_main,
    masked_whiten_global,
    rank,
    reduce_metrics,
    shard,
    share,
    world,
    wrap_ddp,
)
from rlhf.errors import UserError
from rlhf.generation import sample
from rlhf.metrics import MetricsWriter
from rlhf.models.build import disable_dropout, load_policy, load_scalar, save_checkpoint, save_tokenizer
from rlhf.models.heads import ScalarModel, hidden_at, last_token_index, scalar_head
from rlhf.models.lora import AdapterDisabledReference, merge_lora
from rlhf.rl import (
    AdaptiveKLController,
    FixedKLController,
    approx_kl,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
)
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
class Batch:
    """One rollout batch, everything PPO needs, (B, ...) tensors. P = prompt columns, N = response columns."""

    ids: torch.Tensor  # (B, T) prompt + response, right-padded
    mask: torch.Tensor  # (B, T) real tokens
    resp_pos: torch.Tensor  # (B, N) column of each response token in `ids`
    response_mask: torch.Tensor  # (B, N)
    logprobs: torch.Tensor  # (B, N) policy at sampling time
    ref_logprobs: torch.Tensor  # (B, N)
    values: torch.Tensor  # (B, N)
    advantages: torch.Tensor  # (B, N)
    returns: torch.Tensor  # (B, N)

    @property
    def targets(self) -> torch.Tensor:
        """(B, N) the response token ids (what the log-probs are of)."""
        return response_targets(self.ids, self.resp_pos)

    @property
    def positions(self) -> torch.Tensor:
        """(B, N) the positions whose outputs predict the response tokens (all the update reads)."""
        return predicting(self.resp_pos, self.ids.size(1))


class PolicyValue(nn.Module):
    """Policy and value model behind one call, so the update never asks which layout is in use.

    'separate': value model = its own trunk + head (initialised from the reward model).
    'shared': one trunk, the LM head and a value head on the same hidden states - one fused forward.
    """

    def __init__(self, policy: nn.Module, value: ScalarModel | None):
        super().__init__()
        self.policy = policy
        self.value = value
        if value is None:
            self.value_head = scalar_head(policy.hidden_size)

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, T, V), values (B, T)), or (B, K, V) and (B, K) at `positions` (B, K) only: PPO reads just
        the positions predicting the response (the built-in GPT then skips most of its last block, and the LM
        head never sees the prompt)."""
        if self.value is not None:
            return self.policy(ids, mask, positions=positions), self.value(ids, mask, positions)
        h = hidden_at(self.policy, ids, mask, positions)
        return self.policy.lm_head(h), self.value_head(h).squeeze(-1)

    def forward_concurrently(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, dtype: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` under autocast(dtype); separate policy and value models run side by side (rlhf.concurrent:
        they share no parameter, so each takes one of the CPU cores). Autocast is thread-local: each worker
        enters it."""

        def policy() -> torch.Tensor:
            with autocast(dtype, ids.device):
                return self.policy(ids, mask, positions=positions)

        def value() -> torch.Tensor:
            with autocast(dtype, ids.device):
                return self.value(ids, mask, positions)

        if self.value is None:
            with autocast(dtype, ids.device):
                return self(ids, mask, positions)
        logits, values = run_concurrently(policy, value)
        return logits, values


def right_align(
    p_ids: torch.Tensor, p_mask: torch.Tensor, r_ids: torch.Tensor, r_mask: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-pack left-padded prompt + response rows as right-padded sequences (ids, mask (B, T), resp_pos (B, N)).

    Generation needs left padding (every row's next token in one column); training forwards are faster right-
    padded (no attention mask: the causal kernel, positions from 0). resp_pos[b, j] is the column of response
    token j in row b. Trailing all-pad columns are trimmed.
    """
    B, P = p_ids.shape
    N = r_ids.size(1)
    n_prompt = p_mask.long().sum(1)  # (B,)
    full, full_mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask.bool(), r_mask.bool()], 1)
    # (B, P+N) source column per target column
    cols = torch.arange(P + N, device=p_ids.device).unsqueeze(0) + (P - n_prompt).unsqueeze(1)
    inside = cols < P + N
    cols = cols.clamp(max=P + N - 1)
    ids = full.gather(1, cols).masked_fill(~inside, pad_id)
    mask = full_mask.gather(1, cols) & inside
    width = int(mask.long().sum(1).max())
    resp_pos = n_prompt.unsqueeze(1) + torch.arange(N, device=p_ids.device).unsqueeze(0)  # (B, N)
    return ids[:, :width], mask[:, :width], resp_pos


def predicting(resp_pos: torch.Tensor, width: int) -> torch.Tensor:
    """(B, N) the position whose output predicts each response token: resp_pos - 1, kept inside the row."""
    return (resp_pos - 1).clamp(0, width - 1)


def response_targets(ids: torch.Tensor, resp_pos: torch.Tensor) -> torch.Tensor:
    """(B, N) the response token ids (padding after an EOS reads the row's last column: masked out)."""
    return ids.gather(1, resp_pos.clamp(max=ids.size(1) - 1))


def response_logprobs(
    policy, ids: torch.Tensor, mask: torch.Tensor, resp_pos: torch.Tensor, temperature: float
):
    """Log-probs (B, N) of the response tokens under `policy` at temperature T [D4]; the policy computes only the
    positions that predict them."""
    logits = policy(ids, mask, positions=predicting(resp_pos, ids.size(1)))
    return logprobs_from_logits(logits, response_targets(ids, resp_pos), temperature)


def load_prompt_pool(cfg: PPOConfig) -> tuple[list[str], object]:
    task = get_task(
        cfg.task.name, seed=cfg.seed, label_noise=cfg.task.label_noise, length_bias=cfg.task.length_bias
    )
    if cfg.prompts is None:
        return task.prompts(cfg.task.n_train, split="train"), task
    k = cfg.keys
    keys = k.column_keys()
    return load_prompts(cfg.prompts, keys), None


def score_responses(
    reward_model: ScalarModel, ids: torch.Tensor, mask: torch.Tensor, norm: dict | None, clip: float
) -> torch.Tensor:
    """Reward-model score at the last real token of prompt+response [D6], optionally normalised and clipped [D7]."""
    with torch.inference_mode():
        s = reward_model.score(ids, mask).float()
    if norm is not None:
        s = (s - norm["mean"]) / max(norm["std"], 1e-6)
    return s.clamp(-clip, clip) if clip > 0 else s


class RewardInputs:
    """How one reward model reads a rollout: the policy's own ids when both share a vocabulary, else the prompt and
    response texts re-encoded with the reward model's tokenizer (e.g. a BERT reward model for a GPT-2 policy)."""

    def __init__(self, policy_tok: Tokenizer, rm_tok: Tokenizer, rm_cfg: dict):
        self.tok = None if same_vocabulary(policy_tok, rm_tok) else rm_tok
        self.max_length = int(rm_cfg.get("max_length") or 512)

    def __call__(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        prompts: list[str],
        texts: list[str],
        finished: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tok is None:
            return ids, mask
        r_ids, r_mask = reencode(self.tok, prompts, texts, finished.tolist(), self.max_length)
        return r_ids.to(ids.device), r_mask.to(ids.device)


def weighted_scores(parts: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Multi-objective score sum_i w_i * s_i of several reward models' (normalised, clipped) scores, each (B,)."""
    assert len(parts) == len(weights), f"{len(parts)} reward models but {len(weights)} weights"
    return sum(w * s for w, s in zip(weights, parts))


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = -beta*kl_t on every response token, plus the sequence score on its last real token [D9].

    Returns (rewards (B, N), non_score_reward (B, N)). Padding positions are 0.
    """
    non_score = -kl_coef * kl * response_mask
    rewards = non_score.clone()
    last = last_token_index(response_mask)  # (B,) the EOS, or the last token when there is none
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards, non_score


def train_ppo(cfg: PPOConfig) -> dict:
    # 1. Set-up (under torchrun: the process group and this rank's device).
    out = setup_run(cfg)
    dev = device()
    t_start = time.time()

    # 2. Models [D3]: policy from SFT, a frozen reference copy, a frozen reward model, a value model from the reward
    #    model ('separate') or a head on the policy trunk ('shared'). Dropout off everywhere [D2].
    #    A reward model with another vocabulary (a BERT RM for a GPT-2 policy) reads the rollout re-encoded
    #    (RewardInputs); the value model must read the policy's tokens, so it then starts from the SFT trunk.
    #    LoRA (--lora-rank): adapters on the policy (and value trunk); the reference is the policy with its
    #    adapters disabled - no second copy in memory.
    policy, tok, sft_cfg = load_policy(cfg.sft)
    reward_model, rm_tok, rm_cfg = load_scalar(cfg.reward)
    rm_inputs = RewardInputs(tok, rm_tok, rm_cfg)
    value = None
    if cfg.value_model == "separate" and rm_inputs.tok is None:
        value, _, _ = load_scalar(cfg.reward)
    elif cfg.value_model == "separate":
        say(
            f"ppo: {cfg.reward} has another vocabulary than the policy: value model from {cfg.sft}, fresh head"
        )
        value = ScalarModel(load_policy(cfg.sft)[0])
    lora = adapt_for_training(policy, cfg)
    if value is not None:
        adapt_for_training(value.trunk, cfg)
    if lora is not None:
        ref = AdapterDisabledReference(policy)
    else:
        ref, _, _ = load_policy(cfg.sft)
        disable_dropout(ref).to(dev).eval().requires_grad_(False)
    model = PolicyValue(policy, value)
    for m in (model, reward_model):
        disable_dropout(m).to(dev)
    reward_model.eval().requires_grad_(False)
    norm = rm_cfg.get("reward_norm") if cfg.normalize_reward else None
    # More reward models (multi-objective): each normalised with its own statistics, then a weighted sum.
    extra_rms = []
    for path in cfg.extra_rewards:
        m, m_tok, m_cfg = load_scalar(path)
        disable_dropout(m).to(dev).eval().requires_grad_(False)
        extra_rms.append(
            (m, m_cfg.get("reward_norm") if cfg.normalize_reward else None, RewardInputs(tok, m_tok, m_cfg))
        )
    rm_weights = list(cfg.reward_weights) or [1.0] * (1 + len(extra_rms))
    if len(rm_weights) != 1 + len(extra_rms):
        raise UserError(
            f"--reward-weights has {len(rm_weights)} values for {1 + len(extra_rms)} reward models "
            "(--reward, then each --extra-rewards)"
        )
    if extra_rms and cfg.reward_fn != "model":
        raise UserError(f"--extra-rewards needs --reward-fn model, got --reward-fn {cfg.reward_fn}")

    # 3. Prompts: a pool reshuffled every pass [D12].
    pool, task = load_prompt_pool(cfg)
    block = sft_cfg["backbone"].get("arch", {}).get("block_size", cfg.max_prompt_length + cfg.response_length)
    if cfg.response_length >= block:
        raise UserError(
            f"--response-length {cfg.response_length} leaves no room for a prompt in block_size {block}"
        )
    max_prompt = min(cfg.max_prompt_length, block - cfg.response_length)
    enc_prompts = [encode_prompt(tok, p, max_prompt) for p in pool]
    n_prompt_truncated = sum(t for _, t in enc_prompts)
    n_updates = max(1, cfg.episodes // cfg.rollout_batch)
    if cfg.rollout_batch % (cfg.mini_batches * world()):
        raise UserError(
            f"--rollout-batch {cfg.rollout_batch} must be divisible by --mini-batches {cfg.mini_batches}"
            + (f" x {world()} processes (each samples rollout-batch / processes)" if world() > 1 else "")
        )
    say(
        f"ppo: {len(pool)} prompts ({n_prompt_truncated} truncated), {n_updates} updates x {cfg.rollout_batch} episodes"
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

    # 4. Optimizer over policy + value; KL controller [D10].
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
        say(f"ppo: resumed at update {update}")
    metrics = MetricsWriter(
        out / "metrics.jsonl",
        resume_step=update if restored is not None else None,
        tensorboard=cfg.tensorboard,
    )

    # Under torchrun every rank samples, scores and trains on its share of each global rollout batch; the PPO
    # update runs through DDP (gradients averaged), generation through the unwrapped policy.
    train_model = wrap_ddp(model)
    fuse_first_epoch = train_model is model and cfg.mini_batches == 1 and cfg.optim.grad_accum == 1
    bar = progress(n_updates, "ppo", cfg.progress, initial=update)
    timing = {"generation": 0.0, "scoring": 0.0, "update": 0.0}
    kl_history = []
    while update < n_updates:
        t0 = time.time()
        lr = cfg.optim.lr * lr_factor(update, n_updates, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        set_lr(opt, lr)
        idx, _ = shard(prompt_batch(update))  # this rank's prompts of the global rollout batch
        prompts = [pool[i] for i in idx]
        p_ids, p_mask = pad([enc_prompts[i][0] for i in idx], tok.pad_id, side="left")
        p_ids, p_mask = p_ids.to(dev), p_mask.to(dev)

        # 6. Rollout [D1]: sample with the KV cache at temperature T; fixed token budget, pad after the first EOS.
        model.eval()
        # One stream per (seed, update, rank): ranks sample independently; one process keeps its old seeds.
        gen = torch.Generator(device=dev).manual_seed((cfg.seed * 1_000_003 + update) * world() + rank())
        with autocast(cfg.dtype, dev):
            roll = sample(
                policy,
                p_ids,
                p_mask,
                cfg.response_length,
                tok.eos_id,
                tok.pad_id,
                cfg.temperature,
                generator=gen,
            )
        r_mask = roll.response_mask
        ids, mask, resp_pos = right_align(p_ids, p_mask, roll.response_ids, r_mask, tok.pad_id)
        t1 = time.time()

        # 7. Log-probs of policy and reference recomputed at the sampling temperature [D4], values [D3], read only
        #    at the positions predicting the response. When the rollout is one minibatch (one process, no gradient
        #    accumulation), this policy + value forward is the first PPO epoch's: it keeps its graph, and the update
        #    starts with its backward (the weights have not changed in between) - two forwards fewer per update.
        #    (--dtype bf16: forwards autocast; log-probs, entropies and values are computed in float32.)
        pos, targets = predicting(resp_pos, ids.size(1)), response_targets(ids, resp_pos)
        first_pass = None
        if fuse_first_epoch:
            model.train()
            first_pass = model.forward_concurrently(ids, mask, pos, cfg.dtype)
            logits, values = (t.detach() for t in first_pass)
        else:
            with torch.inference_mode():
                logits, values = model.forward_concurrently(ids, mask, pos, cfg.dtype)
        with torch.inference_mode():
            logprobs = logprobs_from_logits(logits, targets, cfg.temperature)
            entropy = entropy_from_logits(logits, cfg.temperature)
            values = values.float()
            with autocast(cfg.dtype, dev):
                ref_logprobs = response_logprobs(ref, ids, mask, resp_pos, cfg.temperature)
        del logits

        # 8. Scores: reward model at the last real token [D6], normalised and clipped [D7]; missing-EOS penalty [D8].
        texts = [tok.decode(row[m].tolist()) for row, m in zip(roll.response_ids, r_mask)]
        gold = [task.score(p, t, bool(f)) for p, t, f in zip(prompts, texts, roll.finished)] if task else []
        if cfg.reward_fn == "length":
            scores = torch.tensor([len(t) / 100 for t in texts], device=dev)
        elif cfg.reward_fn == "gold":
            if task is None:
                raise UserError("--reward-fn gold needs the built-in task (no --prompts file)")
            scores = torch.tensor(gold, device=dev)
        else:
            rm_ids, rm_mask = rm_inputs(ids, mask, prompts, texts, roll.finished)
            scores = score_responses(reward_model, rm_ids, rm_mask, norm, cfg.reward_clip)
        parts = []
        if cfg.reward_fn == "model" and (extra_rms or cfg.reward_weights):
            parts = [scores] + [
                score_responses(m, *inputs(ids, mask, prompts, texts, roll.finished), n, cfg.reward_clip)
                for m, n, inputs in extra_rms
            ]
            scores = weighted_scores(parts, rm_weights)
        raw_scores = scores.clone()
        scores = scores - cfg.missing_eos_penalty * (~roll.finished).float()
        t2 = time.time()

        # 9. Per-token rewards: -beta*kl_t (estimator of choice) [D5] + the score on the last token [D9].
        kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator) * r_mask
        rewards, non_score = per_token_rewards(scores, kl, r_mask, kl_ctl.value)
        if cfg.whiten_rewards:
            rewards = masked_whiten_global(rewards, r_mask, shift_mean=False)

        # 10. GAE(gamma, lambda) [D11], advantages whitened over the batch's real tokens [D13] (under torchrun:
        #     the statistics of every rank's tokens, as one process with the whole batch).
        advantages, returns = gae(rewards, values, r_mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten_global(advantages, r_mask)
        batch = Batch(ids, mask, resp_pos, r_mask, logprobs, ref_logprobs, values, advantages, returns)

        # 11. PPO epochs x minibatches [D14]: clipped surrogate [D15], clipped value loss [D16], entropy bonus.
        model.train()
        stats = ppo_update(train_model, opt, batch, cfg, update, first_pass)
        del first_pass
        t3 = time.time()

        # 12. KL controller, metrics, resume checkpoint.
        mean_kl = float(all_reduce_mean(kl.sum(1).mean()))  # over the global batch: ranks' shards are equal
        kl_history.append(mean_kl)
        kl_ctl.update(mean_kl, cfg.rollout_batch)
        update += 1
        timing["generation"] += t1 - t0
        timing["scoring"] += t2 - t1
        timing["update"] += t3 - t2
        if update % cfg.log_every == 0 or update == n_updates:
            row = {
                "episode": update * cfg.rollout_batch,
                "objective/kl": mean_kl,
                "objective/kl_coef": float(kl_ctl.value),
                "objective/entropy": float((-logprobs * r_mask).sum(1).mean()),
                "policy/entropy_avg": float(masked_mean(entropy, r_mask)),
                "objective/scores": float(raw_scores.mean()),
                "objective/non_score_reward": float(non_score.sum(1).mean()),
                "objective/rlhf_reward": float(scores.mean() + non_score.sum(1).mean()),
                "val/num_eos_tokens": int(roll.finished.sum()),
                "completions/mean_length": float(r_mask.sum(1).float().mean()),
                "lr": lr,
                "eps": cfg.rollout_batch / (t3 - t0),
                **stats,
                "time/generation": t1 - t0,
                "time/scoring": t2 - t1,
                "time/update": t3 - t2,
            }
            row["val/explained_variance"] = float(explained_variance(values, returns, r_mask))
            if gold:
                row["gold/score"] = sum(gold) / len(gold)
            for i, part in enumerate(parts):  # each reward model's mean score, before weighting
                row[f"objective/scores_{i}"] = float(part.mean())
            row = reduce_metrics(row, sums=("val/num_eos_tokens",))  # means over ranks (counts: sums)
            metrics.log(update, **row)
            bar.set_postfix(
                kl=f"{mean_kl:.2f}",
                score=f"{row['objective/scores']:.2f}",
                gold=f"{row.get('gold/score', float('nan')):.2f}",
            )
        bar.update(1)
        if cfg.save_every and update % cfg.save_every == 0 and update < n_updates and is_main():
            save_training_state(
                out, update, {"policy_value": model}, {"policy_value": opt}, {"kl_ctl": kl_ctl.state_dict()}
            )
    bar.close()
    metrics.close()
    seconds = time.time() - t_start
    if not is_main():  # rank 0 saves; the other ranks wait for its summary
        return share(None)

    # 13. Save the policy (a normal policy checkpoint: `rlhf sample`, `rlhf compare` and PPO again can read it).
    config = {
        **sft_cfg,
        "stage": "ppo",
        "parent": str(cfg.sft),
        "reward": str(cfg.reward),
        "step": update,
        "tokenizer": save_tokenizer(tok, out),  # a Hugging Face tokenizer is copied beside the weights
        "lora": lora,
        "run_config": config_dict(cfg),
    }
    config.pop("rlhf_version", None)
    save_checkpoint(out, merge_lora(policy), config)  # adapters folded in: a plain policy checkpoint
    total = sum(timing.values()) or 1.0
    summary = {
        "updates": update,
        "episodes": update * cfg.rollout_batch,
        "seconds": round(seconds, 2),
        "kl_initial": kl_history[0] if kl_history else None,
        "kl_final": kl_history[-1] if kl_history else None,
        "kl_max": max(kl_history) if kl_history else None,
        "time_share": {k: round(v / total, 3) for k, v in timing.items()},
        "n_prompts": len(pool),
        "n_prompt_truncated": n_prompt_truncated,
    }
    write_json(out / "summary.json", summary)
    say(
        f"ppo: {update} updates in {seconds:.1f}s | KL {summary['kl_final']:.3f} | time share {summary['time_share']}"
    )
    print(f"outputs: {out}/")
    return share(summary)


def ppo_update(
    model: PolicyValue,
    opt: torch.optim.Optimizer,
    b: Batch,
    cfg: PPOConfig,
    update: int,
    first_pass: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """K epochs over the rollout in M shuffled minibatches (each split into grad_accum micro-batches).

    `first_pass`: (logits, values) of the whole batch with their graph, from the rollout's own forward (one
    minibatch, no accumulation): the first epoch backpropagates through it instead of running the forward again.
    """
    B = b.ids.size(0)
    mb = B // cfg.mini_batches
    micro = max(1, mb // cfg.optim.grad_accum)
    acc = {k: [] for k in ("pg", "vf", "pg_clip", "vf_clip", "approxkl", "ratio")}
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(
            B, generator=torch.Generator().manual_seed(cfg.seed * 31 + update * 1009 + epoch)
        )
        if epoch == 0 and first_pass is not None:
            assert mb == micro == B, (
                "the rollout's forward is the first epoch's only when it is one minibatch"
            )
            perm = torch.arange(B)  # the order the forward ran in (one minibatch: the loss is the same)
        for start in range(0, B, mb):
            mb_idx = perm[start : start + mb]
            for ms in range(0, len(mb_idx), micro):
                i = mb_idx[ms : ms + micro]
                outputs = first_pass if epoch == 0 else None
                for k, v in micro_batch_backward(model, b, i, len(i) / len(mb_idx), cfg, outputs).items():
                    acc[k].append(v)
            # The norm is not logged here: without clipping, it is not computed.
            if cfg.optim.grad_clip > 0:
                clip_grads(model, cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def avg(k):
        return sum(acc[k]) / len(acc[k])

    return {
        "policy/approxkl_avg": avg("approxkl"),
        "policy/clipfrac_avg": avg("pg_clip"),
        "loss/policy_avg": avg("pg"),
        "loss/value_avg": avg("vf"),
        "val/clipfrac_avg": avg("vf_clip"),
        "val/ratio": avg("ratio"),
    }


def micro_batch_backward(
    model: nn.Module,
    b: Batch,
    i: torch.Tensor,
    share: float,
    cfg: PPOConfig,
    outputs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Backward of the PPO loss on rows `i`, scaled by `share` (their part of the minibatch); returns its stats.

    Loss = clipped surrogate [D15] - entropy_coef * entropy + vf_coef * clipped value loss [D16]. `outputs`:
    the rows' (logits, values) at the response, already computed with their graph (else a forward runs here).
    """
    m = b.response_mask[i]

    def policy_loss(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(loss term, pg_loss, pg_clip, logprobs) from the logits (B, N, V) at the response."""
        logprobs = logprobs_from_logits(logits, b.targets[i], cfg.temperature)
        pg_loss, pg_clip = ppo_policy_loss(logprobs, b.logprobs[i], b.advantages[i], m, cfg.cliprange)
        loss = pg_loss
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * masked_mean(entropy_from_logits(logits, cfg.temperature), m)
        return loss, pg_loss, pg_clip, logprobs

    def value_loss(values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(loss term, vf_loss, vf_clip) from the values (B, N) at the response."""
        vf_loss, vf_clip = ppo_value_loss(values.float(), b.values[i], b.returns[i], m, cfg.cliprange_value)
        return cfg.vf_coef * vf_loss, vf_loss, vf_clip

    if outputs is None and isinstance(model, PolicyValue):
        outputs = model.forward_concurrently(b.ids[i], b.mask[i], b.positions[i], cfg.dtype)
    elif outputs is None:  # a DDP-wrapped model: its own forward, which prepares the gradient sync
        with autocast(cfg.dtype, b.ids.device):
            outputs = model(b.ids[i], b.mask[i], b.positions[i])
    p_loss, pg_loss, pg_clip, logprobs = policy_loss(outputs[0])
    v_loss, vf_loss, vf_clip = value_loss(outputs[1])
    if isinstance(model, PolicyValue) and model.value is not None:
        # Separate policy and value models share no parameter: their backward passes are independent and run
        # side by side on the CPU cores (rlhf.concurrent), with the same gradients as one summed loss.
        run_concurrently(lambda: (p_loss * share).backward(), lambda: (v_loss * share).backward())
    else:  # a shared trunk, or DDP (one backward, which syncs the gradients)
        ((p_loss + v_loss) * share).backward()
    with torch.no_grad():
        return {
            "pg": float(pg_loss),
            "vf": float(vf_loss),
            "pg_clip": float(pg_clip),
            "vf_clip": float(vf_clip),
            "approxkl": float(approx_kl(logprobs, b.logprobs[i], m)),
            "ratio": float(masked_mean(torch.exp(logprobs - b.logprobs[i]), m)),
        }
