"""Training, evaluation and checkpoints: the loop around the model (no model code here)."""
