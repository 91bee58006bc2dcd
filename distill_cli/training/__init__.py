"""The training loop, its stages, checkpoints, loss terms and word signal."""
