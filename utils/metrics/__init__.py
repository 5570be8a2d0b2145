"""Image-quality metrics; every module here registers its functions with METRIC_REGISTRY."""
