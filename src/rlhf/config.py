"""One dataclass per command; the CLI is generated from them by tyro (field docstrings become `--help`).

Precedence: dataclass defaults < `--config FILE` (YAML/TOML/JSON) < command-line flags.
Derived values are computed once, in `__post_init__`, never re-derived inside the stages.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import re
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tomllib
import tyro
import yaml

from rlhf.data.loader import ColumnKeys
from rlhf.errors import UserError
from rlhf.models.gpt import GPTConfig

# ------------------------------------------------------------------------------------------------ shared parts
EnsembleReduce = Literal["mean", "min", "mean-minus-std"]  # rlhf.rl.ENSEMBLE_REDUCTIONS


@dataclass
class RunConfig:
    """Options every command takes."""

    out: Path = Path("runs/out")
    """Directory for this command's outputs (checkpoint, metrics.jsonl, summary.json)."""
    seed: int = 0
    """Random seed: the same seed on the same machine gives the same run."""
    config: Path | None = None
    """YAML/TOML/JSON file of option values (keys as in --help, '-' or '_'); flags override it."""
    threads: int = 0
    """CPU threads for PyTorch (0 = torch's default)."""
    progress: bool = True
    """Show a progress bar on long work."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where models run: 'auto' = a CUDA GPU when one is visible, else the CPU (under torchrun: GPU LOCAL_RANK)."""
    dist_timeout: float = 1800.0
    """Under torchrun: seconds a collective waits for the other processes before the run stops with an error (a
    process or node that died); longer than any evaluation rank 0 runs alone while the others wait."""
    overwrite: bool = False
    """Replace the run already in --out (its files are kept aside until this run's first checkpoint exists);
    without it, an --out holding another run's outputs is refused (use --resume to continue that run)."""

    def __post_init__(self):
        # Every command's config (and every one code builds) is checked here, before anything is derived from
        # it: a 0 or -1 that a subclass would read as "auto" must be judged as the user gave it.
        validate(self)


@dataclass
class TaskConfig:
    """The built-in instruction task (used when no data file is given)."""

    name: str = "instruct"
    """Built-in task name."""
    n_train: int = 4000
    """Training examples (or pairs) to generate."""
    n_eval: int = 400
    """Held-out examples (or pairs) to generate from the test split."""
    label_noise: float = 0.1
    """Probability that a preference label is flipped (a reward model cannot reach 100%)."""
    length_bias: float = 0.0
    """Annotator bias toward longer answers (0 = none): a length bonus in the comparison, +0.01 gold per byte
    at 1; for reward-hacking experiments (detector: hack/padded_rate)."""
    label_by: Literal["score", "helpful", "concise"] = "score"
    """What annotators compare when labelling pairs: the whole gold score, or only its 'helpful' or 'concise'
    part (reward models of a single objective)."""
    bias_sycophancy: float = 0.0
    """Probability that the annotator prefers the answer agreeing with a prompt's wrong premise ("I'm sure Peru's
    capital is Paris. What is it?"), whatever the gold judge says (0 = none); detector: hack/sycophantic_rate."""
    bias_hedging: float = 0.0
    """Probability that the annotator prefers the hedged answer of a pair with one ("I think", "not sure"),
    whatever the gold judge says (0 = none); detector: hack/hedging_rate."""
    bias_format: float = 0.0
    """Probability that the annotator prefers the decorated answer of a pair with one (bold, bullet, header),
    whatever the gold judge says (0 = none); detector: hack/formatted_rate."""
    premise_fraction: float = 0.0
    """Share of capital prompts that carry a user's wrong premise, in prompts, SFT data and pairs (0 = 0.5 when
    --task.bias-sycophancy > 0, else none)."""
    format_fraction: float = 0.0
    """Share of SFT demonstrations with a decorated answer; when on, pairs draw decorated answers too (0 = 0.1
    when --task.bias-format > 0, else none)."""
    agree_fraction: float = 0.0
    """Share of premise prompts whose SFT demonstration agrees with the wrong premise (0 = only the 'wrong'
    demonstrations, a tenth): a policy must sometimes agree before RL against a sycophancy-biased reward model
    can make it agree more."""


@dataclass
class DataKeys:
    """Column names of user data files."""

    prompt_key: str = "prompt"
    """Column holding the prompt."""
    response_key: str = "response"
    """Column holding the response (SFT files)."""
    chosen_key: str = "chosen"
    """Column holding the preferred response (pair files)."""
    rejected_key: str = "rejected"
    """Column holding the dispreferred response (pair files)."""
    margin_key: str = "margin"
    """Optional column with a per-pair margin for the reward loss."""
    messages_key: str = "messages"
    """Column holding a whole conversation (a list of role/content messages) for SFT."""
    completion_key: str = "completion"
    """Column holding the completion (prompt-completion files; text or assistant messages)."""
    split: Annotated[str, tyro.conf.arg(prefix_name=False)] = ""
    """For a directory of shards or a saved DatasetDict: the split to read, e.g. 'train' or 'test' (a shard is
    picked when its path names it); empty = 'train' where there is one, else everything."""

    def column_keys(self) -> ColumnKeys:
        """The loader's view of these names."""
        return ColumnKeys(
            self.prompt_key,
            self.chosen_key,
            self.rejected_key,
            self.response_key,
            self.margin_key,
            self.messages_key,
            self.completion_key,
        )


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, gradient clipping and accumulation."""

    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.1
    """AdamW weight decay (matrices only; biases, norms and embeddings are not decayed)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""


@dataclass
class TrainConfig(RunConfig):
    """Options every training command (sft, reward, ppo) takes: LoRA, precision, memory, TensorBoard."""

    lora_rank: int = 0
    """LoRA rank r: train low-rank adapters instead of the full weights (0 = off; needs the `hf` extra)."""
    lora_alpha: float = 0.0
    """LoRA alpha: adapters are scaled by alpha / r (0 = 2 x rank)."""
    lora_targets: list[str] = field(default_factory=list)
    """Layer names to adapt, e.g. c_attn c_proj c_fc (none = every attention and MLP matrix of the architecture)."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Forward precision: fp32, or bf16 autocast (weights, losses, log-probs and advantages stay float32)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them (less memory, one more forward per step)."""
    tensorboard: bool = False
    """Also write the metrics to a TensorBoard event file under --out/tensorboard (needs the `tensorboard` extra)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: ddp keeps a whole model in every process; fsdp (FSDP2) shards parameters, gradients and
    optimizer state across them, with sharded resume checkpoints (the built-in GPT in sft, reward and dpo, for now)."""


