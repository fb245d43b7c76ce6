"""dpd's packages form layers: a package imports only packages of lower layers, never a peer
of its own layer nor one above it, so no two packages import each other (README, Layout).

Every module under dpd/ is parsed (nothing is imported or run) and every ``import`` in it
counts, at the top, inside a function or under ``TYPE_CHECKING``: a type-only import is
still a dependency a reader must follow. A new top-level package or module fails here until
it is placed in ``LAYERS``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

DPD = Path(__file__).resolve().parent.parent / "dpd"

# Lowest first. Units of one layer are peers: they may not import each other.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        # leaves: import nothing of dpd (simulation is the stand-in trainer, its own program;
        # web holds the dashboard's static files)
        "dpd crashpoints errors logsetup notify simulation web",
        "config envelope",
        "jobs",  # pure domain: specs, states, the diffusion-pipe config renderer
        "spool",  # atomic files, the durable job store, spool intake
        "keys trainlog",
        "events local_key",
        "supervisor preprocess models alerts",
        "logs fleet",
        "services",  # the components one daemon is made of, as HTTP reaches them
        "http",
        "daemon client",
        "cli",
        "__main__",
    )
)
LAYER_OF: dict[str, int] = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    line: int
    target: str  # the imported dpd module or name, dotted

    @property
    def source_unit(self) -> str:
        return unit_of(self.module)

    @property
    def target_unit(self) -> str:
        return unit_of(self.target)


def unit_of(dotted: str) -> str:
    """The top-level package or module of ``dpd.x.y`` (``x``); ``dpd`` for the package root."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path, root: Path = DPD) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level(root: Path = DPD) -> frozenset[str]:
    """The names of dpd's top-level packages and modules."""
    return frozenset(p.stem for p in root.iterdir() if p.suffix == ".py" or p.is_dir())


def imports_in(
    module: str, source: str, is_package: bool = False, units: frozenset[str] | None = None
) -> Iterator[Import]:
    """Every import of a dpd module in ``source`` (relative imports resolved); ``units`` tells
    ``from dpd import keys`` (a module) from ``from dpd import __version__`` (a name)."""
    units = top_level() if units is None else units
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "dpd" or alias.name.startswith("dpd."):
                    yield Import(module, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base != "dpd" and not base.startswith("dpd."):
                continue
            for alias in node.names:
                submodule = base == "dpd" and alias.name in units
                yield Import(module, node.lineno, f"dpd.{alias.name}" if submodule else base)


def all_imports(root: Path = DPD) -> list[Import]:
    units, found = top_level(root), []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        found.extend(imports_in(module_name(path, root), source, path.name == "__init__.py", units))
    return found


def unplaced(root: Path = DPD) -> set[str]:
    return {unit_of(module_name(p, root)) for p in root.rglob("*.py")} - set(LAYER_OF)


def layer_violations(imports: list[Import]) -> list[str]:
    """Imports of a peer or of a higher layer, as readable lines."""
    problems = []
    for imp in imports:
        source, target = imp.source_unit, imp.target_unit
        if source == target or source not in LAYER_OF or target not in LAYER_OF:
            continue  # within a package; or an unplaced unit, reported on its own
        if LAYER_OF[target] >= LAYER_OF[source]:
            where = "a peer" if LAYER_OF[target] == LAYER_OF[source] else "a higher layer"
            problems.append(f"{imp.module}:{imp.line} imports {imp.target} ({where})")
    return problems


def package_cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one unit (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def unit_edges(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if imp.source_unit != imp.target_unit:
            edges.setdefault(imp.source_unit, set()).add(imp.target_unit)
    return edges


# ------------------------------------------------------------------ dpd itself


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = all_imports()
    assert len(found) > 300  # the parser did find dpd's imports
    return found


def test_every_package_is_placed_in_a_layer() -> None:
    assert unplaced() == set(), "place these in LAYERS (and in the README's Layout)"


def readme_layers(readme: str) -> list[frozenset[str]]:
    """The layer order the README's Layout states: "a, b < c < ..." after "Packages form
    layers"."""
    paragraph = readme.split("Packages form layers", 1)[1].split("\n\n", 1)[0]
    order = " ".join(paragraph.split(":", 1)[1].split()).rstrip(".")
    return [frozenset(n.strip() for n in layer.split(",")) for layer in order.split("<")]


def test_the_readme_states_the_same_layers() -> None:
    readme = (DPD.parent / "README.md").read_text(encoding="utf-8")
    stated = [layer - {"dpd", "__main__"} for layer in LAYERS]
    assert readme_layers(readme) == [layer for layer in stated if layer]


def test_no_package_imports_a_peer_or_a_higher_layer(imports: list[Import]) -> None:
    assert layer_violations(imports) == []


def test_no_import_cycles_between_packages(imports: list[Import]) -> None:
    assert package_cycles(unit_edges(imports)) == []


# ------------------------------------------------------------------ the checker itself


def test_an_upward_import_is_caught() -> None:
    found = list(imports_in("dpd.spool.store", "from dpd.http.app import build_app\n"))
    assert layer_violations(found) == ["dpd.spool.store:1 imports dpd.http.app (a higher layer)"]


def test_imports_hidden_in_functions_and_type_checking_blocks_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from dpd.daemon import Daemon\n"
        "def f():\n"
        "    import dpd.cli.remote\n"
        "    from .. import http\n"
    )
    found = list(imports_in("dpd.jobs.spec", source))
    assert [i.target for i in found] == ["dpd.daemon", "dpd.cli.remote", "dpd.http"]
    assert len(layer_violations(found)) == 3


def test_a_peer_import_is_caught_and_a_lower_one_is_not() -> None:
    found = list(
        imports_in("dpd.models.hub", "from dpd.preprocess import plan\nfrom dpd import errors\n")
    )
    assert layer_violations(found) == ["dpd.models.hub:1 imports dpd.preprocess (a peer)"]


def test_a_cycle_between_packages_is_found() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert package_cycles(edges) == [["a", "b", "c"]]


def test_an_unplaced_module_is_reported(tmp_path: Path) -> None:
    (tmp_path / "dpd").mkdir()
    (tmp_path / "dpd" / "newthing.py").write_text("from dpd import errors\n")
    assert unplaced(tmp_path / "dpd") == {"newthing"}
