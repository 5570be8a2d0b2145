"""Shared utilities: registry, options, logging, checkpoints, metrics."""
