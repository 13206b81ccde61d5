"""On-policy experience: sample completions, recompute log-probs (policy and reference) and values, score them.

`rollout(...)` fills one `Experience` per update; the stage then turns it into rewards, advantages and an update
(rlhf.rl). Scoring lives here too (`Scorer`): reward models (re-encoding rollouts for one with another vocabulary),
Python reward functions, the flawed length reward, and the built-in task's gold judge, which is always recorded
beside whatever trains the policy.

Layout: generation needs left-padded prompts (every row's next token in one column); training forwards are faster
right-padded (no attention mask: the causal kernel, positions from 0), so rows are re-packed (`right_align`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from rlhf.config import PPOConfig
from rlhf.data.collate import pad, reencode
from rlhf.data.tokenizer import Tokenizer, same_vocabulary
from rlhf.generation import sample
from rlhf.models.build import disable_dropout, load_reward_ensemble
from rlhf.models.heads import ScalarModel
from rlhf.models.policy_value import PolicyValue
from rlhf.reward_fns import is_function_spec, load_reward_fn
from rlhf.rl import (
    ensemble_std,
    entropy_from_logits,
    logprobs_from_logits,
    normalize_scores,
    reduce_ensemble,
    weighted_scores,
)


# ------------------------------------------------------------------------------------------------ layout
def right_align(
    p_ids: torch.Tensor, p_mask: torch.Tensor, r_ids: torch.Tensor, r_mask: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-pack left-padded prompt + response rows as right-padded sequences (ids, mask (B, T), resp_pos (B, N)).

    resp_pos[b, j] is the column of response token j in row b. Trailing all-pad columns are trimmed.
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
) -> torch.Tensor:
    """Log-probs (B, N) of the response tokens under `policy` at temperature T [D4]; the policy computes only the
    positions that predict them."""
    logits = policy(ids, mask, positions=predicting(resp_pos, ids.size(1)))
    return logprobs_from_logits(logits, response_targets(ids, resp_pos), temperature)


@dataclass
class PackedGroups:
    """A batch's groups as packed rows: each prompt once, then its G completions as branches (segments 1..G) that
    each attend to the prompt and themselves only (`GPT.hidden(segments=...)`, as the reward stage packs pairs).
    The same outputs as the B right-aligned rows, from P + G*R tokens per group instead of G*(P + R)."""

    ids: torch.Tensor  # (B/G, L) packed rows, right-padded
    segments: torch.Tensor  # (B/G, L) 0 = prompt, k = completion k-1 of the group, -1 = padding
    predicting: torch.Tensor  # (B/G, G*N) position predicting each response token (completion-major)
    last: torch.Tensor  # (B/G, G) position of each completion's last real token (where a reward model reads)


def pack_groups(
    ids: torch.Tensor, resp_pos: torch.Tensor, response_mask: torch.Tensor, group_size: int, pad_id: int
) -> PackedGroups:
    """Pack right-aligned rows (`right_align`) whose consecutive blocks of `group_size` share a prompt."""
    B, N = response_mask.shape
    n_prompt, lengths = resp_pos[:, 0].tolist(), response_mask.sum(1).tolist()
    j = torch.arange(N, device=ids.device)
    rows, segs, predicting, last = [], [], [], []
    for g in range(0, B, group_size):
        P = n_prompt[g]
        parts, seg, offset = [ids[g, :P]], [torch.zeros(P, dtype=torch.long, device=ids.device)], P
        for k in range(group_size):
            L = lengths[g + k]
            parts.append(ids[g + k, P : P + L])
            seg.append(torch.full((L,), k + 1, dtype=torch.long, device=ids.device))
            # Token 0 is predicted by the prompt's last token, token j by the branch's token j-1; padding (j >= L)
            # reads the branch's last token (masked out downstream).
            predicting.append(torch.where(j == 0, P - 1, offset + j - 1).clamp(max=offset + L - 1))
            last.append(offset + L - 1)
            offset += L
        rows.append(torch.cat(parts))
        segs.append(torch.cat(seg))
    p_ids, p_mask = pad([r.tolist() for r in rows], pad_id)
    segments = torch.full_like(p_ids, -1)
    for r, seg in enumerate(segs):
        segments[r, : len(seg)] = seg.cpu()
    n_groups = B // group_size
    return PackedGroups(
        p_ids.to(ids.device),
        segments.to(ids.device),
        torch.stack(predicting).view(n_groups, group_size * N),
        torch.tensor(last, device=ids.device).view(n_groups, group_size),
    )


def reads_packed_groups(model) -> bool:
    """Whether `model` (a policy, a reference, a trunk) reads packed rows: the built-in GPT, LoRA or not."""
    inner = getattr(model, "model", model)  # AdapterDisabledReference wraps the policy
    return bool(getattr(inner, "reads_packed_pairs", False))


# ------------------------------------------------------------------------------------------------ scoring
def score_responses(
    reward_model: ScalarModel, ids: torch.Tensor, mask: torch.Tensor, norm: dict | None, clip: float
) -> torch.Tensor:
    """Reward-model score at the last real token of prompt+response [D6], optionally normalised and clipped [D7]."""
    with torch.inference_mode():
        s = reward_model.score(ids, mask).float()
    return normalize_scores(s, norm["mean"] if norm else None, norm["std"] if norm else None, clip)


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


@dataclass
class Completions:
    """What every reward source may read: the right-aligned ids (B, T) and mask, the texts, the prompt columns."""

    ids: torch.Tensor
    mask: torch.Tensor
    prompts: list[str]
    texts: list[str]
    finished: torch.Tensor  # (B,) bool
    columns: dict[str, list]
    packed: PackedGroups | None = None  # the same rows packed by group, when the policy reads them


Source = Callable[[Completions], torch.Tensor]  # -> (B,) float32 scores


class Scorer:
    """The score of each completion: the weighted sum of its sources' scores (one source: that score), plus the
    built-in task's gold judge for honesty. Sources: 'model' (--reward), 'length', 'gold', a function spec, or a
    reward model directory (--extra-rewards)."""

    def __init__(self, sources: list[tuple[str, Source]], weights: list[float], task=None):
        assert len(sources) == len(weights), f"{len(sources)} reward sources but {len(weights)} weights"
        self.names = [name for name, _ in sources]
        self.sources = [s for _, s in sources]
        self.weights = weights
        self.task = task

    def __call__(self, c: Completions) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(scores (B,), each source's scores (B,) before weighting)."""
        parts = [source(c) for source in self.sources]
        return weighted_scores(parts, self.weights), parts

    def ensemble_metrics(self) -> dict[str, float]:
        """The members' disagreement on the last scored batch, for each reward-model ensemble among the sources
        (K > 1): `objective/ensemble_std` for --reward-fn, `objective/ensemble_std_{i}` for source i > 0."""
        out = {}
        for i, source in enumerate(self.sources):
            std = getattr(source, "disagreement", None)
            if std is not None:
                out["objective/ensemble_std" + (f"_{i}" if i else "")] = std
        return out

    def gold(self, c: Completions) -> list[float]:
        """The task's gold score of each completion ([] without the built-in task)."""
        if self.task is None:
            return []
        return [self.task.score(p, t, bool(f)) for p, t, f in zip(c.prompts, c.texts, c.finished)]


