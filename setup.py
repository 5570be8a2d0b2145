"""upforge: a config-registry trainer for image super-resolution."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
requirements = [
    line.strip()
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="upforge",
    version="0.1.0",
    description="Config-registry trainer for image super-resolution (BasicSR-style option files)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["archs", "losses", "data", "models", "utils", "utils.*", "scripts"]),
    py_modules=["train"],
    install_requires=requirements,
    extras_require={"dev": ["pytest>=8", "ruff>=0.5", "spandrel>=0.4"]},
    entry_points={
        "console_scripts": [
            "upforge-train=train:main",
            "upforge-test=models.evaluation:main",
        ]
    },
)
