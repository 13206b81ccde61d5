"""`rlhf sample`: generate from any policy checkpoint (SFT or PPO)."""

from __future__ import annotations

from rlhf.checkpoint import write_json
from rlhf.config import SampleConfig
from rlhf.distributed import device
from rlhf.errors import UserError
from rlhf.models.build import load_policy
from rlhf.stages.common import generate_texts, setup_run
from rlhf.tasks import get_task


def run_sample(cfg: SampleConfig) -> dict:
    out = setup_run(cfg)
    model, tok, config = load_policy(cfg.checkpoint)
    model.to(device())
    task = get_task("instruct", seed=cfg.seed)
    prompts = cfg.prompt or task.prompts(4, split="test")
    block = config["backbone"].get("arch", {}).get("block_size", 512)
    if cfg.max_new_tokens > block - 2:  # bos + at least one prompt token must fit beside the answer
        raise UserError(
            f"--max-new-tokens {cfg.max_new_tokens} leaves no room for a prompt in the checkpoint's block size "
            f"{block}; use at most {block - 2}"
        )
    rows = []
    for i in range(cfg.n):
        res = generate_texts(
            model,
            tok,
            prompts,
            cfg.max_new_tokens,
            block - cfg.max_new_tokens,
            cfg.temperature,
            cfg.seed + i,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
        )
        for p, r in zip(prompts, res):
            gold = task.score(p, r["text"], r["finished"]) if not cfg.prompt else None
            rows.append({"prompt": p, "response": r["text"], "finished": r["finished"], "gold": gold})
    for r in rows:
        print(f"{r['prompt']!r} -> {r['response']!r}" + ("" if r["finished"] else "  [no EOS]"))
    write_json(out / "summary.json", {"checkpoint": str(cfg.checkpoint), "samples": rows})
    print(f"outputs: {out}/summary.json")
    return {"samples": rows}