class RewardModelSource:
    """A frozen reward model - or an ensemble of K (`rlhf reward --ensemble K`) - as a score source: each member's
    scores normalised with its own stored statistics and clipped [D7], then reduced to one per completion
    (`reduce_ensemble`: mean, min or mean - lambda * std). `disagreement`: the mean over the last batch of the
    members' std (None for a single model)."""

    def __init__(
        self,
        path,
        tok: Tokenizer,
        dev: torch.device,
        normalize: bool,
        clip: float,
        reduce: str = "mean",
        lam: float = 1.0,
    ):
        self.model, rm_tok, rm_cfg, norms = load_reward_ensemble(path)
        disable_dropout(self.model).to(dev).eval().requires_grad_(False)
        self.norms = norms if normalize else [None] * len(norms)
        self.clip, self.reduce, self.lam = clip, reduce, lam
        self.inputs = RewardInputs(tok, rm_tok, rm_cfg)
        self.packable = (
            self.inputs.tok is None and self.model.pooling == "last" and self.model.reads_packed_pairs
        )
        self.disagreement: float | None = None

    def __call__(self, c: Completions) -> torch.Tensor:
        with torch.inference_mode():
            if self.packable and c.packed is not None:  # each prompt once; the score at each one's last token
                s = self.model(c.packed.ids, None, c.packed.last, c.packed.segments)  # (K, B/G, G)
            else:
                s = self.model.score(*self.inputs(c.ids, c.mask, c.prompts, c.texts, c.finished))  # (K, B)
            s = s.reshape(s.size(0), -1).float()
        s = torch.stack(
            [
                normalize_scores(row, n["mean"] if n else None, n["std"] if n else None, self.clip)
                for row, n in zip(s, self.norms)
            ]
        )
        if len(s) > 1:
            self.disagreement = float(ensemble_std(s).mean())
        return reduce_ensemble(s, self.reduce, self.lam)


