"""upforge: a config-registry trainer for image super-resolution.

The repository keeps its flat layout (``archs/ data/ losses/ models/ utils/ scripts/ train.py``);
the wheel nests all of it under the single top-level package ``upforge`` (see upforge/__init__.py
for why and how the console scripts find the short module names).
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
PROJECT_PACKAGES = ("archs", "data", "losses", "models", "utils", "scripts")


def read_requirements(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Core requirements and extras from requirements.txt (``# extra: NAME`` opens an extra)."""
    core: list[str] = []
    extras: dict[str, list[str]] = {}
    target = core
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("# extra:"):
            target = extras.setdefault(line.split(":", 1)[1].strip(), [])
        elif line and not line.startswith("#"):
            target.append(line)
    return core, extras


class BuildPyWithTrain(build_py):
    """Also place ``train.py`` inside the package: the console scripts import it as ``train``."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):  # an editable install uses the clone itself
            self.copy_file(str(ROOT / "train.py"), str(Path(self.build_lib) / "upforge" / "train.py"))


def declared_dependencies() -> tuple[list[str], dict[str, list[str]]]:
    """install_requires and extras_require; tests/test_packaging.py checks them against the imports."""
    core, extras = read_requirements(ROOT / "requirements.txt")
    # Tools outside a training run: not in requirements.txt, so the demo installs stay lean.
    extras["onnx"] = ["onnx>=1.18", "onnxruntime>=1.20", "onnxscript>=0.4"]
    extras["lmdb"] = ["lmdb>=1.4"]
    extras["wandb"] = ["wandb>=0.19.10"]  # reinit="create_new"
    extras["all"] = sorted({req for reqs in extras.values() for req in reqs})
    return core, extras


def main() -> None:
    core, extras = declared_dependencies()
    subpackages = find_packages(include=list(PROJECT_PACKAGES) + [f"{p}.*" for p in PROJECT_PACKAGES])
    setup(
        name="upforge",
        version="0.1.0",
        description="Config-registry trainer for image super-resolution (BasicSR-style option files)",
        long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
        long_description_content_type="text/markdown",
        python_requires=">=3.10",
        packages=["upforge"] + [f"upforge.{p}" for p in subpackages],
        package_dir={"upforge": "upforge", **{f"upforge.{p}": p for p in PROJECT_PACKAGES}},
        cmdclass={"build_py": BuildPyWithTrain},
        install_requires=core,
        extras_require=extras,
        entry_points={
            "console_scripts": [
                "upforge-train=upforge.cli:train",
                "upforge-test=upforge.cli:test",
                "upforge-upscale=upforge.cli:upscale",
                "upforge-export=upforge.cli:export",
            ]
        },
    )


if __name__ == "__main__":  # setuptools runs setup.py as __main__; tests import it
    main()
