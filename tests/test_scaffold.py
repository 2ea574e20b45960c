"""``vlkit scaffold``: name and target checks, the packaged template, and (slow) the whole path:
scaffold -> pip install -> the generated tests pass -> ``vlkit list-models`` lists the family."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from vlkit.cli import scaffold as scaffold_module
from vlkit.cli.scaffold import ScaffoldError, scaffold, template_dir, validate_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("9lives", "start with a lowercase letter"),
        ("_foo", "start with a lowercase letter"),
        ("-foo", "start with a lowercase letter"),
        ("My_Model", "contains 'M'"),
        ("foo bar", "contains ' '"),
        ("foo.bar", "contains '.'"),
        ("foo/bar", "contains '/'"),
        ("café", "contains 'é'"),
        ("foo-", "trailing or doubled"),
        ("a--b", "trailing or doubled"),
        ("x" * 51, "longer than 50"),
    ],
)
def test_bad_name_fails_before_writing(tmp_path: Path, name: str, why: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ScaffoldError, match="empty" if not name else "invalid|longer") as info:
        scaffold(name, out, no_input=True)
    assert why in str(info.value)
    if name:
        assert repr(name) in str(info.value)
    assert not out.exists(), "nothing may be written for a bad name"


@pytest.mark.parametrize(("name", "py"), [("foo", "foo"), ("my-vlm2", "my_vlm2"), ("a_b", "a_b"), ("x", "x")])
def test_good_names(name: str, py: str) -> None:
    assert validate_name(name) == py


# -- the target directory ------------------------------------------------------------------


def test_non_empty_target_fails_and_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "vlkit-plugin-foo"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ScaffoldError, match="already exists and is not empty"):
        scaffold("foo", tmp_path, no_input=True)
    assert _files(target) == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"


def test_target_that_is_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "vlkit-plugin-foo").write_text("x")
    with pytest.raises(ScaffoldError, match="already exists"):
        scaffold("foo", tmp_path, no_input=True)
    assert (tmp_path / "vlkit-plugin-foo").read_text() == "x"


def test_output_dir_that_is_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ScaffoldError, match="is a file"):
        scaffold("foo", tmp_path / "f", no_input=True)


def test_empty_target_and_missing_output_dir_are_fine(tmp_path: Path) -> None:
    (tmp_path / "a" / "vlkit-plugin-foo").mkdir(parents=True)
    assert scaffold("foo", tmp_path / "a", no_input=True) == tmp_path / "a" / "vlkit-plugin-foo"
    assert (tmp_path / "a" / "vlkit-plugin-foo" / "pyproject.toml").is_file()
    path = scaffold("foo", tmp_path / "b" / "c", no_input=True)
    assert (path / "vlkit_plugin_foo" / "hooks.py").is_file()


def test_cli_reports_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vlkit.cli import main

    assert main(["scaffold", "Bad", "--output-dir", str(tmp_path), "--no-input"]) == 2
    assert "invalid family name 'Bad'" in capsys.readouterr().err
    assert main(["scaffold", "ok", "--output-dir", str(tmp_path), "--no-input"]) == 0
    assert str(tmp_path / "vlkit-plugin-ok") in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [tmp_path / "vlkit-plugin-ok"]


# -- prompting -----------------------------------------------------------------------------


def _scaffold_cli(tmp_path: Path, name: str, stdin: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vlkit.cli", "scaffold", name, "--output-dir", str(tmp_path / "out")],
        input=stdin, stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True, text=True, timeout=120,
    )


def test_prompts_answers_are_used(tmp_path: Path) -> None:
    # description, architecture, author, e-mail (default), version, license
    r = _scaffold_cli(tmp_path, "zed", 'Zed "VLM" plugin\nZedNetForCausalLM\nAda L.\n\n0.2.0\nMIT\n')
    assert r.returncode == 0, r.stdout + r.stderr
    pkg = tmp_path / "out" / "vlkit-plugin-zed"
    hooks = (pkg / "vlkit_plugin_zed" / "hooks.py").read_text()
    assert 'ARCHITECTURE = "ZedNetForCausalLM"' in hooks
    assert 'description="Zed \\"VLM\\" plugin"' in hooks
    if tomllib is not None:
        project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
        assert project["description"] == 'Zed "VLM" plugin'
        assert project["version"] == "0.2.0"
        assert project["authors"] == [{"name": "Ada L.", "email": "you@example.com"}]
        assert project["license"] == "MIT"  # an SPDX expression, not the deprecated table


def test_refused_answer_writes_nothing(tmp_path: Path) -> None:
    r = _scaffold_cli(tmp_path, "zed", "\nnot an identifier!\n\n\n\n\n")
    assert r.returncode == 2
    assert "architecture 'not an identifier!' is not a valid architecture name" in r.stderr
    assert "refused an answer" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_closed_stdin_is_a_clear_error(tmp_path: Path) -> None:
    r = _scaffold_cli(tmp_path, "zed", None)
    assert r.returncode == 2
    assert "use --no-input" in r.stderr
    assert not (tmp_path / "out").exists()


# -- the template comes from the installed package -----------------------------------------


def test_template_dir_is_the_package_resource() -> None:
    from importlib import resources

    assert Path(str(template_dir())) == Path(str(resources.files("vlkit") / "cookiecutter"))
    assert (template_dir() / "cookiecutter.json").is_file()


def test_scaffold_reads_the_template_through_importlib_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever ``importlib.resources`` says the vlkit package holds is what scaffold uses."""
    fake_pkg = tmp_path / "fake_vlkit"
    tpl = fake_pkg / "cookiecutter"
    (tpl / "vlkit-plugin-{{cookiecutter._name}}").mkdir(parents=True)
    (tpl / "cookiecutter.json").write_text(json.dumps({"_name": "x"}))
    (tpl / "vlkit-plugin-{{cookiecutter._name}}" / "marker.txt").write_text("from {{ cookiecutter._name }}")
    real_files = scaffold_module.resources.files
    monkeypatch.setattr(
        scaffold_module.resources, "files", lambda pkg: fake_pkg if pkg == "vlkit" else real_files(pkg)
    )
    path = scaffold("bar", tmp_path / "out", no_input=True)
    assert (path / "marker.txt").read_text() == "from bar"


