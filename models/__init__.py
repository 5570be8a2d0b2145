"""Training runners. Modules named *_model.py register with MODEL_REGISTRY."""
