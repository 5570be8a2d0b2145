"""Datasets and data tools. Modules named *_dataset.py register with DATASET_REGISTRY."""