# ------------------------------------------------------------------------------------------------ commands
@dataclass
class SFTConfig(TrainConfig):
    """Stage 1: supervised fine-tuning, next-token loss on response tokens only."""

    out: Path = Path("runs/sft")
    """Directory for the checkpoint, metrics.jsonl and summary.json."""
    data: list[Path] = field(default_factory=list)
    """SFT data: prompt/response (or completion) text, 'messages' conversations, or pairs (trains on chosen) - in
    JSONL/JSON/CSV, Parquet, a directory of shards or a save_to_disk directory; several files mix (see
    --data-weights); none = the built-in task."""
    data_weights: list[float] = field(default_factory=list)
    """Sampling weight of each --data file (e.g. 0.7 0.3); none = every example of every file once."""
    keys: DataKeys = field(default_factory=DataKeys)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: str = "gpt"
    """Policy: 'gpt' (the built-in GPT: fresh of --arch, or --init's) or a local Hugging Face causal LM directory."""
    arch: GPTConfig = field(default_factory=GPTConfig)
    init: Path | None = None
    """Start from this checkpoint directory instead of random weights."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 32
    """Sequences per micro-batch."""
    epochs: float = 3.0
    """Passes over the training data (fractions allowed)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = use epochs)."""
    max_length: int = 128
    """Longest sequence in tokens; longer examples lose their oldest prompt tokens (counted, never dropped)."""
    eval_fraction: float = 0.1
    """Share of a user data file held out for evaluation (the built-in task has its own test split)."""
    eval_every: int = 100
    """Evaluate held-out loss every N steps."""
    log_every: int = 10
    """Log training metrics every N steps."""
    save_every: int = 200
    """Write a resume checkpoint every N steps."""
    resume: bool = False
    """Continue from the newest resume checkpoint in --out."""
    gold_samples: int = 128
    """Held-out prompts sampled to measure the gold score before and after training (built-in task; 0 = skip)."""
    max_new_tokens: int = 48
    """Token budget for those samples."""


@dataclass
class SampleConfig(RunConfig):
    """Generate from any checkpoint."""

    out: Path = Path("runs/sample")
    """Directory for summary.json with the samples."""
    checkpoint: Path = Path("runs/sft")
    """Checkpoint directory to sample from."""
    prompt: list[str] = field(default_factory=list)
    """Prompt(s) to complete; none = a few held-out prompts of the built-in task."""
    n: int = 1
    """Samples per prompt."""
    max_new_tokens: int = 64
    """Most tokens to generate."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches p."""


@dataclass
class DataValidateConfig(RunConfig):
    """Read a data file the way the stages will and report what is in it."""

    file: Path = Path("data.jsonl")
    """The file to check: .jsonl/.json/.csv (optionally gzip-compressed), .parquet, a directory of shards or a
    save_to_disk directory."""
    out: Path = Path("runs/validate")
    """Directory for summary.json with the report."""
    keys: DataKeys = field(default_factory=DataKeys)
    max_length: int = 512
    """Count how many examples would be truncated at this many tokens."""
    tokenizer: str = "byte"
    """'byte' (the built-in model's) or a local Hugging Face model/tokenizer directory."""


@dataclass
class RewardConfig(TrainConfig):
    """Stage 2: a reward model (transformer + scalar head) trained with the Bradley-Terry loss on preference pairs."""

    out: Path = Path("runs/reward")
    """Directory for the checkpoint, metrics.jsonl and summary.json."""
    data: list[Path] = field(default_factory=list)
    """Preference pairs (explicit prompt, or whole HH-style transcripts / conversations; text or messages) in any
    container the loader reads; several files mix (see --data-weights); none = the built-in task."""
    data_weights: list[float] = field(default_factory=list)
    """Sampling weight of each --data file (e.g. 0.7 0.3); none = every example of every file once."""
    keys: DataKeys = field(default_factory=DataKeys)
    task: TaskConfig = field(default_factory=lambda: TaskConfig(n_train=36_000))
    """The built-in task's pairs. 36,000 by default: from the demo's SFT checkpoint, 3 epochs over 36k pairs agreed
    with the gold judge on 0.945 of clean held-out pairs, 12k on 0.877, 4k on 0.848 - the model learns to check
    answers (not only formats) late; ~12-18 min on 2 cores. `--task.n-train 4000` for a 1.5-minute model."""
    model: str = "gpt"
    """Backbone: 'gpt' (the built-in GPT; from --init when given), 'minilm', or a local Hugging Face model directory."""
    init: Path | None = None
    """SFT checkpoint to initialise the built-in GPT backbone from (recommended)."""
    arch: GPTConfig = field(default_factory=GPTConfig)
    """Architecture of a fresh built-in GPT (only when --model gpt and no --init)."""
    threads: int = 0
    """CPU threads for PyTorch (0 = torch's default; with a Hugging Face backbone, only the cores other running
    jobs leave free: 2 threads fighting another job for 2 cores run ~2x slower than 1)."""
    pooling: Literal["last", "mean"] = "last"
    """Read the score at the last real token (EOS), or average over real tokens."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.0, weight_decay=0.0, warmup_steps=10))
    batch_size: int = 16
    """Pairs per micro-batch (chosen and rejected go through one forward pass together)."""
    epochs: float = 0.0
    """Passes over the training pairs (0 = 1 for Hugging Face backbones, 3 for the built-in GPT)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = use epochs)."""
    max_length: int = 0
    """Longest sequence in tokens (0 = 128 for Hugging Face backbones, the GPT's block size otherwise)."""
    eval_fraction: float = 0.1
    """Share of a user data file held out for evaluation (the built-in task has its own test split)."""
    label_smoothing: float = 0.0
    """Label smoothing eps in -(1-eps)*log s(d) - eps*log s(-d)."""
    center_rewards: float = 0.0
    """Coefficient c of c*mean((r+ + r-)^2) keeping rewards centred (Eisenstein et al. 2023 use 0.01)."""
    use_margin: bool = True
    """Use the data's margin column (-log s(r+ - r- - margin)) when present."""
    eval_every: int = 50
    """Evaluate held-out accuracy every N steps."""
    log_every: int = 10
    """Log training metrics every N steps."""
    save_every: int = 200
    """Write a resume checkpoint every N steps."""
    resume: bool = False
    """Continue from the newest resume checkpoint in --out."""
    n_bins: int = 10
    """Bins of the reliability table / expected calibration error."""
    ensemble: int = 1
    """Train K reward models into one run directory (PPO/GRPO and `reward eval` read them as an ensemble): each on
    its own bootstrap resample of the training pairs, member k with seed + k, one after another (1 = one model)."""
    ensemble_shared_trunk: bool = False
    """With --ensemble K: one trunk with K linear heads, each fitted to its own bootstrap weights of the pairs - one
    forward for all K, ~1/K of the time, but the heads disagree far less than independent members."""

    def __post_init__(self):
        # Hugging Face defaults tuned on HH-RLHF harmless with MiniLM-L6 on 2 CPU cores (benchmarks/README.md):
        # one epoch at 1e-4 beat two at 5e-5 and fits 10 minutes; 128 tokens (oldest prompt tokens dropped, the
        # response kept) scored within noise of 256 at ~0.55x the time.
        # The built-in GPT (from an SFT checkpoint): 1e-3 learned to check answers faster than 3e-4 on the
        # built-in task (held-out accuracy 0.738 vs 0.717 after 200 steps; 3e-3 was worse).
        super().__post_init__()
        if self.ensemble_shared_trunk and self.ensemble < 2:
            raise UserError("--ensemble-shared-trunk needs --ensemble K with K >= 2 (the number of heads)")
        hf = self.model != "gpt"
        if self.optim.lr <= 0:
            self.optim.lr = 1e-4 if hf else 1e-3
        if self.epochs <= 0:
            self.epochs = 1.0 if hf else 3.0
        if self.max_length <= 0:
            self.max_length = 128 if hf else self.arch.block_size
        if self.threads <= 0 and hf:
            self.threads = self.free_cores()

    @staticmethod
    def free_cores() -> int:
        """Cores other jobs leave free, at least 1; 0 (torch's default) when nothing else is running.

        Linux: the runnable-task count of /proc/loadavg, sampled for ~0.3 s (instantaneous, so a job that just
        ended does not count); elsewhere the 1-minute load average.
        """
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            n = os.cpu_count() or 1
        try:
            samples = []
            for _ in range(6):
                with open("/proc/loadavg") as f:
                    samples.append(int(f.read().split()[3].split("/")[0]) - 1)  # minus this process
                time.sleep(0.05)
            busy = round(sum(samples) / len(samples))
        except (OSError, ValueError, IndexError):
            try:
                busy = round(os.getloadavg()[0])
            except (AttributeError, OSError):  # pragma: no cover - no load average (Windows)
                return 0
        return 0 if busy <= 0 else max(1, n - busy)


@dataclass
class RewardEvalConfig(RunConfig):
    """Evaluate a reward model on preference pairs: accuracy, margin, reward stats, calibration (ECE)."""

    out: Path = Path("runs/reward-eval")
    """Directory for summary.json."""
    checkpoint: Path = Path("runs/reward")
    """Reward model checkpoint directory."""
    data: Path | None = None
    """Preference pairs file; none = held-out pairs of the built-in task."""
    keys: DataKeys = field(default_factory=DataKeys)
    task: TaskConfig = field(default_factory=TaskConfig)
    batch_size: int = 32
    """Pairs per forward pass."""
    max_length: int = 0
    """Longest sequence in tokens (0 = the checkpoint's training max length)."""
    n_bins: int = 10
    """Bins of the reliability table."""
    ensemble_reduce: EnsembleReduce = "mean"
    """A reward-model ensemble's score (see `rlhf ppo --ensemble-reduce`); each member is also reported alone."""
    ensemble_lambda: float = 1.0
    """lambda of --ensemble-reduce mean-minus-std."""


@dataclass
class DPOConfig(TrainConfig):
    """Offline preference optimisation from the SFT policy: DPO (Rafailov et al. 2023) and its relatives - IPO,
    cDPO / robust DPO (label smoothing), hinge (SLiC), SimPO (no reference) - on preference pairs, with the frozen
    SFT model as the reference. No reward model, no sampling."""

    out: Path = Path("runs/dpo")
    """Directory for the policy checkpoint, metrics.jsonl and summary.json."""
    sft: Path = Path("runs/sft")
    """SFT checkpoint: the policy's starting point and the frozen reference."""
    data: list[Path] = field(default_factory=list)
    """Preference pairs in any pair schema and container the loader reads; several files mix (see
    --data-weights); none = the built-in task's pairs."""
    data_weights: list[float] = field(default_factory=list)
    """Sampling weight of each --data file (e.g. 0.7 0.3); none = every example of every file once."""
    keys: DataKeys = field(default_factory=DataKeys)
    task: TaskConfig = field(default_factory=TaskConfig)
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "simpo"] = "sigmoid"
    """'sigmoid' (DPO; cDPO with --label-smoothing), 'ipo', 'hinge' (SLiC), 'robust' (robust DPO), 'simpo'
    (length-normalised log-probs, no reference model)."""
    beta: float = 0.1
    """beta: the strength of the implicit KL leash (SimPO's reward scale; 2.0 is SimPO's usual value)."""
    label_smoothing: float = 0.0
    """Assumed share of flipped labels (cDPO with 'sigmoid', robust DPO with 'robust'); < 0.5."""
    simpo_gamma: float = 0.5
    """SimPO's target margin gamma."""
    rpo_alpha: float = 0.0
    """Weight of an NLL term on the chosen response, per token (RPO; 0 = off)."""
    precompute_ref: bool = True
    """Compute the reference log-probs of every pair once before training (else every step)."""
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.0, warmup_steps=10, min_lr_ratio=0.1)
    )
    batch_size: int = 32
    """Pairs per micro-batch."""
    epochs: float = 1.0
    """Passes over the training pairs (fractions allowed)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = use epochs)."""
    max_length: int = 0
    """Longest sequence in tokens (0 = the policy's block size, or 512); longer pairs lose their oldest prompt
    tokens (counted, never dropped)."""
    eval_fraction: float = 0.1
    """Share of a user data file held out for evaluation (the built-in task has its own test split)."""
    eval_every: int = 50
    """Evaluate held-out pairs (and the gold score of samples) every N steps."""
    log_every: int = 10
    """Log training metrics every N steps."""
    save_every: int = 200
    """Write a resume checkpoint every N steps."""
    resume: bool = False
    """Continue from the newest resume checkpoint in --out."""
    gold_samples: int = 64
    """Held-out prompts sampled at each evaluation for the gold score (built-in task; 0 = skip)."""
    max_new_tokens: int = 32
    """Token budget for those samples."""
    temperature: float = 0.7
    """Sampling temperature of those samples."""

    def __post_init__(self):
        super().__post_init__()  # --label-smoothing in [0, 0.5) and --beta > 0: OPTION_BOUNDS


