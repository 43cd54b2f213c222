"""Training: run length, checkpoints, interrupts, torch.distributed, and training on arrays."""
