"""rlhf vs TRL on the peer harness's fixed workload (`../shared/peers/trl`): PPO, GRPO, reward model, generation, SFT.

    python benchmarks/compare_trl.py --trl-python ../.venv-trl/bin/python      # everything, ~13 min on 2 cores
    python benchmarks/compare_trl.py --skip-trl --only ppo --only reward        # ours only, a subset
    python benchmarks/compare_trl.py --trl-python ../.venv-trl/bin/python --only grpo   # one pair

What is measured, and how it matches the peer (`common.py` and its `bench_*.py` scripts):

* The same work. Model: our built-in GPT with the peer's GPT-2 dimensions, `common.MODEL_KW` of the size that
  `--peer-model` (or the PEER_MODEL environment variable; default tiny) picks: tiny n_layer 4, n_embd 128, n_head 4,
  block 256, vocab 259 -> 859,264 parameters (small 6 x 384: 10.8M, medium 8 x 512: 25.5M; every child and peer
  script gets the same PEER_MODEL), random init after `torch.manual_seed(0)`, float32. Tokenizer: our
  ByteTokenizer, whose ids are the peer's (bytes 0..255, pad 256, bos 257, eos 258; checked at start). Data:
  `common.make_pairs(512, seed=0)` and `common.make_prompts(128, seed=1)`, imported from `--peer-dir`. Threads:
  2 (the peer's `common.NUM_THREADS`; `--threads` changes ours only). Batch sizes, episodes, response length,
  epochs, minibatches and the warm-up / repeat protocol are each peer script's.
* generate (bench_generate.py): `rlhf.generation.sample` with the KV cache, temperature 1, top-k 0, top-p 1, exactly
  32 new tokens (EOS disabled as TRL disables it: `eos_id=-1`, an id the model never samples), batch 1/16/64 (and
  16 without the cache); new tokens/s = B*32 / median seconds per call, prefill included.
* reward (bench_reward.py): `rlhf.stages.reward.train_reward` itself (pair_batch -> ScalarModel.score_pairs ->
  bradley_terry_loss -> make_optimizer's AdamW) on a fresh GPT, the 512 pairs written as JSONL to a temp dir,
  1 epoch, batch 16 pairs, max_length 256, lr 1e-4, eval-fraction 0 (all 512 pairs train, as in TRL). Time = the
  training loop as the stage reports it (`loop_seconds`: the span TRL's `trainer.train()` covers); pairs/s = 512 /
  median over repeats.
* ppo (bench_ppo.py): `rlhf.stages.ppo.train_ppo` on random-init checkpoints written with the project's own
  `save_checkpoint` (policy = reference = the workload GPT; reward = value = the workload GPT + scalar head), the 128
  prompts as a JSONL file, 256 episodes = 16 updates x 16 prompts, 32-token responses, 4 PPO epochs, 1 minibatch,
  temperature 1, kl_coef 0.05 (k1, fixed), cliprange 0.2, value clip 0.2, vf_coef 0.1, gamma 1, lambda 0.95,
  lr 3e-6 for policy and value alike, no gradient clipping, no reward normalisation/clipping, no missing-EOS
  penalty, no reward whitening (all as TRL's PPOConfig there). Episodes/s = 256 / the PPO loop's wall time (the
  stage's own `loop_seconds`: model loading and the final save excluded, as in TRL's script); also the stage's
  `time_share` and per-phase seconds (metrics.jsonl's `time/generation`, `time/scoring`, `time/update`).
* grpo (bench_grpo.py): `rlhf.stages.ppo.train_ppo(GRPOConfig(...))` on the same random-init checkpoints (policy =
  reference = the workload GPT; reward = the workload GPT + scalar head, TRL's sequence-classification model),
  the 128 prompts as JSONL, the settings bench_grpo.py gives TRL's GRPOTrainer: 16 updates x 16 prompts x 4
  completions (1,024 completions in groups of 4), responses of at most 32 tokens (stop at EOS), temperature 1,
  one epoch of one minibatch, group-normalised advantages (scale_rewards group), beta 0.04 with the k3 KL in the
  loss, loss_type "grpo" = our `seq-mean-token-mean`, clip 0.2, lr 3e-6 without warm-up, HF's AdamW defaults
  (weight decay 0, betas 0.9/0.999, max_grad_norm 1), raw reward-model scores, no value model. Completions/s =
  1,024 / the median loop time after a 2-update warm-up (TRL: a 2-step trainer); generation share from
  `time/generation`. Not mirrored: TRL's linear learning-rate decay to 0 (ours stays constant), its importance-
  weighted KL (`use_bias_correction_kl`), dropout 0.1 in its policy's training forward (ours: none).
* sft (bench_torch_baseline.py): our SFT training step (rlhf.stages.sft: sft_batch -> GPT forward -> sft_loss ->
  backward -> clip_grads -> AdamW step of make_optimizer, the SFT stage's model and optimizer) on the baseline's
  [16, 128] random-token batch, timed as the baseline times its bare fwd+bwd (5 warm-up, 5 x 20 steps, median);
  `sft_vs_bare` = ours / `torch_fwd_bwd_16x128.tokens_per_s_median`.

Each of our benchmarks runs in its own subprocess (this file with `--child NAME`), as does each peer script (with
`--trl-python`), so the peak RSS of every run is its own (`wait4`). MFU = 6*N*tokens/s over the matmul fp32 peak
of bench_torch_baseline (`matmul_fp32_1024.gflops_median`; measured the same way in our child without TRL).
Our on-policy figures come from what `train_ppo` writes (summary and metrics.jsonl); nothing of the stage is
patched. The last line is `ratios vs TRL: ppo=... reward=... generate_b16=... generate_b64=... sft_vs_bare=...
grpo=...` (ours / theirs throughput), after one line per target an issue set (TARGETS: grpo >= 3.0; set for the
tiny model, so printed at that size only). `--ppo-episodes`, `--grpo-steps` and `--sft-iters` shorten the timed
work on both sides alike (the peer's BENCH_PPO_EPISODES / BENCH_GRPO_STEPS; the bare baseline has no such knob):
`benchmarks/scaling.py` uses them to fit the larger models into minutes. With `--rounds N`, every benchmark runs N times on both sides (rounds 2, 4, ... run
ours first), each round's ratios are printed, and the last line gives each ratio's median over the rounds. Results
and logs go to --out (default runs/bench-compare-trl/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_PEER_DIR = ROOT.parent / "shared" / "peers" / "trl"
BENCHES = ("sft", "generate", "reward", "ppo", "grpo", "dpo")  # the peer's run_all.sh order
PEER_SCRIPT = {
    "sft": "bench_torch_baseline.py",
    "generate": "bench_generate.py",
    "reward": "bench_reward.py",
    "ppo": "bench_ppo.py",
    "grpo": "bench_grpo.py",
    "dpo": "bench_dpo.py",
}
NEW_TOKENS = 32
TRL_PHASES = [  # bench_ppo.py's phase_seconds keys, in its order
    "generation",
    "rollout_scoring_ref_value_reward",
    "rollout_logprobs_of_generated",
    "ppo_optimisation_total",
    "  ppo_forward",
    "  ppo_backward",
    "  ppo_optimizer_step",
    "  ppo_log_softmax",
    "gc_collect (2 per update)",
    "trl_empty_cache (no-op on CPU)",
    "other",
]
RATIO_NAMES = (
    "ppo",
    "reward",
    "generate_b16",
    "generate_b64",
    "sft_vs_bare",
    "grpo",
    "dpo",
)  # the last line's, in order
TARGETS = {"grpo": 3.0, "dpo": 2.5}  # ratios an issue set a target for (ours / TRL's at least this)
GRPO_G, GRPO_PROMPTS_PER_STEP = 4, 16  # bench_grpo.py's G and PROMPTS_PER_STEP
GEN_CASES = [(1, True, 3, 20), (16, True, 3, 15), (64, True, 2, 10), (16, False, 2, 7)]  # bench_generate.py


# ================================================================================================ shared helpers
def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def busy_warning(where: str) -> str | None:
    """A warning when other jobs keep the CPU busy (the 1-minute load average counts runnable tasks)."""
    one = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if one > 0.5:
        return (
            f"WARNING ({where}): load average {loadavg()} on {cores} cores - other jobs are running; "
            "figures are noisy, only ratios taken side by side count"
        )
    return None


def emit(name: str, obj: dict) -> None:
    print(f"RESULT {name} {json.dumps(obj, sort_keys=True)}", flush=True)


def parse_results(text: str) -> dict[str, dict]:
    out = {}
    for line in text.splitlines():
        if line.startswith("RESULT "):
            _, name, payload = line.split(" ", 2)
            out[name] = json.loads(payload)
    return out


def import_peer_common(peer_dir: Path):
    """The peer's `common` module (data generators and workload constants); it only needs torch."""
    sys.path.insert(0, str(peer_dir))
    import common

    return common


