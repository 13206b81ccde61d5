"""Experiments on the built-in task (`rlhf experiment <name>`, docs/experiments.md).

Each module wires the stages (SFT, reward model, PPO, compare) through their configs, like `rlhf demo` does, and
writes DIR/summary.json, DIR/metrics/*.jsonl, DIR/plots/*.png and DIR/report.html. No training loop lives here.
"""
