"""The flags of the tiny SFT and reward runs the tests share (conftest.py builds them once per session)."""

TINY_SFT = [
    "--arch.n-layer", "1", "--arch.n-embd", "32", "--arch.n-head", "2",
    "--task.n-train", "200", "--task.n-eval", "40", "--gold-samples", "8", "--max-new-tokens", "8",
    "--max-length", "64", "--optim.lr", "3e-3", "--optim.warmup-steps", "5", "--max-steps", "40",
    "--no-progress", "--threads", "1",
]  # fmt: skip
TINY_REWARD = [
    "--task.n-train", "200", "--task.n-eval", "40", "--max-length", "64", "--max-steps", "20",
    "--optim.lr", "1e-3", "--optim.warmup-steps", "2", "--no-progress", "--threads", "1",
]  # fmt: skip