def workload_arch(common):
    """Our GPTConfig of the peer's model: `common.MODEL_KW` (the PEER_MODEL size the peer module was imported
    with), no dropout. At the default size (tiny) this equals GPTConfig()'s defaults."""
    from rlhf.models.gpt import GPTConfig

    kw = common.MODEL_KW
    return GPTConfig(
        vocab_size=kw["vocab_size"],
        block_size=kw["n_positions"],
        n_layer=kw["n_layer"],
        n_head=kw["n_head"],
        n_embd=kw["n_embd"],
        dropout=0.0,
    )


def gpt2_params(kw: dict) -> int:
    """Parameters of HF GPT2LMHeadModel(**kw) (tied lm_head counted once): embeddings, 12C^2 + 13C per block
    (attention, MLP, two LayerNorms, biases), the final LayerNorm. tiny: 859,264."""
    v, p, c, n = kw["vocab_size"], kw["n_positions"], kw["n_embd"], kw["n_layer"]
    return v * c + p * c + n * (12 * c * c + 13 * c) + 2 * c


def check_workload(common) -> None:
    """Our tokenizer ids and model are the peer's; stop if either side changed."""
    from rlhf.data.tokenizer import ByteTokenizer
    from rlhf.models.gpt import GPT, GPTConfig

    tok, arch = ByteTokenizer(), workload_arch(common)
    ours = (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size)
    theirs = (common.PAD_ID, common.BOS_ID, common.EOS_ID, common.VOCAB_SIZE)
    assert ours == theirs, f"tokenizer ids differ: ours {ours}, peer {theirs}"
    assert tok.encode("Hi é") == list("Hi é".encode()), "ByteTokenizer is not byte-valued"
    # The same architecture, not only the same dimensions: our GPT has GPT-2's parameter count at this size.
    n, want = GPT(arch).num_params(), gpt2_params(common.MODEL_KW)
    assert n == want, f"our GPT of {common.MODEL_KW} has {n:,} parameters, the peer's GPT-2 {want:,}"
    if common.PEER_MODEL == "tiny":  # the stages' defaults are the tiny workload model
        d = GPTConfig()
        assert (d.n_layer, d.n_embd, d.n_head, d.block_size, d.vocab_size) == (
            arch.n_layer,
            arch.n_embd,
            arch.n_head,
            arch.block_size,
            arch.vocab_size,
        ), f"GPTConfig defaults {d} differ from the peer's model {common.MODEL_KW}"


def matmul_gflops(n: int = 1024, iters: int = 50, repeats: int = 5) -> float:
    """bench_torch_baseline.py's fp32 matmul peak, measured the same way (median GFLOP/s)."""
    import torch

    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    for _ in range(10):
        torch.mm(a, b, out=c)
    res = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b, out=c)
        res.append(2 * n**3 * iters / (time.perf_counter() - t0) / 1e9)
    return statistics.median(res)


def workload_gpt(common, seed: int = 0):
    """The peer's model (at its PEER_MODEL size) as our GPT, random init after torch.manual_seed(seed)."""
    import torch

    from rlhf.models.gpt import GPT

    torch.manual_seed(seed)
    return GPT(workload_arch(common))


def peak_rss_self_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ================================================================================================ our benchmarks
def child_generate(a, common) -> dict:
    import torch

    from rlhf.data.collate import encode_prompt, pad
    from rlhf.data.tokenizer import ByteTokenizer
    from rlhf.generation import sample

    tok = ByteTokenizer()
    model = workload_gpt(common).eval()
    prompts = common.make_prompts(common.N_PPO_PROMPTS, seed=1)
    cases = [(b, c, 1, 2) for b, c, _, _ in GEN_CASES] if a.smoke else GEN_CASES
    res = {}
    for bs, use_cache, warm, reps in cases:
        # Our prompt encoding (PPO's): [bos] + prompt bytes, left-padded - one token longer than the peer's.
        ids, mask = pad(
            [encode_prompt(tok, p, 256 - NEW_TOKENS)[0] for p in prompts[:bs]], tok.pad_id, side="left"
        )
        gen = torch.Generator().manual_seed(0)

        def call(ids=ids, mask=mask, use_cache=use_cache, gen=gen, bs=bs):
            # eos_id=-1: no sampled id equals it, so no row ever stops (TRL: eos_token_id=None).
            r = sample(model, ids, mask, NEW_TOKENS, -1, tok.pad_id, 1.0, 0, 1.0, gen, use_cache=use_cache)
            assert r.response_ids.shape == (bs, NEW_TOKENS) and bool(r.response_mask.all())
            return r

        for _ in range(warm):
            call()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        res[f"generate_b{bs}_cache{int(use_cache)}"] = {
            "batch": bs,
            "use_cache": use_cache,
            "prompt_len_padded": ids.shape[1],
            "seconds_per_call_median": med,
            "new_tokens_per_s": bs * NEW_TOKENS / med,
            "ms_per_decode_step": 1000 * med / NEW_TOKENS,
            "repeats": reps,
        }
        print(f"ours generate b{bs} cache={use_cache}: {bs * NEW_TOKENS / med:,.0f} new tok/s", flush=True)
    return res


