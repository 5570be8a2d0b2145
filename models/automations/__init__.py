"""Training automations: components the training loop calls through hooks (``*_automation.py``)."""
