"""The package's shape: no import cycles in the core, and plugins use only the public plugin API.

Both read the source (``ast``), so they hold for imports inside functions and under
``TYPE_CHECKING`` too: a cycle there is a cycle a refactor has to untangle all the same.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "vlkit"
PLUGINS = sorted(p for p in (ROOT / "plugins").glob("vlkit-plugin-*") if (p / "pyproject.toml").is_file())
COOKIECUTTER = CORE / "cookiecutter"

#: plugin modules that support tests and benchmarks (tiny checkpoints, references, eager peers):
#: these may use the test kit and the bench harness besides the plugin API
SUPPORT_MODULES = {"checkpoints", "checkpoint", "testing", "bench"}
RUNTIME_ALLOWED = ("vlkit.plugin",)
SUPPORT_ALLOWED = ("vlkit.plugin", "vlkit.testing", "vlkit.bench", "vlkit.config", "vlkit")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _core_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in CORE.rglob("*.py") if COOKIECUTTER not in p.parents}


def _imported(path: Path, package: str) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` for every import statement in ``path``, relative ones resolved."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            out.append((module, [a.name for a in node.names], node.lineno))
    return out


def _import_graph() -> dict[str, set[str]]:
    mods = _core_modules()

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for module, names, _ in _imported(path, package):
            if module != "vlkit" and not module.startswith("vlkit."):
                continue
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in mods]
            deps |= set(subs) if subs else {owner(module)}
        graph[name] = deps - {name, ""}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_core_has_no_import_cycles():
    graph = _import_graph()
    assert "vlkit.api.pipeline" in graph and graph["vlkit.api.pipeline"]  # the graph is real
    assert _cycles(graph) == []


def test_plugin_api_names_resolve_without_torch():
    """Every name ``vlkit.plugin`` promises exists, and the declaring half loads no torch."""
    import subprocess
    import sys

    code = ("import sys; from vlkit.plugin import hookimpl, ModelFamily, LanguageModelSpec, template_file, "
            "lazy_factory, IMAGE_TOKEN; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    import vlkit.plugin as api

    for name in api.__all__:
        assert getattr(api, name) is not None, name


def _plugin_sources() -> list[tuple[str, Path]]:
    out = []
    for plugin in PLUGINS:
        for pkg in plugin.glob("vlkit_plugin_*"):
            if pkg.is_dir() and not pkg.name.endswith(".egg-info"):
                out += [(plugin.name, p) for p in sorted(pkg.rglob("*.py"))]
    return out


def test_bundled_plugins_are_found():
    names = {p.name for p in PLUGINS}
    assert {"vlkit-plugin-llava", "vlkit-plugin-qwen", "vlkit-plugin-internvl"} <= names
    assert len(_plugin_sources()) > 20


def _violations(imports: list[tuple[str, int]], allowed: tuple[str, ...]) -> list[str]:
    bad = []
    for module, line in imports:
        if module == "vlkit" and "vlkit" not in allowed:
            bad.append(f"line {line}: import vlkit")
        elif module.startswith("vlkit.") and not any(module == a or module.startswith(a + ".") for a in allowed):
            bad.append(f"line {line}: {module}")
    return bad


@pytest.mark.parametrize("plugin,path", _plugin_sources(), ids=lambda x: getattr(x, "name", x))
def test_plugin_runtime_code_imports_only_the_plugin_api(plugin, path):
    support = path.stem in SUPPORT_MODULES
    imports = [(m, line) for m, _, line in _imported(path, "")]
    bad = _violations(imports, SUPPORT_ALLOWED if support else RUNTIME_ALLOWED)
    assert not bad, f"{plugin}/{path.name} reaches past vlkit.plugin: {bad}"


_IMPORT_LINE = re.compile(r"^\s*(?:from\s+(vlkit[\w.]*)\s+import|import\s+(vlkit[\w.]*))", re.M)


def test_cookiecutter_runtime_code_imports_only_the_plugin_api():
    """The scaffold's package is what new plugins copy: it must show the public API only (its
    files are Jinja templates, so they are scanned as text)."""
    package = next(COOKIECUTTER.glob("*/{{*package*}}"))
    files = sorted(package.glob("*.py"))
    assert {p.stem for p in files} >= {"hooks", "vision", "chat"}
    for path in files:
        text = path.read_text()
        imports = [(m.group(1) or m.group(2), text[: m.start()].count("\n") + 1) for m in _IMPORT_LINE.finditer(text)]
        allowed = SUPPORT_ALLOWED if path.stem in SUPPORT_MODULES else RUNTIME_ALLOWED
        bad = _violations(imports, allowed)
        assert not bad, f"cookiecutter {path.name}: {bad}"


def test_violations_are_detected():
    assert _violations([("vlkit.contract.chat", 3)], RUNTIME_ALLOWED) == ["line 3: vlkit.contract.chat"]
    assert _violations([("vlkit.plugin", 1), ("torch", 2)], RUNTIME_ALLOWED) == []
    assert _violations([("vlkit.testing.tokenizer", 1)], SUPPORT_ALLOWED) == []