BUILTIN_REWARD_FNS = ("model", "length", "gold")


@dataclass
class PPOConfig(TrainConfig):
    """Stage 3, on-policy RL (`rlhf ppo`): PPO with GAE and a value model, against a reward model, with a per-token
    KL penalty to the frozen SFT reference. `rlhf grpo` and `rlhf rloo` run the same loop with other defaults;
    docs/algorithms.md has each algorithm's equations."""

    out: Path = Path("runs/ppo")
    """Directory for the policy checkpoint, metrics.jsonl and summary.json."""
    sft: Path = Path("runs/sft")
    """SFT checkpoint: the policy's starting point and the frozen reference."""
    reward: Path = Path("runs/reward")
    """Reward model checkpoint (frozen): scores rollouts with --reward-fn model; a separate value model starts from it."""
    reward_fn: str = "model"
    """The score of a rollout: 'model' (the --reward model), 'length' (the flawed len(response)/100), 'gold' (the
    built-in task's judge: an oracle), or a Python function 'path/to/file.py:name' / 'package.module:name' called
    as fn(prompts, completions, **columns) -> list[float], columns = the prompt file's other columns."""
    extra_rewards: list[str] = field(default_factory=list)
    """More reward sources (reward model checkpoint dirs or function specs): the score becomes the weighted sum."""
    reward_weights: list[float] = field(default_factory=list)
    """Weights of --reward-fn and then each --extra-rewards (none = 1 each), e.g. 0.7 0.3."""
    prompts: Path | None = None
    """Prompt file (any schema with a prompt column; other columns reach reward functions); none = built-in task."""
    keys: DataKeys = field(default_factory=DataKeys)
    task: TaskConfig = field(default_factory=TaskConfig)
    advantage: Literal["gae", "grpo", "rloo", "reinforce++"] = "gae"
    """Advantage estimator: 'gae' (needs a value model), 'grpo' (group-normalised score), 'rloo' (leave-one-out
    baseline), 'reinforce++' (discounted KL-penalised returns whitened over the batch)."""
    samples_per_prompt: int = 1
    """G completions per prompt, sampled as consecutive rows: one group (grpo and rloo compare within it)."""
    value_model: Literal["separate", "shared", "none"] = "separate"
    """'separate': a value model initialised from the reward model (Huang et al.); 'shared': a value head on the
    policy trunk; 'none': no value model (critic-free advantages)."""
    episodes: int = 4096
    """Total prompts to sample over the run (each gives --samples-per-prompt completions)."""
    rollout_batch: int = 64
    """Prompts sampled per update (completions per update: rollout-batch x samples-per-prompt)."""
    mini_batches: int = 2
    """Minibatches per epoch over each update's completions (one optimizer step each)."""
    ppo_epochs: int = 4
    """Passes over each rollout batch (InstructGPT used 4)."""
    response_length: int = 32
    """New tokens per response (stops early at EOS; the rest is padding)."""
    max_prompt_length: int = 64
    """Longest prompt in tokens (older tokens dropped first, counted)."""
    temperature: float = 0.7
    """Sampling temperature; log-probs are recomputed at the same temperature."""
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=3e-5, weight_decay=0.0, warmup_steps=0, min_lr_ratio=1.0)
    )
    value_lr_mult: float = 10.0
    """The value model's learning rate as a multiple of the policy's (OpenRLHF's defaults are 9x)."""
    kl_coef: float = 0.05
    """Initial beta of the KL term (0 = no KL and no reference model loaded)."""
    kl_in: Literal["reward", "loss"] = "reward"
    """Where the KL goes: 'reward' = a per-token penalty -beta*kl_t in the reward; 'loss' = beta*agg(kl_t) added to
    the policy loss (GRPO)."""
    kl_target: float = 0.0
    """Target KL for the adaptive controller (Ziegler et al.); 0 = fixed beta."""
    kl_horizon: int = 10000
    """Horizon of the adaptive KL controller, in episodes."""
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = "k1"
    """Per-token KL estimator (k3 with --kl-in loss, as GRPO)."""
    gamma: float = 1.0
    """Discount of GAE and of REINFORCE++'s returns."""
    lam: float = 0.95
    """Lambda of GAE."""
    cliprange: float = 0.2
    """PPO ratio clip epsilon (the lower side, and the upper unless --cliprange-high)."""
    cliprange_high: float = -1.0
    """Upper clip epsilon (DAPO clip-higher, e.g. 0.28); negative = --cliprange."""
    cliprange_value: float = 0.2
    """Value clip range."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (0 = off)."""
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    """How per-token losses become one: mean over all tokens; mean over rows of each row's mean; or the sum over
    tokens / (rows x --response-length) (Dr. GRPO)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """GRPO: divide centred scores by the group's std, the whole batch's std, or nothing (Dr. GRPO)."""
    mask_truncated: bool = False
    """Completions that hit --response-length without EOS get no loss (DAPO overlong masking)."""
    normalize_reward: bool = True
    """Normalise reward-model scores with the reward model's stored mean/std (from its training)."""
    ensemble_reduce: EnsembleReduce = "mean"
    """One score from a reward-model ensemble's K normalised scores (`rlhf reward --ensemble K`): 'mean', 'min'
    (worst case, Coste et al. 2023) or 'mean-minus-std' (mean - lambda x the members' std: uncertainty-penalised,
    Eisenstein et al. 2023). A single reward model is unaffected."""
    ensemble_lambda: float = 1.0
    """lambda of --ensemble-reduce mean-minus-std (1 = Eisenstein et al.'s mean - std)."""
    reward_clip: float = 5.0
    """Clip normalised reward-model scores to +-reward_clip (0 = off)."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards of each batch before the advantages (scale only)."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of a response that never produced EOS (the 'EOS trick')."""
    log_every: int = 1
    """Log metrics every N updates."""
    save_every: int = 16
    """Write a resume checkpoint every N updates."""
    resume: bool = False
    """Continue from the newest resume checkpoint in --out."""

    @property
    def stage(self) -> str:
        """The stage's name in config.json and in errors: ppo for GAE, else the advantage (grpo, rloo, ...)."""
        return "ppo" if self.advantage == "gae" else self.advantage

    def __post_init__(self):
        super().__post_init__()  # the ranges of every option (OPTION_BOUNDS), before anything is derived
        if self.cliprange_high < 0:
            self.cliprange_high = self.cliprange
        if self.advantage == "gae" and self.value_model == "none":
            raise UserError(
                "--advantage gae needs a value model: use --value-model separate|shared, or "
                "--advantage grpo|rloo|reinforce++"
            )
        if self.advantage != "gae" and self.value_model != "none":
            raise UserError(
                f"--advantage {self.advantage} reads no value model: add --value-model none (a value model would "
                "be loaded and run for nothing)"
            )
        if self.advantage in ("grpo", "rloo") and self.samples_per_prompt < 2:
            raise UserError(
                f"--advantage {self.advantage} compares the completions of one prompt: it needs "
                f"--samples-per-prompt >= 2, got {self.samples_per_prompt}"
            )
        for spec in self.extra_rewards:
            if str(spec) in BUILTIN_REWARD_FNS:
                raise UserError(f"--extra-rewards takes reward model directories or functions, got {spec!r}")
        if self.reward_fn not in BUILTIN_REWARD_FNS and ":" not in self.reward_fn:
            raise UserError(
                f"--reward-fn must be one of {', '.join(BUILTIN_REWARD_FNS)} or a function "
                f"'path/to/file.py:name' / 'package.module:name', got {self.reward_fn!r}"
            )
        if self.reward_weights and len(self.reward_weights) != 1 + len(self.extra_rewards):
            n = 1 + len(self.extra_rewards)
            raise UserError(
                f"--reward-weights has {len(self.reward_weights)} values for {n} reward source"
                f"{'s' if n > 1 else ''} (--reward-fn, then each --extra-rewards)"
            )