def build_scorer(cfg: PPOConfig, tok: Tokenizer, task, dev: torch.device) -> Scorer:
    """The Scorer of --reward-fn (+ --extra-rewards, --reward-weights); functions are imported here, so a broken
    one fails before any model trains."""
    from rlhf.errors import UserError

    def source(spec: str) -> Source:
        if spec == "model":
            return RewardModelSource(*model_args(cfg.reward))
        if spec == "length":
            return lambda c: torch.tensor([len(t) / 100 for t in c.texts], device=dev)
        if spec == "gold":
            if task is None:
                raise UserError("--reward-fn gold needs the built-in task (no --prompts file)")
            return lambda c: torch.tensor(
                [task.score(p, t, bool(f)) for p, t, f in zip(c.prompts, c.texts, c.finished)], device=dev
            )
        if is_function_spec(spec):
            fn = load_reward_fn(spec)
            return lambda c: fn(c.prompts, c.texts, c.columns).to(dev)
        return RewardModelSource(*model_args(spec))

    def model_args(path) -> tuple:
        return path, tok, dev, cfg.normalize_reward, cfg.reward_clip, cfg.ensemble_reduce, cfg.ensemble_lambda

    specs = [cfg.reward_fn, *map(str, cfg.extra_rewards)]
    weights = list(cfg.reward_weights) or [1.0] * len(specs)
    return Scorer([(s, source(s)) for s in specs], weights, task)


# ------------------------------------------------------------------------------------------------ experience
@dataclass
class Experience:
    """One update's rollouts, everything the rewards, advantages and update need.

    B = completions (prompts x G; a prompt's G completions are consecutive rows and form one group), T = columns of
    the right-aligned prompt + response rows, N = response columns (the token budget, or fewer when every row
    stopped early).
    """

    ids: torch.Tensor  # (B, T) prompt + response, right-padded
    mask: torch.Tensor  # (B, T) real tokens
    resp_pos: torch.Tensor  # (B, N) column of each response token in `ids`
    response_mask: torch.Tensor  # (B, N) real response tokens (up to and including the first EOS)
    logprobs: (
        torch.Tensor
    )  # (B, N) policy log-probs recomputed by a training forward at the sampling temperature
    sampler_logprobs: torch.Tensor  # (B, N) the sampler's own log-probs of the same tokens (0 at padding)
    ref_logprobs: torch.Tensor | None  # (B, N) frozen reference; None without a reference (--kl-coef 0)
    values: torch.Tensor | None  # (B, N) value model; None with --value-model none
    entropy: torch.Tensor  # (B, N) policy entropy at each response position
    scores: torch.Tensor  # (B,) the weighted score of each completion (before the missing-EOS penalty)
    score_parts: list[torch.Tensor]  # each reward source's (B,) scores, before weighting
    finished: torch.Tensor  # (B,) bool: the completion produced EOS within the budget
    group: torch.Tensor  # (B,) long: index of the completion's prompt in this batch (its group)
    prompts: list[str]  # (B) prompt text of each row
    texts: list[str]  # (B) completion text
    gold: list[float]  # (B) gold judge's score ([] without the built-in task)
    # (logits, values) of the rollout's policy(+value) forward with its autograd graph, when the first update epoch
    # reuses it (one minibatch, one process, no accumulation); else None.
    graph: tuple[torch.Tensor, torch.Tensor | None] | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # {"generation": s, "scoring": s}

    @property
    def targets(self) -> torch.Tensor:
        """(B, N) the response token ids (what the log-probs are of)."""
        return response_targets(self.ids, self.resp_pos)

    @property
    def positions(self) -> torch.Tensor:
        """(B, N) the positions whose outputs predict the response tokens (all the update reads)."""
        return predicting(self.resp_pos, self.ids.size(1))


