"""Packaging: one top-level name in site-packages, working console scripts, declared = used dependencies."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import upforge

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("archs", "data", "losses", "models", "utils", "scripts", "upforge")
# Imports that use a distribution without naming it.
INDIRECT = {"torch.utils.tensorboard": "tensorboard"}
# Distributions used without any import of theirs: the exporter runs them through torch.onnx.
USED_WITHOUT_IMPORT = {"onnxscript"}
# Module name -> distribution, for the optional packages and where the names differ.
DIST_OF = {
    "cv2": "opencv-python-headless", "yaml": "pyyaml", "pytorch_msssim": "pytorch-msssim",
    "typing_extensions": "typing-extensions",
    "pydantic_core": "pydantic",  # pydantic pins its own core; its docs import core_schema from there
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _normalise(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0])


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    spec = importlib.util.spec_from_file_location("upforge_setup", ROOT / "setup.py")
    setup_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_module)  # setup() itself only runs as __main__
    core, extras = setup_module.declared_dependencies()
    return {_requirement_name(r) for r in core}, {k: {_requirement_name(r) for r in v} for k, v in extras.items()}


def _project_files() -> list[Path]:
    files = [ROOT / "train.py", ROOT / "test.py"]
    for folder in CODE_DIRS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def _called_name(node: ast.Call) -> str | None:
    return getattr(node.func, "attr", getattr(node.func, "id", None))


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every absolute import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `try: import x` and `if ...: import x` at the top still run on import
        if isinstance(node, ast.Try | ast.If):
            top_level |= {id(child) for child in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, id(node) in top_level))
        elif (isinstance(node, ast.Call) and _called_name(node) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.args[0].value, id(node) in top_level))  # importlib.import_module("name")
    return found


def _third_party(module: str) -> str | None:
    """The distribution an import needs, None for the standard library and the project itself."""
    for prefix, dist in INDIRECT.items():
        if module == prefix or module.startswith(prefix + "."):
            return dist
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in upforge.PROJECT_MODULES or top in ("upforge", "__future__"):
        return None
    return _normalise(DIST_OF.get(top, top))


def test_declared_dependencies_match_the_imports() -> None:
    core, extras = _declared()
    optional = set().union(*extras.values())
    used: set[str] = set()
    eager_optional: list[str] = []
    for path in _project_files():
        for module, top_level in _imports(path):
            dist = _third_party(module)
            if dist is None:
                continue
            used.add(dist)
            benchmark = path.parent.name == "scripts" and path.name.startswith("benchmark")
            if dist in optional and dist not in core and top_level and not benchmark:
                eager_optional.append(f"{path.relative_to(ROOT)} imports {module} at module level")
    assert not (used - core - optional), f"imported but not declared: {sorted(used - core - optional)}"
    assert not (core - used), f"declared runtime dependencies nothing imports: {sorted(core - used)}"
    unused_extras = optional - used - USED_WITHOUT_IMPORT
    assert not unused_extras, f"extras nothing imports: {sorted(unused_extras)}"
    # An extra must stay optional: the registries import every module, so a module-level import of an
    # extra would make it a hard requirement of every run.
    assert not eager_optional, "\n".join(eager_optional)
    assert extras["all"] == optional


def test_requirements_txt_holds_core_and_training_extras() -> None:
    core, extras = _declared()
    listed = {_requirement_name(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert core <= listed
    assert {"lpips", "pytorch-msssim", "tifffile"} <= listed  # the demo user gets every loss and format
    assert "scipy" not in listed  # only the tests use it


def test_activate_refuses_a_foreign_module_of_the_same_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    foreign = tmp_path / "train.py"
    foreign.write_text("")
    spec = importlib.util.spec_from_file_location("train", foreign)
    monkeypatch.setitem(sys.modules, "train", importlib.util.module_from_spec(spec))
    with pytest.raises(RuntimeError, match=r"'train' from .*tmp.* is already imported"):
        upforge.activate()
    assert upforge.source_root() == ROOT  # a clone: the repository root holds train.py


def _build_wheel(out: Path) -> Path:
    """Build from a copy, so the checkout gets no build/ or egg-info folders."""
    src = out / "src"
    for name in ("setup.py", "requirements.txt", "README.md", "train.py", *CODE_DIRS):
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (out / "dist").glob("upforge-*.whl")
    return wheel


def test_installed_wheel_puts_one_name_at_the_top_and_leaves_a_users_utils_alone(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies (torch, ...) come from this interpreter's environment rather than a 5 GB download.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, capture_output=True, timeout=300)

    top = sorted(p.name for p in site.iterdir() if p.name not in ("_test_deps.pth", "__pycache__"))
    assert [n for n in top if not n.startswith("upforge-")] == ["upforge"], top
    scripts = {p.name for p in (env_dir / "bin").iterdir()}
    assert {"upforge-train", "upforge-test", "upforge-upscale", "upforge-export"} <= scripts

    user = tmp_path / "user"
    user.mkdir()
    (user / "utils.py").write_text("MARK = 'the user module'\n")
    env = {**os.environ, "PYTHONPATH": str(user)}
    probe = subprocess.run([str(python), "-c", "import upforge, utils; print(utils.MARK)"],
                           env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert probe.stdout.strip() == "the user module", probe.stderr

    option_file = ROOT / "options" / "train" / "quickstart.yml"
    check = subprocess.run([str(env_dir / "bin" / "upforge-train"), "-opt", str(option_file), "--check"],
                           env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert check.returncode == 0, check.stderr
    assert "network_g (EDSR)" in check.stdout and "valid" in check.stdout
    # The command ran upforge's own modules from the installed package, not the clone or the user's.
    where = subprocess.run(
        [str(python), "-c", "import upforge; upforge.activate(); import utils.options as o; print(o.__file__)"],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(site / "upforge"), where.stdout + where.stderr
    for command in ("upforge-test", "upforge-upscale"):
        helped = subprocess.run([str(env_dir / "bin" / command), "--help"], env=env, capture_output=True,
                                text=True, cwd=tmp_path, timeout=120)
        assert helped.returncode == 0 and "usage:" in helped.stdout, helped.stderr