# The commands below change defaults only; tyro takes each option's help from PPOConfig's field docstrings.
@dataclass
class GRPOConfig(PPOConfig):
    """`rlhf grpo`: GRPO (Shao et al. 2024) - G completions per prompt, advantage = the score normalised within its
    group, no value model, KL to the reference in the loss (k3, beta 0.04), one gradient step per rollout batch.
    Same loop and options as `rlhf ppo`; only the defaults differ."""

    out: Path = Path("runs/grpo")
    advantage: Literal["gae", "grpo", "rloo", "reinforce++"] = "grpo"
    samples_per_prompt: int = 4
    value_model: Literal["separate", "shared", "none"] = "none"
    episodes: int = 1024
    rollout_batch: int = 16
    mini_batches: int = 1
    ppo_epochs: int = 1
    kl_coef: float = 0.04
    kl_in: Literal["reward", "loss"] = "loss"
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = "k3"


@dataclass
class RLOOConfig(PPOConfig):
    """`rlhf rloo`: RLOO (Ahmadian et al. 2024) - G completions per prompt, advantage = the KL-penalised score minus
    the mean of the prompt's other G-1, no value model, one gradient step per rollout batch. Same loop and options
    as `rlhf ppo`; only the defaults differ."""

    out: Path = Path("runs/rloo")
    advantage: Literal["gae", "grpo", "rloo", "reinforce++"] = "rloo"
    samples_per_prompt: int = 4
    value_model: Literal["separate", "shared", "none"] = "none"
    episodes: int = 1024
    rollout_batch: int = 16
    mini_batches: int = 1
    ppo_epochs: int = 1


@dataclass
class CompareConfig(RunConfig):
    """SFT vs PPO policy side by side on held-out prompts: proxy reward, gold score, win rate, KL, length."""

    out: Path = Path("runs/compare")
    """Directory for summary.json (with a sample table)."""
    sft: Path = Path("runs/sft")
    """SFT checkpoint."""
    policy: Path = Path("runs/ppo")
    """PPO policy checkpoint."""
    reward: Path = Path("runs/reward")
    """Reward model checkpoint (the proxy); an ensemble's directory (`rlhf reward --ensemble K`): the proxy is its
    members' normalised scores reduced by --ensemble-reduce."""
    ensemble_reduce: EnsembleReduce = "mean"
    """How an ensemble's K normalised scores become the proxy: 'mean', 'min' or 'mean-minus-std' (as PPO's option;
    a single reward model is unaffected)."""
    ensemble_lambda: float = 1.0
    """lambda of --ensemble-reduce mean-minus-std."""
    prompts: Path | None = None
    """Prompt file; none = the built-in task's held-out prompts (gold score only there)."""
    keys: DataKeys = field(default_factory=DataKeys)
    n_prompts: int = 256
    """Held-out prompts to compare on."""
    samples_per_prompt: int = 2
    """Responses sampled per prompt and policy."""
    response_length: int = 32
    """New tokens per response."""
    temperature: float = 0.7
    """Sampling temperature (the same for both policies)."""
    bootstrap: int = 2000
    """Bootstrap resamples for the 95% confidence interval of the gold difference."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The built-in task whose held-out prompts are compared (only its prompt options matter: --task.premise-fraction
    puts wrong-premise prompts among them, so a sycophancy hack can show; n_train/n_eval are unused)."""


