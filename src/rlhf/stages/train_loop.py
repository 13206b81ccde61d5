"""The supervised training loop shared by `rlhf sft`, `rlhf reward` and `rlhf dpo`: plain code, no base class.

A stage builds a `TrainLoop` (optimizer steps, resume, metrics, progress bar) and iterates it; each item is one
optimizer step's global micro-batches, and the stage's loop body is only what is its own - collate, forward, loss:

    loop = TrainLoop("sft", cfg, out, model, opt, total_steps, micro_batch, evaluate)
    for step in loop:                         # lr schedule set; afterwards: clip, step, log, evaluate, checkpoint
        step.total = ...                      # the step's global weight: target tokens (SFT), pairs (reward, DPO)
        for examples, real in step.shards():  # this process's share of each micro-batch (DDP syncs on the last)
            loss_sum, stats = ...             # a SUM over the examples, and summed statistics
            step.backward(loss_sum, real, **stats)

Every loss is a sum divided by the whole step's weight (times the number of processes, since DDP averages), so
gradient accumulation and the process count never change the update (tests/test_sft.py, test_distributed.py).
Logged values are the step's reduced sums over `total` (e.g. loss, accuracy), plus lr, grad_norm and, when the
stage counts "tokens", tokens_per_s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn

from rlhf import stop
from rlhf.config import TrainConfig
from rlhf.distributed import all_reduce_sum, is_main, is_sharded, no_sync, shard, unsharded, world, wrap_ddp
from rlhf.metrics import MetricsWriter
from rlhf.stages.common import (
    clip_grads,
    end_of_step,
    lr_factor,
    non_finite,
    progress,
    restore_training_state,
    save_training_state,
    say,
    set_lr,
)


class Step:
    """One optimizer step: its index, the global micro-batches (lists of examples every process builds alike), and
    the sums the stage adds as it goes."""

    def __init__(self, index: int, batches: list[list], train_model: nn.Module):
        self.index = index
        self.batches = batches
        self.total = 1.0  # the step's global weight; the stage sets it before its first backward
        self.sums: dict[str, float] = {}
        self.finite = True  # every micro-batch's loss so far
        self._train_model = train_model

    def shards(self) -> Iterator[tuple[list, int]]:
        """(this process's examples, real) of each micro-batch, with DDP's gradient all-reduce on the last one only.

        real = 0 marks a stand-in example (fewer examples than processes): it must run forward and backward, since
        every DDP all-reduce needs every process, but counts for nothing."""
        for j, batch in enumerate(self.batches):
            local, real = shard(batch)
            with no_sync(self._train_model, sync=j == len(self.batches) - 1):
                yield local, int(real)

    def backward(self, loss_sum: torch.Tensor, real: int = 1, **stats: float) -> None:
        """Backward of this micro-batch's summed loss over the step's total weight (x world(): DDP averages the
        processes' gradients, which must add up instead); `stats` (sums) are added to the step's."""
        (loss_sum * (real * world()) / self.total).backward()
        self.finite = self.finite and bool(torch.isfinite(loss_sum.detach()).all())
        self.add(real, **stats)

    def add(self, real: int = 1, **stats: float) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * real


class TrainLoop:
    """Optimizer steps of one run: the schedule, resume, metrics.jsonl, evaluation, checkpoints, the progress bar.

    `micro_batch(i)` returns the i-th micro-batch of the run (its order may depend only on the seed and i, which
    makes resume exact); `evaluate(model)` (rank 0; the whole model, also under FSDP) returns held-out metrics, logged every `cfg.eval_every` steps and at
    the end. After construction, `.step` is where training starts (0, or the resumed step).
    """

    def __init__(
        self,
        name: str,
        cfg: TrainConfig,
        out: Path,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        total_steps: int,
        micro_batch: Callable[[int], list],
        evaluate: Callable[[], dict] | None = None,
        ddp_method: str | None = None,
        state_name: str | None = None,
    ):
        self.name, self.cfg, self.out = name, cfg, out
        self.state_name = state_name or name  # the models' and optimizers' key in resume checkpoints
        self.model, self.opt = model, opt
        self.total_steps = total_steps
        self.micro_batch, self.evaluate = micro_batch, evaluate
        # Resume: weights, optimizer, RNG states; the step index fixes the data position.
        self.step = 0
        self.resumed = False
        if cfg.resume:
            restored = restore_training_state(out, {self.state_name: model}, {self.state_name: opt})
            if restored is not None:
                self.step, self.resumed = restored[0], True
                say(f"{name}: resumed at step {self.step}")
        self.metrics = MetricsWriter(
            out / "metrics.jsonl",
            resume_step=self.step if self.resumed else None,
            tensorboard=cfg.tensorboard,
        )
        # Training forwards go through DDP under torchrun (gradients averaged); `ddp_method` names the model's
        # method to run as the forward (e.g. ScalarModel.score_pairs).
        self.train_model = wrap_ddp(model, method=ddp_method)

    def __iter__(self) -> Iterator[Step]:
        with stop.graceful():  # SIGTERM / SIGINT: finish the step, write a resume checkpoint, stop
            try:
                yield from self._steps()
            finally:  # also when a stop or a non-finite loss ends the run: metrics.jsonl is complete
                self.metrics.close()

    def _steps(self) -> Iterator[Step]:
        cfg = self.cfg
        bar = progress(self.total_steps, self.name, cfg.progress, initial=self.step)
        tokens_seen, t_loop = 0.0, time.time()
        while self.step < self.total_steps:
            lr = cfg.optim.lr * lr_factor(
                self.step, self.total_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio
            )
            set_lr(self.opt, lr)
            accum = cfg.optim.grad_accum
            step = Step(
                self.step, [self.micro_batch(self.step * accum + j) for j in range(accum)], self.train_model
            )
            yield step  # the stage: forward, loss, backward for each micro-batch

            grad_norm = clip_grads(self.model, cfg.optim.grad_clip)
            # A diverged step stops the run before the optimizer applies it: the weights stay finite, and the
            # last resume checkpoint stays the last good one. Every process decides alike (a lone stop would
            # leave the others waiting in the next all-reduce); the gradient norm is the same on every process.
            bad_loss = not step.finite
            if world() > 1:
                bad_loss = bool(all_reduce_sum(float(bad_loss)))
            if bad_loss or not math.isfinite(grad_norm):
                raise non_finite(self.name, "loss" if bad_loss else "gradient norm", self.step + 1, self.out)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            bar.update(1)
            tokens_seen += step.sums.pop("tokens", 0.0)
            row = {}
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                names = sorted(step.sums)
                reduced = all_reduce_sum(torch.tensor([step.sums[k] for k in names], dtype=torch.float64))
                row = {k: v / step.total for k, v in zip(names, reduced.tolist())}  # over all processes
                row |= {"lr": lr, "grad_norm": grad_norm}
                if tokens_seen:
                    row["tokens_per_s"] = float(all_reduce_sum(tokens_seen)) / max(time.time() - t_loop, 1e-9)
            if self.evaluate and (self.step % cfg.eval_every == 0 or self.step == self.total_steps):
                whole = unsharded(self.model)  # FSDP: gathered into rank 0's copy (every rank takes part)
                if is_main():
                    row |= self.evaluate(whole)
            if row:
                self.metrics.log(self.step, **row)
                shown = next((k for k in ("eval/accuracy", "loss") if k in row), None)
                if shown:
                    bar.set_postfix({shown.replace("eval/", "eval_"): f"{row[shown]:.3f}"})
            end_of_step(
                self.name,
                self.out,
                self.step,
                self.total_steps,
                cfg.save_every,
                lambda: save_training_state(
                    self.out, self.step, {self.state_name: self.model}, {self.state_name: self.opt}
                ),
                every_rank=is_sharded(self.model),  # FSDP: every process writes its shards
            )
        bar.close()
