"""Losses. Modules named *_loss.py register themselves with LOSS_REGISTRY."""