@dataclass
class DemoConfig(RunConfig):
    """The whole pipeline on the built-in task: SFT -> reward model -> PPO -> compare, in a few minutes on a CPU."""

    out: Path = Path("runs/demo")
    """Run directory: sft/, reward/, ppo/, compare/, summary.json."""
    sft_epochs: float = 4.0
    """SFT passes over the demonstrations."""
    sft_lr: float = 3e-3
    """SFT peak learning rate."""
    rm_pairs: int = 2000
    """Preference pairs for the reward model."""
    rm_epochs: float = 2.0
    """Reward-model passes over the pairs."""
    episodes: int = 1024
    """PPO episodes (prompts sampled)."""
    kl_coef: float = 0.5
    """PPO KL penalty beta. Large for a small reward model: past KL ~0.7 nats its blind spots get exploited
    (`rlhf experiment kl-sweep`: held-out gold 0.19 / 0.42 / 0.56 at beta 0.001 / 0.02 / 0.5)."""
    ppo_lr: float = 1e-4
    """PPO learning rate (the tiny built-in models move too slowly at the `rlhf ppo` default)."""
    compare_prompts: int = 256
    """Held-out prompts in the final comparison."""


@dataclass
class ReportConfig(RunConfig):
    """Build one self-contained report.html from the files of a run directory (never trains or loads a model)."""

    run_dir: Path = Path("runs/demo")
    """Run directory (e.g. the one `rlhf demo` wrote); report.html and plots/ go inside it."""
    out: Path = Path("runs/report")
    """Directory for summary.json (the path of the report)."""


@dataclass
class ExportConfig(RunConfig):
    """Write a Hugging Face model directory from a checkpoint: a policy as GPT2LMHeadModel, a reward model as
    GPT2ForSequenceClassification (or, on a Hugging Face trunk, the trunk plus a separate score head)."""

    out: Path = Path("runs/export")
    """Hugging Face model directory to write (replaces only an earlier export)."""
    checkpoint: Path = Path("runs/sft")
    """Checkpoint directory to export (SFT/PPO policy or reward model)."""
    check: bool = True
    """Load the written directory with transformers and compare its outputs with rlhf's before keeping it."""


@dataclass
class ImportHFConfig(RunConfig):
    """Read a local Hugging Face GPT-2 directory into a built-in GPT policy checkpoint (for --init / --sft)."""

    out: Path = Path("runs/import")
    """Directory for the policy checkpoint and summary.json."""
    model: Path = Path("gpt2")
    """Local Hugging Face GPT-2 directory (config.json, *.safetensors, tokenizer files); never downloaded."""


# ------------------------------------------------------------------------------------------------ experiments
@dataclass
class ExperimentConfig(RunConfig):
    """Options every `rlhf experiment <name>` takes."""

    out: Path = Path("runs/experiment")
    """Experiment directory: summary.json, metrics/*.jsonl, plots/*.png, report.html, runs/<sub-run>/."""
    quick: bool = False
    """A small setting that finishes in about 2 minutes on 2 CPU cores (4-6 for biases, ensemble and iterated) and
    still shows the effect."""
    sft: Path | None = None
    """Reuse this SFT checkpoint instead of training one (none = train a small one first, under runs/sft)."""
    episodes: int = 0
    """PPO episodes per run (0 = the setting's: fewer with --quick)."""


@dataclass
class LengthHackConfig(ExperimentConfig):
    """PPO against the flawed reward len(response)/100, with and without the KL leash: length vs gold score."""

    out: Path = Path("runs/length-hack")
    """Experiment directory."""
    betas: list[float] = field(default_factory=lambda: [0.0, 0.1])
    """KL coefficients, one PPO run each (0 = no leash)."""


@dataclass
class KLSweepConfig(ExperimentConfig):
    """PPO against one reward model at several KL coefficients: proxy reward, gold score and KL per beta."""

    out: Path = Path("runs/kl-sweep")
    """Experiment directory."""
    betas: list[float] = field(default_factory=lambda: [0.001, 0.02, 0.5])
    """KL coefficients, one PPO run each."""
    reward: Path | None = None
    """Reuse this reward model (none = train one from the SFT checkpoint)."""


@dataclass
class MultiObjectiveConfig(ExperimentConfig):
    """Helpfulness and conciseness reward models combined, vs helpfulness alone: the verbosity trap."""

    out: Path = Path("runs/multi-objective")
    """Experiment directory."""
    helpful_weight: float = 0.7
    """Weight of the helpfulness reward model's normalised score in the combined reward."""
    concise_weight: float = 0.3
    """Weight of the conciseness reward model's normalised score in the combined reward."""


@dataclass
class PoolingConfig(ExperimentConfig):
    """Reward model with last-token vs mean pooling: held-out accuracy and calibration (ECE)."""

    out: Path = Path("runs/pooling")
    """Experiment directory."""
    data: Path | None = None
    """Preference pairs file (e.g. HH-RLHF) instead of the built-in task."""
    keys: DataKeys = field(default_factory=DataKeys)


@dataclass
class CalibrationConfig(ExperimentConfig):
    """Reward-model margins and calibration on its training pairs vs unseen pairs, with a reliability diagram."""

    out: Path = Path("runs/calibration")
    """Experiment directory."""
    reward: Path | None = None
    """Reuse this reward model (trained on the built-in task with --seed; none = train one)."""


@dataclass
class OverOptimizationConfig(ExperimentConfig):
    """A length-biased reward model optimised with a small beta: gold and proxy reward against sqrt(KL)."""

    out: Path = Path("runs/overoptimization")
    """Experiment directory."""
    length_bias: float = 2.0
    """Annotator length bias of the reward model's training pairs (the task's --task.length-bias)."""
    kl_coef: float = 0.005
    """PPO KL coefficient (small, so the policy travels far from the reference)."""
    reward: Path | None = None
    """Reuse this reward model (none = train one on length-biased pairs)."""


@dataclass
class IteratedConfig(ExperimentConfig):
    """Iterated reward-model retraining: each round PPO against the current reward model, its samples labelled
    against SFT's by the task's annotator and added to the reward model's pairs, which is retrained."""

    out: Path = Path("runs/iterated")
    """Experiment directory."""
    rounds: int = 3
    """Rounds R: R PPO runs (one per reward model RM_1..RM_R) and R - 1 retrainings."""
    kl_coef: float = 0.005
    """PPO KL coefficient of every round (small, so each policy finds its reward model's blind spots)."""
    policy_pairs: int = 0
    """(policy sample, SFT sample) pairs on training prompts labelled and added per round (0 = 1.5 x the first
    pairs: 1,500 with --quick, 3,000 otherwise; with a third as many the rise in agreement was lost in noise)."""
    length_bias: float = 0.0
    """The annotator's length bias (--task.length-bias) for the first pairs and every round's labels; with it
    the annotator itself pays for padding, which retraining then cannot patch (see docs/experiments.md)."""


BiasArm = Literal["control", "length", "sycophancy", "hedging", "format"]


