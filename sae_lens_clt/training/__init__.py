"""CLT training: the training-time CLT, the runner on SAELens' ActivationsStore, checkpoints."""
