"""Plugin loading with real installed distributions (no mocks of pluggy or importlib)."""

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def fixture_plugins(tmp_path_factory, pip_target):
    site = tmp_path_factory.mktemp("fixture_plugins")
    pip_target(site, str(FIXTURES / "vlkit-plugin-broken"), str(FIXTURES / "vlkit-plugin-healthy"))
    return site


def test_core_only_lists_are_empty(run_isolated, core_only_site):
    for cmd in ("list-models", "plugins"):
        r = run_isolated(core_only_site, "-m", "vlkit.cli", cmd, "--json")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        if cmd == "list-models":
            assert data == {"families": [], "failed_plugins": []}
        else:
            assert data == []


def test_import_vlkit_does_not_import_torch(run_isolated, core_only_site):
    r = run_isolated(core_only_site, "-c", "import sys, vlkit, vlkit.cli, vlkit.contract.registry; print('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_core_wheel_ships_templates_and_cookiecutter(run_isolated, core_only_site):
    assert (core_only_site / "vlkit" / "templates" / "chatml.jinja").is_file()
    assert (core_only_site / "vlkit" / "templates" / "llava-v1.jinja").is_file()
    assert (core_only_site / "vlkit" / "cookiecutter" / "cookiecutter.json").is_file()


def test_broken_plugin_is_reported_and_the_rest_works(run_isolated, core_only_site, fixture_plugins):
    r = run_isolated(core_only_site, "-m", "vlkit.cli", "list-models", "--json", extra_paths=[fixture_plugins])
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [f["name"] for f in data["families"]] == ["healthy"]
    fam = data["families"][0]
    assert fam["architectures"] == ["HealthyForConditionalGeneration"]
    assert fam["plugin"] == "healthy" and fam["version"] == "1.2.3"
    (failed,) = data["failed_plugins"]
    assert failed["name"] == "broken"
    assert failed["distribution"] == "vlkit-plugin-broken" and failed["version"] == "0.0.1"
    assert "ModuleNotFoundError" in failed["error"] and "vlkit_dependency_that_is_not_installed" in failed["error"]

    text = run_isolated(core_only_site, "-m", "vlkit.cli", "list-models", extra_paths=[fixture_plugins])
    assert text.returncode == 0
    assert "healthy" in text.stdout and "FAILED plugin broken" in text.stdout

    plugins = run_isolated(core_only_site, "-m", "vlkit.cli", "plugins", "--json", extra_paths=[fixture_plugins])
    rows = {p["name"]: p for p in json.loads(plugins.stdout)}
    assert rows["healthy"]["error"] is None and rows["healthy"]["families"] == ["healthy"]
    assert rows["broken"]["error"].startswith("ModuleNotFoundError")


@pytest.mark.parametrize(("value", "expected"), [("", []), ("healthy", ["healthy"]), ("broken", [])])
def test_vlkit_load_plugins_restricts_loading(run_isolated, core_only_site, fixture_plugins, value, expected):
    r = run_isolated(
        core_only_site, "-m", "vlkit.cli", "list-models", "--json",
        extra_paths=[fixture_plugins], env={"VLKIT_LOAD_PLUGINS": value},
    )
    data = json.loads(r.stdout)
    assert [f["name"] for f in data["families"]] == expected
    assert [p["name"] for p in data["failed_plugins"]] == (["broken"] if value == "broken" else [])


def test_unknown_architecture_lists_installed_families(run_isolated, core_only_site, fixture_plugins, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NopeForCausalLM"]}))
    code = (
        "import sys\nfrom vlkit.contract.registry import find_family, UnknownArchitectureError\n"
        f"try:\n    find_family({str(tmp_path)!r})\nexcept UnknownArchitectureError as e:\n    print(e)\n"
    )
    r = run_isolated(core_only_site, "-c", code, extra_paths=[fixture_plugins])
    assert "NopeForCausalLM" in r.stdout
    assert "healthy (healthy): HealthyForConditionalGeneration" in r.stdout
    assert "broken" in r.stdout  # the failed plugin is mentioned too