@dataclass
class BiasesConfig(ExperimentConfig):
    """One arm per annotator bias (length, sycophancy, hedging, format) against an unbiased control: the reward
    model learns the bias, PPO at a small beta exploits it (hack rate up, proxy up, gold down), a larger beta holds
    it back."""

    out: Path = Path("runs/biases")
    """Experiment directory."""
    arms: list[BiasArm] = field(
        default_factory=lambda: ["control", "length", "sycophancy", "hedging", "format"]
    )
    """Arms, each a reward model on pairs from an annotator with that bias ('control': none) and PPO against it."""
    betas: list[float] = field(default_factory=lambda: [0.02, 0.5])
    """KL coefficients (small, large) of the PPO runs of each arm (the kl-sweep's moderate and large beta: at its
    0.001 most policies ran away into unfinished text that no detector flags)."""
    large_beta_arms: list[BiasArm] = field(default_factory=list)
    """Arms that also get a PPO run at every larger beta (empty = every arm; --quick: 'hedging' and 'format' only,
    to keep it short); the other arms run at the first beta only."""
    strength: float = 0.8
    """Probability that the sycophancy/hedging/format annotator picks the biased response outright."""
    length_bias: float = 2.0
    """The length arm's annotator length bias (--task.length-bias)."""
    premise_fraction: float = 1.0
    """Share of capital prompts with a wrong premise, in every arm (one SFT and the same prompts for all). All of
    them by default: at 0.5 only 2.8% of pairs put a sycophantic answer beside another, too few to learn from."""
    format_fraction: float = 0.1
    """Share of SFT demonstrations with a decorated answer, in every arm (pairs then draw decorated answers)."""
    agree_fraction: float = 0.3
    """Share of premise prompts whose SFT demonstration agrees with the premise, in every arm (at 0 the SFT policy
    agreed with no held-out premise, and PPO cannot reinforce what it never samples)."""
    bias_pairs: int = 0
    """Held-out pairs per arm drawn to measure each reward model's bias preference (0 = the setting's: 400 with
    --quick, 1,000 otherwise; only those where exactly one response has the property count)."""


@dataclass
class EnsembleExperimentConfig(ExperimentConfig):
    """The over-optimisation curve (gold and proxy against sqrt(KL)) of PPO against one reward model and against
    reward-model ensembles of each size, with each reduction (mean, min, mean-minus-std)."""

    out: Path = Path("runs/ensemble")
    """Experiment directory."""
    sizes: list[int] = field(default_factory=list)
    """Reward-model counts K, one PPO run per reduction each (1 = the single model: one run); empty = 1 3 5
    (--quick: 1 3). The largest ensemble is trained once; a smaller one is its first K members."""
    reductions: list[EnsembleReduce] = field(default_factory=list)
    """Reductions of the ensembles' K scores (PPO's --ensemble-reduce); empty = mean min mean-minus-std (--quick:
    mean min)."""
    ensemble_lambda: float = 1.0
    """lambda of the mean-minus-std reduction."""
    kl_coef: float = 0.005
    """PPO KL coefficient of every run (small, so each policy travels far enough to over-optimise)."""
    length_bias: float = 2.0
    """Annotator length bias of every reward model's pairs (--task.length-bias), as `experiment overoptimization`:
    the proxy then pays for length the gold judge penalises; 0 = over-optimisation comes only from each reward
    model's own errors off its training data (at --quick size gold then moves little)."""

    def __post_init__(self):
        super().__post_init__()
        if not self.sizes:
            self.sizes = [1, 3] if self.quick else [1, 3, 5]
        if not self.reductions:
            self.reductions = ["mean", "min"] if self.quick else ["mean", "min", "mean-minus-std"]
        self.sizes = sorted(set(self.sizes))
        self.reductions = list(dict.fromkeys(self.reductions))


Algorithm = Literal["ppo", "grpo", "rloo", "reinforce++", "dpo", "best-of-n"]


@dataclass
class AlgorithmsConfig(ExperimentConfig):
    """The bake-off: PPO, GRPO, RLOO, REINFORCE++, DPO and best-of-N from one SFT model and one reward model, on
    the same budget of sampled responses, several seeds, each scored by the gold judge on held-out prompts."""

    out: Path = Path("runs/algorithms")
    """Experiment directory."""
    reward: Path | None = None
    """Reuse this reward model (none = train one from the SFT model on the task's pairs, under runs/reward)."""
    algorithms: list[Algorithm] = field(
        default_factory=lambda: ["ppo", "grpo", "rloo", "reinforce++", "dpo", "best-of-n"]
    )
    """Algorithms to run."""
    seeds: int = 0
    """Seeds per run (0 = the setting's: 2 with --quick, 3 otherwise); the SFT and reward models are shared."""
    budget: int = 0
    """Sampled responses per on-policy run, and preference pairs per DPO run (0 = the setting's PPO episodes:
    1,024 with --quick, 2,048 otherwise)."""
    kl_coefs: list[float] = field(default_factory=list)
    """KL coefficients of each on-policy algorithm, one run each (empty = 0.1 1 with --quick, 0.03 0.2 1
    otherwise)."""
    dpo_betas: list[float] = field(default_factory=list)
    """DPO betas, one run each (empty = 0.1 0.5 with --quick, 0.05 0.2 1 otherwise)."""
    best_of: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """Best-of-N sizes N (each measured on one shared pool of SFT samples per prompt)."""
    pool: int = 0
    """SFT samples per held-out prompt in the best-of-N pool (0 = 64 with --quick, 128 otherwise; at least the
    largest N)."""
    bootstrap: int = 2000
    """Resamples of the confidence intervals (seeds, then prompts within each seed)."""

    def __post_init__(self):
        super().__post_init__()
        self.seeds = self.seeds or (2 if self.quick else 3)
        self.kl_coefs = self.kl_coefs or ([0.1, 1.0] if self.quick else [0.03, 0.2, 1.0])
        self.dpo_betas = self.dpo_betas or ([0.1, 0.5] if self.quick else [0.05, 0.2, 1.0])
        self.pool = self.pool or (64 if self.quick else 128)
        self.algorithms = list(dict.fromkeys(self.algorithms))
        self.best_of = sorted(set(self.best_of))
        if self.pool < self.best_of[-1]:
            raise UserError(f"--pool {self.pool} is smaller than the largest --best-of {self.best_of[-1]}")


# ------------------------------------------------------------------------------------------------ option bounds
@dataclass(frozen=True)
class Bound:
    """The values one numeric option accepts: lo..hi, each end included unless `lo_open` / `hi_open`.

    A float option must also be finite, whatever its bound: nan and inf pass every comparison a stage makes (or
    fail them all) and surface much later as a crash or a silently broken run.
    """

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def admits(self, x: float) -> bool:
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return above and below

    def describe(self) -> str:
        """'>= 0', 'in (0, 1]', or '' for any (finite) value."""
        if self.lo == -math.inf and self.hi == math.inf:
            return ""
        if self.hi == math.inf:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.lo == -math.inf:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"in {left}{_num(self.lo)}, {_num(self.hi)}{right}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


# Caps on sizes and counts. Not limits of the method - limits past which a value can only be a typo (1e12): each
# is far beyond any run this library makes, while the typo would try to allocate terabytes or loop for ever.
STEPS = 1_000_000_000  # optimizer steps, episodes, intervals between logs/evaluations/checkpoints
TOKENS = 131_072  # sequence lengths (KV caches, position embeddings and attention grow with them)
BATCH = 65_536  # sequences in one batch, update or sampling round
EXAMPLES = 1_000_000  # generated built-in examples / prompts (all held in memory at once)
PASSES = 1e6  # epochs
MAX_PARAMS = (
    2_000_000_000  # a fresh --arch GPT: 8 GB of float32 weights, ~32 GB with gradients and AdamW state
)

