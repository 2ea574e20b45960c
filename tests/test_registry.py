"""Registry behaviour with in-process plugins."""

import json
import warnings

import pytest

from vlkit import hookimpl
from vlkit.registry import (
    ModelFamily,
    Registry,
    UnknownArchitectureError,
    VlkitPluginConflictWarning,
    find_family,
    get_registry,
    reset_registry,
)


class _Plugin:
    def __init__(self, *families):
        self.families = families

    @hookimpl
    def vlkit_register_families(self):
        return list(self.families)


def test_conflicting_architectures_resolve_by_priority_then_name():
    reg = Registry(load_entry_points=False)
    reg.register(_Plugin(ModelFamily("zeta", ("SharedArch",))), "p1")
    reg.register(_Plugin(ModelFamily("alpha", ("SharedArch", "OnlyAlpha"))), "p2")
    with pytest.warns(VlkitPluginConflictWarning, match="'alpha'.*'zeta'"):
        assert reg.family_for_architectures(["SharedArch"]).name == "alpha"
    reg.register(_Plugin(ModelFamily("zulu", ("SharedArch",), priority=5)), "p3")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reg.family_for_architectures(["SharedArch"]).name == "zulu"
    msgs = [str(w.message) for w in caught if issubclass(w.category, VlkitPluginConflictWarning)]
    assert any("zulu" in m and "alpha" in m for m in msgs)


def test_family_records_its_plugin():
    reg = Registry(load_entry_points=False)
    reg.register(_Plugin(ModelFamily("fam", ("FamArch",))), "myplugin")
    assert reg.get_family("fam").plugin == "myplugin"


def test_hook_that_raises_marks_plugin_failed_and_others_survive():
    class Bad:
        @hookimpl
        def vlkit_register_families(self):
            raise RuntimeError("boom")

    reg = Registry(load_entry_points=False)
    reg.register(Bad(), "bad")
    reg.register(_Plugin(ModelFamily("good", ("GoodArch",))), "good")
    assert [f.name for f in reg.families()] == ["good"]
    (failed,) = reg.failed_plugins()
    assert failed.name == "bad" and "RuntimeError: boom" in failed.error


def test_find_family_reads_config_and_reports_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_LOAD_PLUGINS", "")
    reset_registry()
    try:
        get_registry().register(_Plugin(ModelFamily("fam", ("FamArch",))), "myplugin")
        (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FamArch"]}))
        assert find_family(tmp_path).name == "fam"
        (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlavaForConditionalGeneration"]}))
        with pytest.raises(UnknownArchitectureError) as info:
            find_family(tmp_path)
        assert "fam (myplugin): FamArch" in str(info.value)
        assert "pip install vlkit-plugin-llava" in str(info.value)
    finally:
        reset_registry()


def test_missing_config_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        find_family(tmp_path)


def test_template_file_and_lazy_factory_helpers(tmp_path):
    import sys
    from pathlib import Path

    from vlkit.registry import lazy_factory, template_file

    assert Path(template_file("vlkit", "chatml")).read_text().strip()
    assert "vlkit_testing_lazy_target" not in sys.modules
    (tmp_path / "vlkit_testing_lazy_target.py").write_text(
        "def write(directory, **options):\n    return ('wrote', directory, options)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        factory = lazy_factory("vlkit_testing_lazy_target:write")
        assert "vlkit_testing_lazy_target" not in sys.modules  # nothing imported until called
        assert factory.__name__ == "write"
        assert factory("d", size="w1") == ("wrote", "d", {"size": "w1"})
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("vlkit_testing_lazy_target", None)
    with pytest.raises(ValueError, match="module:function"):
        lazy_factory("no_colon_here")
