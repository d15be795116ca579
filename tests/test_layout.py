"""The layout's rules (docs/CONTRACTS.md): the packages import one way, and every name is
imported from the module that defines it, never through a module that only re-exports it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("asyncvla", "envs", "evalsuite")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _defined_names(tree: ast.Module, package: bool) -> set[str]:
    """Names a module binds itself (not by importing them); for a package, also its declared public
    API (`__all__`: an adapter package's `make_env`, `evalsuite.evaluate_suite`)."""
    names = set()
    for node in tree.body if package else ():
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            names.update(ast.literal_eval(node.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _our_imports(files: list[Path]):
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                yield path, node


def test_names_are_imported_from_where_they_are_defined():
    sources = _sources()
    defined = {
        name: _defined_names(ast.parse(path.read_text()), path.name == "__init__.py")
        for name, path in sources.items()
    }
    files = (
        list(sources.values())
        + sorted((ROOT / "tests").glob("*.py"))
        + sorted((ROOT / "scripts").glob("*.py"))
    )
    wrong = []
    for path, node in _our_imports(files):
        if node.module not in defined:
            continue  # a module of a simulator's fake, or one that does not exist (import fails anyway)
        for alias in node.names:
            submodule = f"{node.module}.{alias.name}"
            if alias.name not in defined[node.module] and submodule not in sources:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name} from {node.module}"
                )
    assert not wrong, "import these names from the module that defines them:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "package,forbidden", [("asyncvla", ("envs", "evalsuite")), ("envs", ("asyncvla", "evalsuite"))]
)
def test_the_packages_import_one_way(package, forbidden):
    wrong = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}"
        for path, node in _our_imports(sorted((ROOT / package).rglob("*.py")))
        if node.module.split(".")[0] in forbidden
    ]
    assert not wrong, "\n".join(wrong)