# The bounds of every numeric option of every command, by field name, or 'Class.field' where one name means
# different things (a subclass inherits its base's entries). "0 = auto/off" options include 0; caps on ints are
# always finite (tests/test_option_fuzz.py fails for a numeric option without an entry here).
OPTION_BOUNDS: dict[str, Bound] = {
    # every command
    "seed": Bound(0, 2**32 - 1),  # numpy's global seeding takes 32 bits
    "threads": Bound(0, 1024),  # 0 = torch's default
    "dist_timeout": Bound(1, 7 * 24 * 3600),  # a week: past that, a typo
    # --task.*
    "n_train": Bound(1, EXAMPLES),
    "n_eval": Bound(0, EXAMPLES),
    "label_noise": Bound(0, 1),  # a probability
    "length_bias": Bound(0, 1e6),  # at 100, 1 byte of length already outweighs the whole gold score
    "bias_sycophancy": Bound(0, 1),  # probabilities
    "bias_hedging": Bound(0, 1),
    "bias_format": Bound(0, 1),
    "premise_fraction": Bound(0, 1),  # 0 = auto (on with its bias)
    "format_fraction": Bound(0, 1),
    "agree_fraction": Bound(0, 1),
    # --optim.*
    "lr": Bound(0, 1),  # 0 = auto for the reward model; AdamW moves each weight by ~lr per step
    "weight_decay": Bound(0, 1e3),
    "OptimConfig.betas": Bound(0, 1, hi_open=True),  # AdamW's moment decays
    "warmup_steps": Bound(0, STEPS),
    "min_lr_ratio": Bound(0, 1),
    "grad_clip": Bound(0),  # 0 = off
    "grad_accum": Bound(1, 4096),  # a step holds all its micro-batches
    # LoRA
    "lora_rank": Bound(0, 4096),  # 0 = off
    "lora_alpha": Bound(0, 1e5),  # 0 = 2 x rank
    # --arch.* (a fresh built-in GPT; see also MAX_PARAMS)
    "vocab_size": Bound(1, 1 << 20),
    "block_size": Bound(1, TOKENS),
    "n_layer": Bound(1, 1024),
    "n_head": Bound(1, 1024),
    "n_embd": Bound(1, 65_536),
    "dropout": Bound(0, 1, hi_open=True),
    # data and the training loop
    "data_weights": Bound(0, lo_open=True),
    "batch_size": Bound(1, BATCH),
    "epochs": Bound(0, PASSES),  # 0 = auto for the reward model; one step at least elsewhere
    "max_steps": Bound(0, STEPS),  # 0 = use epochs
    "max_length": Bound(0, TOKENS),  # 0 = auto (reward, reward eval, dpo)
    "SFTConfig.max_length": Bound(1, TOKENS),
    "DataValidateConfig.max_length": Bound(1, TOKENS),
    "eval_fraction": Bound(0, 1, hi_open=True),  # 1 would hold out everything
    "eval_every": Bound(1, STEPS),
    "log_every": Bound(1, STEPS),
    "save_every": Bound(0, STEPS),  # 0 = never
    "gold_samples": Bound(0, EXAMPLES),  # 0 = skip
    "max_new_tokens": Bound(1, TOKENS),
    # sampling
    "SampleConfig.n": Bound(1, BATCH),
    "temperature": Bound(0),  # 0 = greedy where only samples are drawn (sample, dpo's gold samples)
    "PPOConfig.temperature": Bound(0, lo_open=True),  # log-probs are recomputed at it: logits / temperature
    "CompareConfig.temperature": Bound(0, lo_open=True),  # (the same, for the KL of each policy)
    "top_k": Bound(0, 1 << 20),  # 0 = all
    "top_p": Bound(0, 1, lo_open=True),  # 0 would keep no token at all
    # reward model
    "label_smoothing": Bound(0, 0.5, hi_open=True),  # 0.5 = the labels carry no information
    "center_rewards": Bound(0),
    "n_bins": Bound(1, 1000),
    "ensemble": Bound(1, 256),  # members trained one after another (or heads on one trunk)
    # scores are normalised (std ~ 1): beyond ~10 the std is all that counts
    "ensemble_lambda": Bound(0, 1e3),
    # dpo
    "beta": Bound(0, lo_open=True),
    "simpo_gamma": Bound(0),
    "rpo_alpha": Bound(0),  # 0 = off
    # on-policy RL
    "reward_weights": Bound(),  # a negative weight makes a source a penalty
    "samples_per_prompt": Bound(1, 4096),
    "episodes": Bound(1, STEPS),
    "ExperimentConfig.episodes": Bound(0, STEPS),  # 0 = the setting's
    "rollout_batch": Bound(1, BATCH),
    "mini_batches": Bound(1, BATCH),
    "ppo_epochs": Bound(1, 1000),
    "response_length": Bound(1, TOKENS),
    "max_prompt_length": Bound(1, TOKENS),
    "value_lr_mult": Bound(0, 1e3),
    "kl_coef": Bound(0),  # 0 = no KL, no reference model
    "kl_target": Bound(0),  # 0 = fixed beta
    "kl_horizon": Bound(1, STEPS),
    "gamma": Bound(0, 1),
    "lam": Bound(0, 1),
    "cliprange": Bound(0),
    "cliprange_high": Bound(),  # negative = --cliprange
    "cliprange_value": Bound(0),
    "vf_coef": Bound(0),
    "entropy_coef": Bound(0),  # 0 = off
    "reward_clip": Bound(0),  # 0 = off
    "missing_eos_penalty": Bound(),  # 0 = off
    # compare
    "n_prompts": Bound(1, EXAMPLES),
    "bootstrap": Bound(1, 100_000),  # one (resamples x prompts) index tensor
    # demo
    "sft_epochs": Bound(0, PASSES),
    "sft_lr": Bound(0, 1),
    "rm_pairs": Bound(1, EXAMPLES),
    "rm_epochs": Bound(0, PASSES),  # 0 = auto
    "ppo_lr": Bound(0, 1),
    "compare_prompts": Bound(1, EXAMPLES),
    # experiments
    "ExperimentConfig.betas": Bound(0),  # KL coefficients
    "helpful_weight": Bound(),
    "concise_weight": Bound(),
    "rounds": Bound(1, 100),  # each round is a PPO run and a reward model
    "policy_pairs": Bound(0, EXAMPLES),  # 0 = the setting's
    "strength": Bound(0, 1),  # a probability
    "bias_pairs": Bound(0, EXAMPLES),  # 0 = the setting's
    "EnsembleExperimentConfig.sizes": Bound(1, 64),  # reward models per ensemble (trained one by one)
    "AlgorithmsConfig.seeds": Bound(0, 100),  # 0 = the setting's; each seed is every run again
    "AlgorithmsConfig.budget": Bound(0, EXAMPLES),  # 0 = the setting's
    "kl_coefs": Bound(0),
    "dpo_betas": Bound(0, lo_open=True),
    "best_of": Bound(1, 4096),
    "AlgorithmsConfig.pool": Bound(0, 4096),  # 0 = the setting's
}


def bound_for(cls: type, name: str) -> Bound | None:
    """The declared bound of field `name` of dataclass `cls` ('Class.field' along the MRO first), or None."""
    for klass in cls.__mro__:
        found = OPTION_BOUNDS.get(f"{klass.__name__}.{name}")
        if found is not None:
            return found
    return OPTION_BOUNDS.get(name)


