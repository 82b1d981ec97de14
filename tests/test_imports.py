"""The layout's rules (README, "Layout"): who may import whom, checked by import-linter against the
contracts in pyproject.toml; no sys.path manipulation; no private name used across modules."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("lambdaflow", "stream_worker")
TREES = (*PACKAGES, "dags", "bench", "chaos", "tests")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_import_rule_is_kept() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("lambdaflow/serving/status.py", "from lambdaflow.kafka import clients", "Serving reads published files only"),
        ("lambdaflow/core/days.py", "import airflow", "The core never imports"),
        ("stream_worker/state.py", "from lambdaflow.batch import publish", "The shells sit on the layers"),
        ("lambdaflow/batch/verify.py", "import bench", "Nothing in the package imports"),
    ],
)
def test_a_broken_rule_is_found(tmp_path, module: str, line: str, contract: str) -> None:
    """The same check over a copy of the package with one forbidden import added."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    broken = tmp_path / module
    broken.write_text(broken.read_text() + f"\n{line}  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout[-3000:]
    verdicts = [text for text in done.stdout.splitlines() if text.endswith(("KEPT", "BROKEN"))]
    assert len([v for v in verdicts if v.endswith("BROKEN")]) == 1, done.stdout
    assert contract in done.stdout.split("Broken contracts", 1)[1], done.stdout


def sources() -> list[Path]:
    return sorted(path for tree in TREES for path in (ROOT / tree).rglob("*.py") if "__pycache__" not in path.parts)


def test_nothing_changes_sys_path() -> None:
    found = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and _name(node.value) == "sys":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_no_private_name_is_used_across_modules() -> None:
    """`from m import _x` and `m._x`, where m is one of the project's modules, outside m itself."""
    ours = {path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".") for path in sources()}
    ours |= {name.removesuffix(".__init__") for name in ours}
    found = []
    for path in sources():
        tree = ast.parse(path.read_text(), str(path))
        modules: set[str] = set()  # local names bound to one of our modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in ours:
                        modules.add(alias.asname or alias.name)
                    elif node.module in ours and _private(alias.name):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {alias.name}")
            elif isinstance(node, ast.Import):
                modules |= {alias.asname for alias in node.names if alias.asname and alias.name in ours}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and _name(node.value) in modules:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {_name(node.value)}.{node.attr}")
    assert found == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _name(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else None


def test_no_module_of_the_package_is_over_400_lines_and_no_dag_file_over_120() -> None:
    too_long = {
        str(path.relative_to(ROOT)): lines
        for tree, most in [*((package, 400) for package in PACKAGES), ("dags", 120)]
        for path in (ROOT / tree).rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > most
    }
    assert too_long == {}


def test_a_serving_answer_does_not_import_polars(tmp_path: Path) -> None:
    """`lambdaflow query` starts a fresh process for each question: Polars, which only the layers that
    write need, would add most of a second to its start-up (measured: 0.35 s against 0.6 s in all)."""
    code = (
        "import sys\n"
        "from lambdaflow.cli import main\n"
        "sys.argv = ['lambdaflow', 'query', '--from', '2026-11-01', '--to', '2026-11-02', '--format', 'json']\n"
        "try:\n    main()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
        "assert 'polars' not in sys.modules, 'the answer imported polars'\n"
    )
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(ROOT), "LAMBDAFLOW_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"event_date": "2026-11-01"' in done.stdout