def test_missing_template_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scaffold_module.resources, "files", lambda pkg: tmp_path)
    with pytest.raises(ScaffoldError, match="template is missing from the installed vlkit"):
        scaffold("foo", tmp_path / "out", no_input=True)
    assert not (tmp_path / "out").exists()


# -- what is generated ---------------------------------------------------------------------


EXPECTED_FILES = [
    ".gitignore",
    "README.md",
    "pyproject.toml",
    "tests/conftest.py",
    "tests/test_conformance.py",
    "tests/test_plugin.py",
    "vlkit_plugin_{py}/__init__.py",
    "vlkit_plugin_{py}/chat.py",
    "vlkit_plugin_{py}/checkpoint.py",
    "vlkit_plugin_{py}/hooks.py",
    "vlkit_plugin_{py}/templates/{name}.jinja",
    "vlkit_plugin_{py}/vision.py",
]


@pytest.mark.parametrize(("name", "arch"), [("foo", "FooForConditionalGeneration"), ("my-vlm2", "MyVlm2ForConditionalGeneration")])
def test_generated_package(tmp_path: Path, name: str, arch: str) -> None:
    py = name.replace("-", "_")
    pkg = scaffold(name, tmp_path, no_input=True)
    assert pkg == tmp_path / f"vlkit-plugin-{name}"
    assert _files(pkg) == sorted(f.format(py=py, name=name) for f in EXPECTED_FILES)
    for f in pkg.rglob("*"):
        if f.is_file():
            text = f.read_text()
            assert "cookiecutter" not in text, f"{f} has unrendered template syntax"
            if f.suffix == ".py":
                ast.parse(text, str(f))

    if tomllib is not None:
        meta = tomllib.loads((pkg / "pyproject.toml").read_text())
        project = meta["project"]
        assert project["name"] == f"vlkit-plugin-{name}"
        assert project["dependencies"] == ["vlkit>=0.1,<0.2"]  # a compatible range of the core
        assert project["entry-points"]["vlkit"] == {name: f"vlkit_plugin_{py}.hooks"}
        assert meta["tool"]["setuptools"]["package-data"] == {f"vlkit_plugin_{py}": ["templates/*.jinja"]}

    hooks = (pkg / f"vlkit_plugin_{py}" / "hooks.py").read_text()
    assert f'ARCHITECTURE = "{arch}"' in hooks and f'FAMILY = "{name}"' in hooks
    top_imports = [
        node for node in ast.parse(hooks).body if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    modules = {a.name for n in top_imports if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in top_imports if isinstance(n, ast.ImportFrom)}
    assert not {m for m in modules if m and m.split(".")[0] in ("torch", "transformers")}, modules
    template = (pkg / f"vlkit_plugin_{py}" / "templates" / f"{name}.jinja").read_text()
    assert "{{ image_marker }}" in template  # copied, not rendered by cookiecutter


def test_generated_package_passes_ruff(tmp_path: Path) -> None:
    ruff = shutil.which("ruff") or (Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    pkg = scaffold("my-vlm2", tmp_path, no_input=True)
    r = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=pkg, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# -- slow: the whole path ------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VLKIT_LOAD_PLUGINS", None)  # the new plugin must load
    return env


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=_env())


@pytest.fixture
def installed_foo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``vlkit-plugin-foo`` scaffolded and pip-installed into a throwaway site directory that only
    this test's subprocesses see (PYTHONPATH): an interrupted run leaves nothing installed in
    the running environment."""
    pkg = scaffold("foo", tmp_path / "src", no_input=True)
    site = tmp_path / "site"
    r = _pip("install", "--no-deps", "--no-build-isolation", "--no-compile", "--target", str(site), str(pkg))
    assert r.returncode == 0, r.stdout + r.stderr
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    yield pkg


@pytest.mark.slow
def test_scaffold_install_test_list(installed_foo: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=installed_foo, capture_output=True, text=True, env=_env(), timeout=1200,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1]

    r = subprocess.run(
        [sys.executable, "-m", "vlkit.cli", "list-models", "--json"],
        cwd=installed_foo, capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)
    fams = {f["name"]: f for f in payload["families"]}
    assert "foo" in fams, payload
    assert fams["foo"]["architectures"] == ["FooForConditionalGeneration"]
    assert fams["foo"]["plugin"] == "foo"
    assert fams["foo"]["version"] == "0.1.0"
    assert fams["foo"]["templates"] == ["foo"]
    assert not [p for p in payload["failed_plugins"] if p["name"] == "foo"]


@pytest.mark.slow
def test_wheel_ships_the_template_and_scaffold_runs_from_it(tmp_path: Path) -> None:
    """The core wheel carries every template file; a vlkit installed from it scaffolds from
    its own copy (no repository checkout involved)."""
    r = _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(REPO))
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "wheel").glob("vlkit-*.whl")
    source = REPO / "vlkit" / "cookiecutter"
    wanted = {f"vlkit/cookiecutter/{f}" for f in _files(source) if "__pycache__" not in f}
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.startswith("vlkit/cookiecutter/")}
    assert wanted <= shipped, f"missing from the wheel: {sorted(wanted - shipped)}"

    site = tmp_path / "site"
    r = _pip("install", "--no-deps", "--no-compile", "-q", "--target", str(site), str(wheel))
    assert r.returncode == 0, r.stdout + r.stderr
    # -S: no site hooks, so the editable vlkit of this environment is not importable; the
    # environment's other packages (cookiecutter, pluggy...) come after the wheel's vlkit
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])
    code = (
        "import sys, vlkit, vlkit.cli.scaffold as s; "
        "print(vlkit.__file__); print(s.template_dir()); print(s.scaffold('foo', sys.argv[1], no_input=True))"
    )
    r = subprocess.run(
        [sys.executable, "-S", "-c", code, str(tmp_path / "out")], capture_output=True, text=True, env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    vlkit_file, tpl, made = r.stdout.strip().splitlines()[-3:]
    assert Path(vlkit_file).is_relative_to(site) and Path(tpl).is_relative_to(site)
    assert _files(Path(made)) == _files(scaffold("foo", tmp_path / "from-repo", no_input=True))


def test_an_installed_family_name_is_refused_and_no_bytecode_is_copied(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from vlkit.contract.registry import get_registry

    installed = [f.name for f in get_registry().families()]
    if installed:
        with pytest.raises(ScaffoldError, match=f"a family named '{installed[0]}' is already installed"):
            scaffold(installed[0], tmp_path, no_input=True)
        assert not any(tmp_path.iterdir())
    # bytecode in the template (as pip leaves it in an installed vlkit) does not reach the package
    tpl = tmp_path / "tpl"
    shutil.copytree(template_dir(), tpl)
    for d in [p for p in tpl.rglob("*") if p.is_dir()]:
        (d / "__pycache__").mkdir(exist_ok=True)
        (d / "__pycache__" / "hooks.cpython-311.pyc").write_bytes(b"stale")
    monkeypatch.setattr(scaffold_module, "template_dir", lambda: tpl)
    pkg = scaffold("bytecodecheck", tmp_path / "out", no_input=True)
    assert (pkg / "vlkit_plugin_bytecodecheck" / "hooks.py").is_file()
    assert not list(pkg.rglob("__pycache__")) and not list(pkg.rglob("*.pyc"))