def numeric_kind(hint) -> tuple[type, bool] | None:
    """(int or float, whether the option takes several values) for a numeric field's type, else None.

    Covers int, float, their Optional forms, and tuples / lists of them (`--optim.betas 0.9 0.95`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return numeric_kind(inner[0]) if len(inner) == 1 else None
    if origin in (tuple, list):
        kinds = {numeric_kind(a) for a in args if a is not Ellipsis}
        return (kinds.pop()[0], True) if len(kinds) == 1 and None not in kinds else None
    return (hint, False) if hint in (int, float) else None


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def flag_name(path: str) -> str:
    """The command-line spelling of a field path: 'optim.grad_accum' -> '--optim.grad-accum'."""
    return "--" + path.replace("_", "-")


def validate(cfg, prefix: str = "") -> None:
    """Raise a one-line `UserError` naming the option unless every numeric option of `cfg` is in its bound
    (OPTION_BOUNDS; floats finite) and the options agree with each other. Walks nested configs (--optim.*, ...).

    Every command config calls it from `__post_init__`, so the CLI, config files and code that builds configs
    directly all get the same checks."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}.")
            continue
        kind = numeric_kind(hints[f.name])
        if kind is None or value is None:
            continue
        number, several = kind
        bound = bound_for(type(cfg), f.name) or Bound()  # undeclared: finite only (and the fuzz test fails)
        values = list(value) if several else [value]
        if all(_admits(number, bound, v) for v in values):
            continue
        rule = f"{'an integer' if number is int else 'a finite number'} {bound.describe()}".rstrip()
        each, shown = (" each", list(value)) if several else ("", value)
        raise UserError(f"{flag_name(prefix + f.name)} must{each} be {rule}, got {shown!r}")
    if isinstance(cfg, GPTConfig):
        _check_arch(cfg, prefix)
    if not prefix:
        _check_relations(cfg)


def _admits(number: type, bound: Bound, v) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    if number is int and not float(v).is_integer():
        return False
    return math.isfinite(v) and bound.admits(v)


def _check_arch(arch: GPTConfig, prefix: str) -> None:
    """A fresh GPT's shape: heads split the width evenly, and the whole fits in memory."""
    if arch.n_embd % arch.n_head:
        raise UserError(
            f"{flag_name(prefix + 'n_embd')} {arch.n_embd} must be a multiple of {flag_name(prefix + 'n_head')} "
            f"{arch.n_head} (each head gets an equal share of the width)"
        )
    params = arch.n_layer * 12 * arch.n_embd**2 + (arch.vocab_size + arch.block_size) * arch.n_embd
    if params > MAX_PARAMS:
        raise UserError(
            f"{flag_name(prefix + 'n_layer')} {arch.n_layer} x {flag_name(prefix + 'n_embd')} {arch.n_embd} is a "
            f"GPT of ~{params / 1e9:.0f}B parameters; at most {MAX_PARAMS / 1e9:.0f}B"
        )


def _check_relations(cfg) -> None:
    """Options that are each in range but cannot go together (a stage would fail on them much later)."""
    weights, data = getattr(cfg, "data_weights", None), getattr(cfg, "data", None)
    if weights and isinstance(data, list) and len(weights) != len(data):
        raise UserError(
            f"--data-weights has {len(weights)} value(s) but --data names {len(data)} file(s); give one weight per "
            "file"
        )
    max_length, new = getattr(cfg, "max_length", 0), getattr(cfg, "max_new_tokens", None)
    if new is not None and getattr(cfg, "gold_samples", 0) > 0 and max_length > 0 and new > max_length - 2:
        # The gold-score samples' prompts get max_length - max_new_tokens tokens: BOS and at least one more.
        raise UserError(
            f"--max-new-tokens {new} leaves no room for a prompt in --max-length {max_length} (the gold-score "
            "samples; --gold-samples 0 skips them)"
        )
    if getattr(cfg, "kl_target", 0) > 0 and 5 * cfg.kl_horizon <= cfg.rollout_batch:
        # The adaptive controller multiplies beta by 1 + e * rollout_batch / horizon, e in [-0.2, 0.2], after each
        # update: with a horizon this short the factor reaches 0 or below and beta turns negative.
        raise UserError(
            f"--kl-horizon {cfg.kl_horizon} must exceed --rollout-batch {cfg.rollout_batch} / 5 with --kl-target "
            "(a shorter horizon would make the KL coefficient negative)"
        )
    if (
        isinstance(cfg, SFTConfig)
        and cfg.model == "gpt"
        and cfg.init is None
        and max_length > cfg.arch.block_size
    ):
        raise UserError(
            f"--max-length {max_length} exceeds --arch.block-size {cfg.arch.block_size}: a fresh GPT reads at most "
            "block-size tokens"
        )


# ------------------------------------------------------------------------------------------------ config files
def declared_defaults(cls: type):
    """A `cls` instance holding the declared defaults *before* `__post_init__` derives anything.

    The CLI layers the config file and the flags on this and constructs the final config once, so derived values
    (e.g. RewardConfig's lr/epochs/max_length = 0, meaning 'auto') follow the final options, not the defaults.
    """
    obj = object.__new__(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:  # pragma: no cover - every config field has a default
            raise TypeError(f"{cls.__name__}.{f.name} has no default")
        object.__setattr__(obj, f.name, value)
    return obj


def load_config_file(cls: type, path: Path, base=None, resolve: bool = True):
    """Build a `cls` instance from a YAML/TOML/JSON file, starting from `base` (or the declared defaults).

    `resolve=False` skips `__post_init__` (the CLI resolves once, after the flags are applied).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise UserError(f"{path}: unknown config format '{path.suffix}'; use .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        line = _error_line(e)
        where = f"{path}:{line}" if line else str(path)
        raise UserError(f"{where}: cannot parse config ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must map option names to values")
    merged = _merge(cls, base if base is not None else declared_defaults(cls), data, path, "")
    return dataclasses.replace(merged) if resolve else merged


def _error_line(e: Exception) -> int | None:
    """1-based line of a JSON/YAML/TOML parse error, when the parser says."""
    if getattr(e, "lineno", None):  # json (and tomllib from Python 3.14)
        return e.lineno
    mark = getattr(e, "problem_mark", None)
    if mark is not None:  # PyYAML marks count lines from 0
        return mark.line + 1
    found = re.search(r"at line (\d+)", str(e))  # tomllib before 3.14: "... (at line 2, column 6)"
    return int(found.group(1)) if found else None


def _merge(cls, base, data: dict, path: Path, prefix: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    changes = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise UserError(f"{path}: unknown option '{prefix}{raw_key}'; known options: {known}")
        hint = hints[key]
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{path}: option '{prefix}{raw_key}' must be a mapping of its sub-options")
            changes[key] = _merge(type(current), current, value, path, f"{prefix}{key}.")
        else:
            changes[key] = _coerce(hint, value, path, f"{prefix}{raw_key}")
    # A plain copy, not dataclasses.replace: __post_init__ must run once, on the final values.
    merged = copy.copy(base)
    for key, value in changes.items():
        object.__setattr__(merged, key, value)
    return merged


def _coerce(hint, value, path: Path, name: str):
    """Convert a parsed config value to the field's type (Path, tuple, float from int), or explain the mismatch."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _coerce(hint, value, path, name)
    if hint is Path:
        return Path(value)
    if origin is Literal:
        if value not in args:
            raise UserError(f"{path}: option '{name}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise UserError(f"{path}: option '{name}' must be a list")
        return origin(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"{path}: option '{name}' must be {hint.__name__}, got {value!r}")
    return value
