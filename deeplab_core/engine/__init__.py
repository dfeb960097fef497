"""Training and evaluation engine: the training loop with exact resume, checkpoints, sliding
and multi-scale inference, and evaluation with the papers' metrics."""
