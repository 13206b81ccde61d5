"""Stage trainers: sft, reward, ppo - each a train_<stage>(cfg) that reads top to bottom."""
