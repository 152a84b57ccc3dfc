"""Encoder training: contrastive losses and the training loop."""