def child_sft(a, common) -> dict:
    import torch

    from rlhf.config import SFTConfig
    from rlhf.data.collate import Encoded, sft_batch
    from rlhf.data.tokenizer import ByteTokenizer
    from rlhf.stages.common import clip_grads, lr_factor, make_optimizer, set_lr
    from rlhf.stages.sft import sft_loss

    peak = matmul_gflops(iters=5 if a.smoke else 50, repeats=2 if a.smoke else 5)
    B, T = 16, 128
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (B, T), generator=g)  # the baseline's batch
    # prompt_len 1: the loss covers all T-1 next-token targets, as the baseline's labels=x does.
    enc = [Encoded(row.tolist(), 1, False) for row in x]
    warm, iters, reps = a.sft_iters or ((1, 2, 2) if a.smoke else (5, 20, 5))

    def measure(dropout: float) -> dict:
        cfg = SFTConfig()  # the stage's defaults: AdamW (lr, wd, betas), clipping, schedule
        cfg.arch = workload_arch(common)  # the peer's model at PEER_MODEL's size (tiny: the default)
        cfg.arch.dropout = dropout
        torch.manual_seed(0)
        from rlhf.models.gpt import GPT

        model = GPT(cfg.arch).train()
        opt = make_optimizer(model, cfg.optim)
        total_steps, step = 10_000, 0
        tok = ByteTokenizer()

        def train_step():  # the body of train_sft's loop (grad_accum 1)
            nonlocal step
            lr = cfg.optim.lr * lr_factor(step, total_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
            set_lr(opt, lr)
            b = sft_batch(enc, tok.pad_id)
            n_tokens = int(b["loss_mask"][:, :-1].sum())
            nll, _ = sft_loss(model(b["input_ids"]), b["input_ids"], b["loss_mask"])
            (nll / max(n_tokens, 1)).backward()
            clip_grads(model, cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1

        for _ in range(warm):
            train_step()
        tps = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(iters):
                train_step()
            tps.append(B * T * iters / (time.perf_counter() - t0))
        med = statistics.median(tps)
        n = model.num_params()
        return {
            "tokens_per_s_median": med,
            "tokens_per_s_repeats": tps,
            "params": n,
            "model_gflops_6NT": 6 * n * med / 1e9,
            "dropout": dropout,
        }

    main = measure(0.0)
    print(f"ours sft step [16,128]: {main['tokens_per_s_median']:,.0f} tok/s", flush=True)
    res = {"sft_step_16x128": main, "matmul_fp32_1024_ours": {"gflops_median": peak}}
    if (
        not a.smoke
    ):  # the bare baseline's HF GPT2 trains with its default dropout 0.1: the same, for reference
        res["sft_step_16x128_dropout01"] = measure(0.1)
    return res


def child_reward(a, common) -> dict:
    import torch

    import rlhf.stages.reward as reward_mod
    from rlhf.config import OptimConfig, RewardConfig

    pairs = common.make_pairs(common.N_PAIRS, seed=0)
    if a.smoke:
        pairs = pairs[:64]
    tmp = Path(tempfile.mkdtemp(prefix="rlhf_rm_bench_"))
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    counts = {"padded": 0, "nonpad": 0}
    orig_pair_batch = reward_mod.pair_batch

    def counting_pair_batch(chunk, pad_id):
        ids, segments = orig_pair_batch(chunk, pad_id)  # packed: the shared prompt once per pair
        counts["padded"] += ids.numel()
        counts["nonpad"] += int((segments >= 0).sum())
        return ids, segments

    reward_mod.pair_batch = counting_pair_batch

    def run(out: Path, max_steps: int = 0) -> tuple[dict, float | None]:
        cfg = RewardConfig(
            out=out,
            data=[data],
            model="gpt",
            arch=workload_arch(common),
            threads=a.threads,
            progress=False,
            optim=OptimConfig(lr=1e-4, weight_decay=0.0, warmup_steps=0, min_lr_ratio=0.0, grad_clip=1.0),
            batch_size=16,
            epochs=1.0,
            max_steps=max_steps,
            max_length=256,
            eval_fraction=0.0,
            log_every=8,
            save_every=0,
            seed=0,
        )
        counts.update(padded=0, nonpad=0)
        summary = reward_mod.train_reward(cfg)
        return summary, summary["loop_seconds"]  # the training loop's wall time, as the stage reports it

    try:
        if not a.smoke:
            run(tmp / "warmup", max_steps=4)
        runs = []
        for i in range(1 if a.smoke else a.repeats):
            summary, loop_s = run(tmp / f"run{i}")
            runs.append(
                {
                    "loop_seconds": loop_s,
                    "summary_seconds": summary["seconds"],
                    "steps": summary["steps"],
                    "pairs": summary["n_train"],
                    "tokens_padded": counts["padded"],
                    "tokens_nonpad": counts["nonpad"],
                }
            )
            print(
                f"ours reward run {i}: loop {loop_s:.2f} s (stage summary {summary['seconds']} s)", flush=True
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    secs = [r["loop_seconds"] if r["loop_seconds"] is not None else r["summary_seconds"] for r in runs]
    med = statistics.median(secs)
    n = runs[0]["pairs"]
    return {
        "reward_ours": {
            "pairs": n,
            "optimizer_steps": runs[0]["steps"],
            "train_seconds_median": med,
            "train_seconds_repeats": secs,
            "timed": "loop" if runs[0]["loop_seconds"] is not None else "stage summary seconds",
            "summary_seconds_repeats": [r["summary_seconds"] for r in runs],
            "pairs_per_s": n / med,
            "collated_tokens_padded": runs[0]["tokens_padded"],
            "collated_tokens_nonpad": runs[0]["tokens_nonpad"],
            "nonpad_tokens_per_s": runs[0]["tokens_nonpad"] / med,
            "padding_fraction": 1 - runs[0]["tokens_nonpad"] / runs[0]["tokens_padded"],
            "threads": torch.get_num_threads(),
        }
    }


def child_dpo(a, common) -> dict:
    """Ours on bench_dpo.py's work: `train_dpo` from the workload GPT (random init, written as an SFT checkpoint)
    on the 512 pairs, 1 epoch, batch 16 pairs (32 steps), max_length 256, sigmoid loss, beta 0.1, and - as TRL there
    (precompute_ref_log_probs=False) - the reference's forward every step (--no-precompute-ref). HF's AdamW
    defaults (weight decay 0, betas 0.9/0.999, grad-norm clip 1), no warm-up; TRL decays the lr linearly, ours by a
    cosine (the same work). Time = the stage's training loop (`loop_seconds`, the span of TRL's
    `trainer.train()`); pairs/s = 512 / median over repeats. Ours reads each pair as one packed row."""
    import torch

    from rlhf.config import DPOConfig, OptimConfig
    from rlhf.stages.dpo import train_dpo

    pairs = common.make_pairs(common.N_PAIRS, seed=0)
    if a.smoke:
        pairs = pairs[:64]
    tmp = Path(tempfile.mkdtemp(prefix="rlhf_dpo_bench_"))
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    sft_dir, _ = write_random_checkpoints(tmp, common)

    def run(out: Path, max_steps: int = 0) -> dict:
        return train_dpo(
            DPOConfig(
                out=out,
                sft=sft_dir,
                data=[data],
                threads=a.threads,
                progress=False,
                seed=0,
                loss_type="sigmoid",
                beta=0.1,
                precompute_ref=False,
                optim=OptimConfig(
                    lr=1e-4,
                    weight_decay=0.0,
                    betas=(0.9, 0.999),
                    warmup_steps=0,
                    min_lr_ratio=0.0,
                    grad_clip=1.0,
                ),
                batch_size=16,
                epochs=1.0,
                max_steps=max_steps,
                max_length=256,
                eval_fraction=0.0,
                gold_samples=0,
                log_every=8,
                save_every=0,
            )
        )

    try:
        if not a.smoke:
            run(tmp / "warmup", max_steps=4)
        runs = [run(tmp / f"run{i}") for i in range(1 if a.smoke else a.repeats)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    secs = [r["loop_seconds"] for r in runs]
    med = statistics.median(secs)
    n = runs[0]["n_train"]
    print(f"ours DPO: loop seconds {secs} -> {n / med:.1f} pairs/s", flush=True)
    return {
        "dpo_ours": {
            "pairs": n,
            "optimizer_steps": runs[0]["steps"],
            "train_seconds_median": med,
            "train_seconds_repeats": secs,
            "pairs_per_s": n / med,
            "threads": torch.get_num_threads(),
        }
    }


def write_random_checkpoints(tmp: Path, common) -> tuple[Path, Path]:
    """Random-init policy and reward checkpoints of the workload model, written with the project's own savers."""
    import dataclasses

    import torch

    from rlhf.data.tokenizer import ByteTokenizer
    from rlhf.models.build import gpt_backbone_spec, save_checkpoint, save_tokenizer
    from rlhf.models.gpt import GPT
    from rlhf.models.heads import ScalarModel

    tok, arch = ByteTokenizer(), workload_arch(common)
    spec = gpt_backbone_spec(arch)
    sft_dir, rm_dir = tmp / "sft", tmp / "reward"
    policy = workload_gpt(common, seed=0)
    save_checkpoint(
        sft_dir,
        policy,
        {"kind": "policy", "stage": "sft", "backbone": spec, "tokenizer": save_tokenizer(tok, sft_dir)},
    )
    torch.manual_seed(0)
    rm = ScalarModel(GPT(dataclasses.replace(arch)), pooling="last")
    save_checkpoint(
        rm_dir,
        rm,
        {
            "kind": "scalar",
            "stage": "reward",
            "backbone": spec,
            "tokenizer": save_tokenizer(tok, rm_dir),
            "pooling": "last",
            "max_length": arch.block_size,
        },
    )
    return sft_dir, rm_dir


def write_prompts(tmp: Path, common) -> Path:
    """The peer's on-policy prompts (`make_prompts(128, seed=1)`) as a JSONL prompt file."""
    path = tmp / "prompts.jsonl"
    prompts = common.make_prompts(common.N_PPO_PROMPTS, seed=1)
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def onpolicy_run(cfg, first_pass_fused: bool) -> dict:
    """`train_ppo(cfg)` once; its figures from what the stage itself reports (summary and metrics.jsonl rows).

    Every metrics row (log_every 1: one per update) holds that update's phase seconds (`time/generation`,
    `time/scoring`, `time/update`), its rollout's real prompt+response tokens (`tokens/real`), decode steps
    (`completions/max_length`) and completions with EOS (`val/num_eos_tokens`); the summary the loop's wall time
    without model loading and the final save (`loop_seconds`). `first_pass_fused`: the rollout's policy(+value)
    forward serves as the first epoch's (one minibatch, no accumulation, one process), so the update phase runs
    one forward fewer.
    """
    from rlhf.stages.ppo import train_ppo

    assert cfg.log_every == 1, "one metrics row per update"
    t0 = time.perf_counter()
    summary = train_ppo(cfg)
    call_s = time.perf_counter() - t0
    rows = [json.loads(x) for x in (cfg.out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert len(rows) == summary["updates"], f"{len(rows)} metrics rows for {summary['updates']} updates"
    phases = {k: sum(r[f"time/{k}"] for r in rows) for k in ("generation", "scoring", "update")}
    tokens_real = sum(r["tokens/real"] for r in rows)  # per rollout: prompt + response rows, every process
    # Model FLOPs of the update phase: 6N per real token and epoch (2N forward + 4N backward), less the first
    # epoch's forward when the rollout's scoring forward served as it (counted in the scoring phase).
    flop_units = tokens_real * (6 * cfg.ppo_epochs - (2 if first_pass_fused else 0))
    return {
        "episodes": summary["episodes"],
        "completions": summary["completions"],
        "updates": summary["updates"],
        "loop_seconds": summary["loop_seconds"],
        "timed": "loop (train_ppo's loop_seconds)",
        "summary_seconds": summary["seconds"],
        "call_seconds": call_s,
        "time_share": summary["time_share"],
        "phase_seconds": phases,
        "generation_share": phases["generation"] / summary["loop_seconds"],
        "ppo_update_tokens_real": tokens_real * cfg.ppo_epochs,
        "ppo_update_flop_units": flop_units,
        "rollout_tokens_real": tokens_real,
        "decode_steps_per_rollout": [r["completions/max_length"] for r in rows],
        "rows_with_eos": sum(r["val/num_eos_tokens"] for r in rows),
        "n_prompt_truncated": summary.get("n_prompt_truncated"),
    }


def child_ppo(a, common) -> dict:
    import torch

    from rlhf.config import OptimConfig, PPOConfig

    peak = matmul_gflops(iters=5 if a.smoke else 50, repeats=2 if a.smoke else 5)
    episodes = a.ppo_episodes or (32 if a.smoke else 256)
    tmp = Path(tempfile.mkdtemp(prefix="rlhf_ppo_bench_"))
    sft_dir, rm_dir = write_random_checkpoints(tmp, common)
    prompts_file = write_prompts(tmp, common)

    def run(out: Path, n_episodes: int) -> dict:
        cfg = PPOConfig(
            out=out,
            sft=sft_dir,
            reward=rm_dir,
            prompts=prompts_file,
            threads=a.threads,
            progress=False,
            seed=0,
            value_model="separate",
            episodes=n_episodes,
            rollout_batch=16,
            mini_batches=1,
            ppo_epochs=4,
            response_length=NEW_TOKENS,
            max_prompt_length=64,
            temperature=1.0,
            optim=OptimConfig(lr=3e-6, weight_decay=0.0, warmup_steps=0, min_lr_ratio=0.0, grad_clip=0.0),
            value_lr_mult=1.0,
            kl_coef=0.05,
            kl_target=0.0,
            kl_estimator="k1",
            gamma=1.0,
            lam=0.95,
            cliprange=0.2,
            cliprange_value=0.2,
            vf_coef=0.1,
            entropy_coef=0.0,
            normalize_reward=False,
            reward_clip=0.0,
            whiten_rewards=False,
            missing_eos_penalty=0.0,
            reward_fn="model",
            log_every=1,
            save_every=0,
        )
        fused = cfg.mini_batches == 1 and cfg.optim.grad_accum == 1  # one process here
        return onpolicy_run(cfg, fused)

    try:
        run(tmp / "warmup", 16 if a.smoke else 32)
        runs = []
        for i in range(1 if a.smoke else a.repeats):
            r = run(tmp / f"run{i}", episodes)
            runs.append(r)
            print(
                f"ours ppo run {i}: {r['episodes']} episodes in {r['loop_seconds']:.2f} s loop "
                f"({r['episodes'] / r['loop_seconds']:.2f} episodes/s); time_share {r['time_share']}",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med_run = sorted(runs, key=lambda r: r["loop_seconds"])[len(runs) // 2]
    med = med_run["loop_seconds"]
    from rlhf.models.heads import ScalarModel

    # 6N counts every parameter once (tied lm_head included), as bench_torch_baseline.py does.
    n_trained = workload_gpt(common).num_params() + sum(
        p.numel() for p in ScalarModel(workload_gpt(common)).parameters()
    )
    upd_s = med_run["phase_seconds"]["update"]
    return {
        "ppo_ours": {
            "episodes": med_run["episodes"],
            "updates": med_run["updates"],
            "train_seconds_median": med,
            "train_seconds_repeats": [r["loop_seconds"] for r in runs],
            "episodes_per_s_median": med_run["episodes"] / med,
            "timed": med_run["timed"],
            "runs": runs,
            "median_run": runs.index(med_run),
            "time_share": med_run["time_share"],
            "params_policy_plus_value": n_trained,
            "ppo_update_tokens_per_s_real": med_run["ppo_update_tokens_real"] / upd_s,
            "ppo_update_model_gflops": n_trained * med_run["ppo_update_flop_units"] / upd_s / 1e9,
            "threads": torch.get_num_threads(),
        },
        "matmul_fp32_1024_ours": {"gflops_median": peak},
    }


def child_grpo(a, common) -> dict:
    """bench_grpo.py's workload through `train_ppo(GRPOConfig(...))`, every setting that script gives TRL mirrored.

    TRL's GRPOConfig there -> ours: 16 prompts x num_generations 4 per optimizer step -> rollout_batch 16,
    samples_per_prompt 4; steps_per_generation 1, num_iterations 1, gradient_accumulation_steps 1 -> mini_batches 1,
    ppo_epochs 1, grad_accum 1; max_completion_length 32 (stops at EOS) -> response_length 32; temperature 1, top-k 0,
    top-p 1; beta 0.04 in the loss with k3 -> kl_coef 0.04, kl_in loss, kl_estimator k3; loss_type "grpo" (each
    sequence's token mean, then the mean over sequences) -> loss_agg seq-mean-token-mean; scale_rewards group;
    epsilon 0.2 -> cliprange 0.2 both sides; learning_rate 3e-6, no warm-up; TrainingArguments' AdamW defaults:
    weight_decay 0, betas (0.9, 0.999), max_grad_norm 1.0; max_steps 16 -> 256 prompts = 1,024 completions; the
    reward model's raw score (no normalisation, clipping or missing-EOS penalty); no value model. Warm-up: 2 updates
    (TRL: a max_steps=2 trainer), then --repeats fresh runs; completions/s = completions / median loop seconds.
    """
    import torch

    from rlhf.config import GRPOConfig, OptimConfig

    steps = a.grpo_steps or (2 if a.smoke else 16)
    tmp = Path(tempfile.mkdtemp(prefix="rlhf_grpo_bench_"))
    sft_dir, rm_dir = write_random_checkpoints(tmp, common)
    prompts_file = write_prompts(tmp, common)

    def run(out: Path, n_updates: int) -> dict:
        cfg = GRPOConfig(
            out=out,
            sft=sft_dir,
            reward=rm_dir,
            prompts=prompts_file,
            threads=a.threads,
            progress=False,
            seed=0,
            advantage="grpo",
            value_model="none",
            samples_per_prompt=GRPO_G,
            episodes=n_updates * GRPO_PROMPTS_PER_STEP,
            rollout_batch=GRPO_PROMPTS_PER_STEP,
            mini_batches=1,
            ppo_epochs=1,
            response_length=NEW_TOKENS,
            max_prompt_length=64,
            temperature=1.0,
            # TRL's learning_rate 3e-6; HF TrainingArguments' AdamW defaults (ours are 0.9/0.95, clip 1.0).
            optim=OptimConfig(
                lr=3e-6,
                weight_decay=0.0,
                betas=(0.9, 0.999),
                warmup_steps=0,
                min_lr_ratio=1.0,
                grad_clip=1.0,
                grad_accum=1,
            ),
            kl_coef=0.04,
            kl_target=0.0,
            kl_in="loss",
            kl_estimator="k3",
            loss_agg="seq-mean-token-mean",
            scale_rewards="group",
            cliprange=0.2,
            cliprange_high=0.2,
            entropy_coef=0.0,
            mask_truncated=False,
            normalize_reward=False,
            reward_clip=0.0,
            whiten_rewards=False,
            missing_eos_penalty=0.0,
            reward_fn="model",
            log_every=1,
            save_every=0,
        )
        return onpolicy_run(cfg, cfg.mini_batches == 1 and cfg.optim.grad_accum == 1)

    try:
        run(tmp / "warmup", 2)
        runs = []
        for i in range(1 if a.smoke else a.repeats):
            r = run(tmp / f"run{i}", steps)
            runs.append(r)
            print(
                f"ours grpo run {i}: {r['completions']} completions in {r['loop_seconds']:.2f} s loop "
                f"({r['completions'] / r['loop_seconds']:.1f} completions/s, generation "
                f"{100 * r['generation_share']:.0f}%); time_share {r['time_share']}",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med_run = sorted(runs, key=lambda r: r["loop_seconds"])[len(runs) // 2]
    med = med_run["loop_seconds"]
    return {
        "grpo_ours": {
            "steps": med_run["updates"],
            "completions": med_run["completions"],
            "prompts_per_step": GRPO_PROMPTS_PER_STEP,
            "num_generations": GRPO_G,
            "max_completion_length": NEW_TOKENS,
            "train_seconds_median": med,
            "train_seconds_repeats": [r["loop_seconds"] for r in runs],
            "generate_seconds_repeats": [r["phase_seconds"]["generation"] for r in runs],
            "generate_share_median": statistics.median(r["generation_share"] for r in runs),
            "completions_per_s_median": med_run["completions"] / med,
            "timed": med_run["timed"],
            "runs": runs,
            "median_run": runs.index(med_run),
            "time_share": med_run["time_share"],
            "threads": torch.get_num_threads(),
        }
    }


CHILDREN = {
    "generate": child_generate,
    "sft": child_sft,
    "reward": child_reward,
    "ppo": child_ppo,
    "grpo": child_grpo,
    "dpo": child_dpo,
}


def child_main(a) -> None:
    import torch

    from rlhf.allocator import keep_freed_memory

    # What every `rlhf` command does at start (the sampling benchmark calls sample() directly, not a command).
    emit("allocator", {"keep_freed_memory": keep_freed_memory()})
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(a.threads)
    except RuntimeError:
        pass
    os.environ["PEER_MODEL"] = a.peer_model  # before the peer's common reads it
    common = import_peer_common(a.peer_dir)
    check_workload(common)
    res = CHILDREN[a.child](a, common)
    for name, obj in res.items():
        emit(name, obj)
    emit(f"peak_rss_{a.child}", {"mib": peak_rss_self_mib()})


# ================================================================================================ the driver
def our_cmd(bench: str, a) -> list[str]:
    """The command that runs our benchmark `bench` in its own process (this file with --child), with `a`'s
    settings: peer dir, model size, threads, repeats, smoke and the work knobs (None: the peer's defaults)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", bench, "--peer-dir", str(a.peer_dir)]
    cmd += ["--peer-model", a.peer_model, "--threads", str(a.threads), "--repeats", str(a.repeats)]
    cmd += ["--smoke"] if a.smoke else []
    if a.ppo_episodes:
        cmd += ["--ppo-episodes", str(a.ppo_episodes)]
    if a.grpo_steps:
        cmd += ["--grpo-steps", str(a.grpo_steps)]
    if a.sft_iters:
        cmd += ["--sft-iters", ",".join(map(str, a.sft_iters))]
    return cmd


def peer_cmd(bench: str, a) -> list[str]:
    """The command that runs the peer's script for `bench` with TRL's interpreter."""
    return [str(a.trl_python), str(a.peer_dir / PEER_SCRIPT[bench])]


def peer_environ(env: dict, a) -> dict:
    """The peer scripts' environment for `a`: model size, repeats and the same work knobs as ours."""
    e = {**env, "PEER_MODEL": a.peer_model, "BENCH_REPEATS": str(a.repeats), "TRL_EXPERIMENTAL_SILENCE": "1"}
    if a.smoke:
        e.update(BENCH_REPEATS="1", BENCH_PPO_EPISODES="32", BENCH_GRPO_STEPS="2")
    if a.ppo_episodes:
        e["BENCH_PPO_EPISODES"] = str(a.ppo_episodes)
    if a.grpo_steps:
        e["BENCH_GRPO_STEPS"] = str(a.grpo_steps)
    return e


def parse_iters(text: str) -> tuple[int, int, int]:
    """`--sft-iters W,I,R`: warm-up steps, steps per repeat, repeats."""
    try:
        w, i, r = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WARM,ITERS,REPEATS (three integers), got {text!r}"
        ) from None
    if w < 0 or i < 1 or r < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: warm-up >= 0, steps and repeats >= 1")
    return w, i, r


def run_process(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None, verbose=False):
    """Run `cmd`, tee its output to `log`; returns (RESULT dict, wall seconds, peak RSS MiB, load before/after)."""
    before, t0 = loadavg(), time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd, bufsize=1
        )
        lines = []
        try:
            for line in p.stdout:
                f.write(line)
                lines.append(line)
                if verbose and not line.startswith("RESULT "):
                    print("    | " + line.rstrip(), flush=True)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): never leave a benchmark running behind us
            p.kill()
            p.wait()
            raise
        p.stdout.close()
        _, status, ru = os.wait4(p.pid, 0)  # this child's own peak RSS, not the max over all children
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write("".join(lines[-40:]))
        raise SystemExit(f"{' '.join(map(str, cmd))} failed (exit {p.returncode}); log: {log}")
    return parse_results("".join(lines)), wall, ru.ru_maxrss / 1024, (before, loadavg())


def fmt(x, spec=",.1f") -> str:
    return "-" if x is None else format(x, spec)


def ratio(ours, theirs) -> str:
    return "n/a" if ours is None or not theirs else f"{ours / theirs:.2f}"


def dig(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trl-python", type=Path, default=os.environ.get("TRL_PYTHON"), help="TRL venv's python")
    ap.add_argument("--skip-trl", action="store_true", help="only run ours (a dry run; no ratios)")
    ap.add_argument("--peer-dir", type=Path, default=DEFAULT_PEER_DIR, help="the TRL peer harness directory")
    ap.add_argument("--only", action="append", choices=BENCHES, help="run only these benchmarks (repeatable)")
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed runs of PPO, GRPO and reward, ours and TRL's"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads for ours (the peer uses 2)")
    ap.add_argument(
        "--peer-model",
        choices=("tiny", "small", "medium"),
        default=os.environ.get("PEER_MODEL", "tiny"),
        help="the peer's model size (its PEER_MODEL; default: that variable, else tiny): both sides use it",
    )
    ap.add_argument(
        "--ppo-episodes",
        type=int,
        help="timed PPO episodes per run, both sides (the peer's BENCH_PPO_EPISODES; default its 256)",
    )
    ap.add_argument(
        "--grpo-steps",
        type=int,
        help="timed GRPO steps per run, both sides (the peer's BENCH_GRPO_STEPS; default its 16)",
    )
    ap.add_argument(
        "--sft-iters",
        type=parse_iters,
        metavar="W,I,R",
        help="our SFT step's warm-up steps, steps per repeat and repeats (default 5,20,5: the bare baseline's)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every benchmark, both sides, this many times, alternating which side goes first; the last line "
        "then gives each ratio's median over the rounds (this host's speed drifts 30-60%% within minutes, and "
        "not alike for both sides)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-compare-trl", help="result.json, logs")
    ap.add_argument("--verbose", action="store_true", help="echo every subprocess's output")
    ap.add_argument(
        "--smoke", action="store_true", help=argparse.SUPPRESS
    )  # tiny settings, to test the script
    ap.add_argument("--child", choices=BENCHES, help=argparse.SUPPRESS)  # internal: run one of ours
    a = ap.parse_args()
    a.peer_dir = a.peer_dir.resolve()
    if a.child:
        child_main(a)
        return
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not a.skip_trl and a.trl_python is None:
        ap.error("--trl-python PATH is required to run the TRL peer scripts (or --skip-trl for ours only)")
    if not (a.peer_dir / "common.py").exists():
        ap.error(f"{a.peer_dir}: no common.py (the TRL peer harness); set --peer-dir")
    benches = [b for b in BENCHES if b in (a.only or BENCHES)]
    a.out.mkdir(parents=True, exist_ok=True)

    os.environ["PEER_MODEL"] = a.peer_model  # the peer's common reads it at import; children inherit it
    common = import_peer_common(a.peer_dir)
    check_workload(common)
    size = "" if a.peer_model == "tiny" else f" | model {a.peer_model} {common.MODEL_KW}"
    print(
        f"compare_trl: {', '.join(benches)} | ours {a.threads} threads, repeats {a.repeats}{size} | load {loadavg()}"
    )
    warn = busy_warning("start")
    if warn:
        print(warn)
    start_load = loadavg()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so run_process can stop its child
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # logs stream (the peer scripts print without flushing)
    peer_env = peer_environ(env, a)
    rounds = []
    for i in range(a.rounds):
        ours: dict = {}
        trl: dict = {}
        rss: dict = {}
        meta: dict = {}
        tag = f"round {i + 1}/{a.rounds} " if a.rounds > 1 else ""
        suffix = f"_r{i + 1}" if a.rounds > 1 else ""
        for b in benches:
            # Rounds 2, 4, ... run ours first: a drift of the host's speed then favours neither side.
            for side in ("trl", "ours") if i % 2 == 0 else ("ours", "trl"):
                if side == "trl" and a.skip_trl:
                    continue
                cmd = peer_cmd(b, a) if side == "trl" else our_cmd(b, a)
                run_env, results = (peer_env, trl) if side == "trl" else (env, ours)
                who = "TRL" if side == "trl" else "ours"
                print(f"{tag}[{b}] {who}: {' '.join(cmd)}", flush=True)
                # The peer scripts write their trainers' output to the working directory: a throwaway one.
                where = (
                    tempfile.TemporaryDirectory(prefix="trl_bench_cwd_")
                    if side == "trl"
                    else nullcontext(ROOT)
                )
                with where as cwd:
                    log = a.out / f"{side}_{b}{suffix}.log"
                    res, wall, peak, loads = run_process(cmd, log, run_env, Path(cwd), a.verbose)
                results.update(res)
                rss[f"{side}_{b}"] = peak
                meta[f"{side}_{b}"] = {"wall_seconds": wall, "load_before": loads[0], "load_after": loads[1]}
                print(
                    f"{tag}[{b}] {who} done in {wall:.0f} s, peak RSS {peak:.0f} MiB, load {loads[0]} -> {loads[1]}"
                )
        rounds.append({"ours": ours, "trl": trl, "peak_rss_mib": rss, "runs": meta})
        if a.rounds > 1:
            _, r = figures(benches, ours, trl)
            print(f"{tag}{ratio_line(r)}", flush=True)

    report(a, benches, rounds, start_load)


def figures(benches, ours: dict, trl: dict) -> tuple[list, dict]:
    """(rows of (label, ours, theirs, unit), ratios by RATIO_NAMES key) of one round's results."""
    rows = []
    r = {}
    if "ppo" in benches:
        o, t = (
            dig(ours, "ppo_ours", "episodes_per_s_median"),
            dig(trl, "ppo_summary", "episodes_per_s_median"),
        )
        rows.append(("PPO, 256 episodes (16 x 16, 32 tokens, 4 epochs)", o, t, "episodes/s"))
        r["ppo"] = ratio(o, t)
    if "reward" in benches:
        o, t = dig(ours, "reward_ours", "pairs_per_s"), dig(trl, "reward_trainer_fp32", "pairs_per_s")
        rows.append(("reward model, 1 epoch over 512 pairs, batch 16", o, t, "pairs/s"))
        r["reward"] = ratio(o, t)
    if "generate" in benches:
        for bs, cache, _, _ in GEN_CASES:
            key = f"generate_b{bs}_cache{int(cache)}"
            o, t = dig(ours, key, "new_tokens_per_s"), dig(trl, key, "new_tokens_per_s")
            rows.append(
                (f"generate b{bs}{'' if cache else ' (no KV cache)'}, 32 new tokens", o, t, "new tok/s")
            )
            if cache and bs in (16, 64):
                r[f"generate_b{bs}"] = ratio(o, t)
    if "sft" in benches:
        o = dig(ours, "sft_step_16x128", "tokens_per_s_median")
        t = dig(trl, "torch_fwd_bwd_16x128", "tokens_per_s_median")
        rows.append(("SFT step [16,128] (ours) vs bare PyTorch fwd+bwd", o, t, "tok/s"))
        t2 = dig(trl, "torch_fwd_bwd_adamw_16x128", "tokens_per_s_median")
        rows.append(("  ... vs bare fwd+bwd+AdamW step", o, t2, "tok/s"))
        o2 = dig(ours, "sft_step_16x128_dropout01", "tokens_per_s_median")
        if o2 is not None:
            rows.append(("  ours with dropout 0.1 (the baseline's HF default) vs bare", o2, t, "tok/s"))
        r["sft_vs_bare"] = ratio(o, t)
    if "grpo" in benches:
        o = dig(ours, "grpo_ours", "completions_per_s_median")
        t = dig(trl, "grpo_summary", "completions_per_s_median")
        n = dig(ours, "grpo_ours", "completions") or dig(trl, "grpo_summary", "completions")
        rows.append(
            (f"GRPO, {fmt(n, ',.0f')} completions (16 prompts x 4 per step, <=32 tokens)", o, t, "compl./s")
        )
        r["grpo"] = ratio(o, t)
    if "dpo" in benches:
        o, t = dig(ours, "dpo_ours", "pairs_per_s"), dig(trl, "dpo_trainer_fp32", "pairs_per_s")
        rows.append(("DPO, 1 epoch over 512 pairs, batch 16 (reference every step)", o, t, "pairs/s"))
        r["dpo"] = ratio(o, t)
    return rows, r


def ratio_line(r: dict) -> str:
    """`ppo=<x> reward=<x> ...`: the ratios of RATIO_NAMES in order, 'n/a' for a benchmark not run."""
    return " ".join(f"{k}={r.get(k, 'n/a')}" for k in RATIO_NAMES)


def median_ratio(values: list[str]) -> str:
    """Median of one ratio over rounds ('n/a' rounds left out)."""
    xs = [float(v) for v in values if v != "n/a"]
    return f"{statistics.median(xs):.2f}" if xs else "n/a"


def report(a, benches, rounds: list[dict], start_load) -> None:
    """Every round's table, the last round's details (memory, PPO phases, MFU), result.json, the ratio line."""
    per_round = []
    for i, rnd in enumerate(rounds):
        rows, r = figures(benches, rnd["ours"], rnd["trl"])
        per_round.append(r)
        print(f"\nround {i + 1} of {len(rounds)}" if len(rounds) > 1 else "")
        print(f"{'figure':58s} {'ours':>11s} {'TRL/bare':>11s} {'ratio':>6s}  unit")
        for label, o, t, unit in rows:
            print(f"{label:58s} {fmt(o):>11s} {fmt(t):>11s} {ratio(o, t):>6s}  {unit}")
    ours, trl, rss = rounds[-1]["ours"], rounds[-1]["trl"], rounds[-1]["peak_rss_mib"]
    r = {k: median_ratio([pr[k] for pr in per_round]) for k in per_round[-1]}
    if len(rounds) > 1:
        print(f"\nthe details below are round {len(rounds)}'s")

    if "reward" in benches:
        ro, rt = dig(ours, "reward_ours"), dig(trl, "reward_trainer_fp32")
        for who, d in (("ours", ro), ("TRL", rt)):
            if d:
                print(
                    f"reward tokens per epoch, {who}: {d['collated_tokens_nonpad']:,} real / "
                    f"{d['collated_tokens_padded']:,} padded ({100 * d['padding_fraction']:.0f}% padding)"
                )

    print("\npeak RSS per run (MiB, each benchmark in its own process):")
    for b in benches:
        print(
            f"  {b:9s} ours {fmt(rss.get(f'ours_{b}'), ',.0f'):>6s}   TRL script {fmt(rss.get(f'trl_{b}'), ',.0f'):>6s}"
        )

    if "ppo" in benches and "ppo_ours" in ours:
        p = ours["ppo_ours"]
        run = p["runs"][p["median_run"]]
        print(f"\nours PPO time_share (train_ppo's summary): {p['time_share']}")
        ph = run["phase_seconds"]
        print(
            f"  seconds (metrics.jsonl time/*): generation {ph['generation']:.2f}, scoring {ph['scoring']:.2f}, "
            f"update {ph['update']:.2f}; loop {run['loop_seconds']:.2f} s"
        )
        steps = run["decode_steps_per_rollout"]
        print(
            f"  decode steps per rollout: {min(steps)}..{max(steps)} (32 = never stopped early); "
            f"rows with an EOS: {run['rows_with_eos']}/{run['episodes']}"
        )
        tf = dig(trl, "ppo_summary", "phase_fraction_median")
        if tf:  # the peer's own order: generation, scoring, optimisation (and its parts), gc, other
            order = [k for k in TRL_PHASES if k in tf] + sorted(k for k in tf if k not in TRL_PHASES)
            print("TRL PPO phase share: " + ", ".join(f"{k.strip()} {100 * tf[k]:.1f}%" for k in order))

    if "grpo" in benches:
        g, tg = dig(ours, "grpo_ours"), dig(trl, "grpo_summary")
        if g:
            run = g["runs"][g["median_run"]]
            ph = run["phase_seconds"]
            steps = run["decode_steps_per_rollout"]
            print(f"\nours GRPO time_share (train_ppo's summary): {g['time_share']}")
            print(
                f"  seconds (metrics.jsonl time/*): generation {ph['generation']:.2f}, scoring "
                f"{ph['scoring']:.2f}, update {ph['update']:.2f}; loop {run['loop_seconds']:.2f} s; decode steps "
                f"per rollout {min(steps)}..{max(steps)}; completions with an EOS: "
                f"{run['rows_with_eos']}/{run['completions']}"
            )
        gs = [(who, dig(d, "generate_share_median")) for who, d in (("ours", g), ("TRL", tg))]
        shown = [f"{who} {100 * x:.0f}%" for who, x in gs if x is not None]
        if shown:
            print("GRPO generation share of the timed loop (median over repeats): " + ", ".join(shown))

    peak_src = "TRL's bench_torch_baseline"
    peak = dig(trl, "matmul_fp32_1024", "gflops_median")
    if peak is None:
        peak_src = "ours, measured the same way"
        peak = dig(ours, "matmul_fp32_1024_ours", "gflops_median")
    if peak:
        print(f"\nMFU = 6*N*tokens/s over the fp32 matmul peak {peak:.1f} GFLOP/s ({peak_src}):")
        s = dig(ours, "sft_step_16x128")
        if s:
            mfu = s["model_gflops_6NT"] / peak
            note = " (over 100%: the peak was measured while other jobs held the cores)" if mfu > 1 else ""
            print(f"  ours SFT step [16,128]: {100 * mfu:.1f}%{note}")
        bare = dig(trl, "torch_fwd_bwd_16x128", "mfu_vs_matmul")
        if bare is not None:
            print(f"  bare PyTorch fwd+bwd (TRL's script): {100 * bare:.1f}%")
        p = dig(ours, "ppo_ours")
        if p:
            print(
                f"  ours PPO update phase (policy + value, N={p['params_policy_plus_value']:,}): "
                f"{100 * p['ppo_update_model_gflops'] / peak:.1f}% (6N per real token and epoch, less epoch 1's "
                "forward where scoring's forward served as it; the last block's skipped prompt positions still "
                "count, so this is model FLOPs, a little above the FLOPs computed; time = the stage's time/update)"
            )

    end_load = loadavg()
    print(f"\nload average: start {start_load} -> end {end_load}")
    warn = busy_warning("end")
    if warn:
        print(warn)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "benches": benches,
        "peer_model": a.peer_model,
        "threads_ours": a.threads,
        "repeats": a.repeats,
        "smoke": a.smoke,
        **rounds[-1],  # ours, trl, peak_rss_mib, runs: the last round's (the only one by default)
        "load_start": start_load,
        "load_end": end_load,
        "ratios": r,  # the median over rounds
        "ratios_per_round": per_round,
    }
    if len(rounds) > 1:
        result["rounds"] = rounds
    (a.out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"results: {a.out / 'result.json'}")
    if len(rounds) > 1:
        for i, pr in enumerate(per_round):
            print(f"round {i + 1}: {ratio_line(pr)}")
        print(f"(medians over {len(rounds)} rounds below)")
    for k, want in TARGETS.items() if a.peer_model == "tiny" else ():  # targets set for the tiny model
        if k in r:
            got = r[k]
            verdict = "n/a" if got == "n/a" else ("met" if float(got) >= want else "NOT met")
            print(f"target {k} >= {want:.1f}: {got} ({verdict})")
    print(f"ratios vs TRL: {ratio_line(r)}")


if __name__ == "__main__":
    main()
