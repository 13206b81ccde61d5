"""rlhf: the whole RLHF pipeline (SFT -> reward model -> PPO), correct, fast, CPU-first."""

__version__ = "0.1.0"