def rollout(
    model: PolicyValue,
    ref: nn.Module | None,
    scorer: Scorer,
    tok: Tokenizer,
    prompts: list[str],
    prompt_tokens: list[list[int]],
    columns: dict[str, list],
    cfg: PPOConfig,
    generator: torch.Generator,
    autocast: Callable,
    keep_graph: bool = False,
) -> Experience:
    """Sample cfg.samples_per_prompt completions of each prompt, recompute log-probs and values, score them.

    [D1] KV-cache sampling at cfg.temperature with a fixed token budget, padding after the first EOS; [D4] policy and
    reference log-probs recomputed at that temperature, read only at the positions predicting the response; [D6-D7]
    scores. `keep_graph`: the policy(+value) forward keeps its autograd graph (Experience.graph) for the first update
    epoch - the weights do not change in between, so it *is* that epoch's forward: two forwards fewer per update.
    """
    t0 = time.time()
    dev = generator.device
    G = cfg.samples_per_prompt
    prompts = [p for p in prompts for _ in range(G)]  # a prompt's G completions are consecutive rows
    columns = {k: [v for v in vs for _ in range(G)] for k, vs in columns.items()}
    group = torch.arange(len(prompt_tokens), device=dev).repeat_interleave(G)
    p_ids, p_mask = pad([t for t in prompt_tokens for _ in range(G)], tok.pad_id, side="left")
    p_ids, p_mask = p_ids.to(dev), p_mask.to(dev)
    model.eval()
    with autocast():
        roll = sample(
            model.policy,
            p_ids,
            p_mask,
            cfg.response_length,
            tok.eos_id,
            tok.pad_id,
            cfg.temperature,
            generator=generator,
        )
    r_mask = roll.response_mask
    ids, mask, resp_pos = right_align(p_ids, p_mask, roll.response_ids, r_mask, tok.pad_id)
    t1 = time.time()

    # Log-probs and values: the training forward's view of the sampled tokens (--dtype bf16: forwards autocast,
    # log-probs, entropies and values float32). With G > 1 completions per prompt on a model that reads packed rows,
    # each prompt is read once for all its completions (PackedGroups): same outputs, far fewer tokens.
    pos, targets = predicting(resp_pos, ids.size(1)), response_targets(ids, resp_pos)
    B, N = r_mask.shape
    packed = None
    if G > 1 and reads_packed_groups(model.policy) and (ref is None or reads_packed_groups(ref)):
        packed = pack_groups(ids, resp_pos, r_mask, G, tok.pad_id)
    inputs = (ids, mask, pos) if packed is None else (packed.ids, None, packed.predicting)
    segments = None if packed is None else packed.segments

    def unpack(out):  # packed outputs (B/G, G*N, ...) -> (B, N, ...)
        return out if packed is None or out is None else out.reshape(B, N, *out.shape[2:])

    graph = None
    if keep_graph:
        model.train()
        graph = tuple(unpack(t) for t in model.forward_concurrently(*inputs, autocast, segments))
        logits, values = (t.detach() if t is not None else None for t in graph)
    else:
        with torch.inference_mode():
            logits, values = (unpack(t) for t in model.forward_concurrently(*inputs, autocast, segments))
    with torch.inference_mode():
        logprobs = logprobs_from_logits(logits, targets, cfg.temperature)
        entropy = entropy_from_logits(logits, cfg.temperature)
        values = values.float() if values is not None else None
        ref_logprobs = None
        if ref is not None and packed is not None:
            with autocast():
                ref_logits = unpack(
                    ref(packed.ids, None, positions=packed.predicting, segments=packed.segments)
                )
            ref_logprobs = logprobs_from_logits(ref_logits, targets, cfg.temperature)
        elif ref is not None:
            with autocast():
                ref_logprobs = response_logprobs(ref, ids, mask, resp_pos, cfg.temperature)
    del logits

    texts = [tok.decode(row[m].tolist()) for row, m in zip(roll.response_ids, r_mask)]
    c = Completions(ids, mask, prompts, texts, roll.finished, columns, packed)
    scores, parts = scorer(c)
    t2 = time.time()
    return Experience(
        ids=ids,
        mask=mask,
        resp_pos=resp_pos,
        response_mask=r_mask,
        logprobs=logprobs,
        sampler_logprobs=roll.logprobs,
        ref_logprobs=ref_logprobs,
        values=values,
        entropy=entropy,
        scores=scores,
        score_parts=parts,
        finished=roll.finished,
        group=group,
        prompts=prompts,
        texts=texts,
        gold=scorer.gold(c),
        graph=graph,
        seconds={"generation": t1 - t0, "scoring": t2 - t1},
    )
