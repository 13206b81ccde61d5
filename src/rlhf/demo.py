"""`rlhf demo`: SFT -> reward model -> PPO -> compare on the built-in task, each stage a normal run directory.

Wiring only: every stage is the same code the individual commands run, configured through its dataclass.
"""

from __future__ import annotations

import dataclasses
import time

from rlhf.checkpoint import write_json
from rlhf.config import CompareConfig, DemoConfig, PPOConfig, RewardConfig, SFTConfig, TaskConfig
from rlhf.distributed import is_main, share
from rlhf.eval.compare import format_table, run_compare
from rlhf.eval.report import build_report
from rlhf.stages.common import say, setup_run
from rlhf.stages.ppo import train_ppo
from rlhf.stages.reward import train_reward
from rlhf.stages.sft import train_sft


def run_demo(cfg: DemoConfig) -> dict:
    out = setup_run(cfg)
    t0 = time.time()
    common = {"seed": cfg.seed, "threads": cfg.threads, "progress": cfg.progress, "device": cfg.device}

    sft_cfg = SFTConfig(out=out / "sft", epochs=cfg.sft_epochs, **common)
    sft_cfg.optim = dataclasses.replace(sft_cfg.optim, lr=cfg.sft_lr)
    say("== 1/4 SFT")
    sft = train_sft(sft_cfg)

    say("== 2/4 reward model")
    rm = train_reward(
        RewardConfig(
            out=out / "reward",
            init=out / "sft",
            epochs=cfg.rm_epochs,
            task=TaskConfig(n_train=cfg.rm_pairs),
            **common,
        )
    )

    say("== 3/4 PPO")
    ppo_cfg = PPOConfig(
        out=out / "ppo",
        sft=out / "sft",
        reward=out / "reward",
        episodes=cfg.episodes,
        kl_coef=cfg.kl_coef,
        **common,
    )
    ppo_cfg.optim = dataclasses.replace(ppo_cfg.optim, lr=cfg.ppo_lr)
    ppo = train_ppo(ppo_cfg)

    say("== 4/4 compare")
    cmp = run_compare(
        CompareConfig(
            out=out / "compare",
            sft=out / "sft",
            policy=out / "ppo",
            reward=out / "reward",
            n_prompts=cfg.compare_prompts,
            **common,
        )
    )
    if not is_main():  # under torchrun: the stages above trained on every rank; rank 0 writes the report
        return share(None)
    summary = {
        **{k: v for k, v in cmp.items() if k != "samples"},
        "rm_accuracy": rm.get("accuracy"),
        "rm_gold_agreement": rm.get("gold_agreement"),
        "rm_ece": rm.get("ece"),
        "sft_eval_loss": sft["eval_loss"],
        "sft_gold": sft["gold_after"],
        "ppo_time_share": ppo["time_share"],
        "seconds": {
            "sft": sft["seconds"],
            "reward": rm["seconds"],
            "ppo": ppo["seconds"],
            "total": round(time.time() - t0, 1),
        },
        "samples": cmp["samples"],
    }
    write_json(out / "summary.json", summary)
    report = build_report(out)
    print(format_table(summary))
    print(
        f"reward model: accuracy {rm.get('accuracy', 0):.3f}, gold agreement {rm.get('gold_agreement', 0):.3f}"
    )
    print(
        f"total {summary['seconds']['total']:.0f}s | outputs: {out}/ (summary.json, sft/, reward/, ppo/, compare/)"
    )
    print(f"report: {report}")
    return share(summary)
