"""The package layout the README describes: packages by concern, and one direction between the two halves."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_inspector_package_never_imports_the_producers() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p) if m.split(".")[0] == "producers")
                 for p in (ROOT / "inspector").rglob("*.py")}
    assert {path: mods for path, mods in offenders.items() if mods} == {}


@pytest.mark.parametrize("package", sorted(p.parent.name for p in (ROOT / "inspector").glob("*/__init__.py")))
def test_each_sub_package_says_what_it_owns(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / "inspector" / package / "__init__.py").read_text()))
    assert doc and len(doc.splitlines()) == 1, f"inspector/{package}/__init__.py needs a one-line docstring"


KAFKA_CLIENTS = {"kafka", "confluent_kafka"}


def test_only_the_kafka_package_imports_a_kafka_client() -> None:
    """The transport is a boundary only if it is whole: the UI and the producers go through it too (tests and
    benchmarks may still use a client directly)."""
    sources = [*(ROOT / "inspector").rglob("*.py"), *(ROOT / "producers").rglob("*.py")]
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p) if m.split(".")[0] in KAFKA_CLIENTS)
                 for p in sources if (ROOT / "inspector" / "kafka") not in p.parents}
    assert {path: mods for path, mods in offenders.items() if mods} == {}
