"""Networks. Modules named *_arch.py register themselves with ARCH_REGISTRY."""
