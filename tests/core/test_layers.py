"""The package map in docs/design.md is the package: every module is listed with a layer, every import
(including one inside a function) goes to the same layer or a lower one, and no imports form a circle."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (\d) \| `(lead_fast/[\w/]+\.py)` \| (.+) \|$")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layers() -> dict[str, int]:
    rows = [ROW.match(line) for line in (ROOT / "docs" / "design.md").read_text().splitlines()]
    return {_module(ROOT / m[2]): int(m[1]) for m in rows if m}


def _imports() -> dict[str, set[str]]:
    """Each module's lead_fast imports, wherever in the file they are (``from a import b`` counts as the
    submodule ``a.b`` when there is one)."""
    files = {_module(p): p for p in sorted((ROOT / "lead_fast").rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        seen = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lead_fast"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    seen.add(sub if sub in files else node.module)
            elif isinstance(node, ast.Import):
                seen |= {a.name for a in node.names if a.name.startswith("lead_fast")}
        graph[name] = seen - {name}
    return graph


def test_every_module_is_on_the_map_and_imports_only_downward():
    layers, graph = _layers(), _imports()
    assert set(layers) == set(graph), (f"modules missing from docs/design.md's map: {sorted(set(graph) - set(layers))}; "
                                       f"listed but absent: {sorted(set(layers) - set(graph))}")
    upward = [f"{m} (layer {layers[m]}) imports {d} (layer {layers[d]})"
              for m, deps in graph.items() for d in deps if layers[d] > layers[m]]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph = _imports()
    state: dict[str, int] = {}        # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, "import circle: " + " -> ".join(path[path.index(d):] + [d])
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_a_circle_and_an_upward_import_would_be_found(monkeypatch):
    """The checks above can fail: a made-up graph with a circle and an upward arrow is caught."""
    import pytest

    fake = {"lead_fast.a": {"lead_fast.b"}, "lead_fast.b": {"lead_fast.a"}}
    monkeypatch.setitem(globals(), "_imports", lambda: fake)
    with pytest.raises(AssertionError, match="import circle: lead_fast.a -> lead_fast.b -> lead_fast.a"):
        test_no_import_circle()
    monkeypatch.setitem(globals(), "_layers", lambda: {"lead_fast.a": 0, "lead_fast.b": 1})
    with pytest.raises(AssertionError, match=r"lead_fast.a \(layer 0\) imports lead_fast.b \(layer 1\)"):
        test_every_module_is_on_the_map_and_imports_only_downward()


PUBLIC_API = {"grpo_loss"}      # docs/design.md's public functional API keeps its keyword arguments


def test_no_internal_function_takes_more_than_twelve_parameters():
    """Knobs travel in typed objects (``LossParams``, ``UpdateSettings``, ``GradingRules``...), not as long
    argument lists. Triton kernels (their arguments are the launch's) and the public API are exempt."""
    long = []
    for path in sorted((ROOT / "lead_fast").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name in PUBLIC_API:
                continue
            if any(ast.unparse(d).endswith("jit") for d in node.decorator_list):
                continue
            a = node.args
            params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
            if len(params) > 12:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} takes {len(params)}")
    assert not long, "\n".join(long)
