"""Registry behaviour with in-process plugins."""

import json
import warnings

import pytest

from vlkit import hookimpl
from vlkit.contract.registry import (
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

    from vlkit.plugin import lazy_factory, template_file

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


class _Owner:
    """A plugin answering every family hook, recording each call it gets."""

    def __init__(self, family, calls):
        self.family, self.calls = family, calls

    @hookimpl
    def vlkit_register_families(self):
        return [self.family]

    @hookimpl
    def vlkit_tokenizer(self, family, hf_config, model_path):
        self.calls.append(("tokenizer", self.family.name, family.name))
        return f"tok-{self.family.name}"

    @hookimpl
    def vlkit_language_model_spec(self, family, hf_config, model_path):
        from vlkit.plugin import LanguageModelSpec

        self.calls.append(("spec", self.family.name, family.name))
        return LanguageModelSpec("LlamaForCausalLM", {"tag": self.family.name}, str(model_path))

    @hookimpl
    def vlkit_chat_template_wrapper(self, family, hf_config, model_path, tokenizer, chat_template_config):
        self.calls.append(("chat", self.family.name, family.name))
        return ("chat", self.family.name, tokenizer)

    @hookimpl
    def vlkit_vision_model(self, family, hf_config, model_path, tokenizer):
        self.calls.append(("vision", self.family.name, family.name))
        return ("vision", self.family.name, tokenizer)


def test_family_hooks_go_only_to_the_owner(tmp_path):
    """Each checkpoint's hooks reach the plugin that registered its family and no other, in
    both registration orders, and with no "is this mine" check in the plugins."""
    from vlkit.config import ChatTemplateConfig

    for order in ((0, 1), (1, 0)):
        calls = []
        owners = [_Owner(ModelFamily("fam-a", ("ArchA",)), calls), _Owner(ModelFamily("fam-b", ("ArchB",)), calls)]
        reg = Registry(load_entry_points=False)
        for i in order:
            reg.register(owners[i], f"plugin-{i}")
        parts = reg.build(tmp_path, {"architectures": ["ArchA"]}, ChatTemplateConfig())
        assert parts.family.name == "fam-a" and parts.family.plugin == "plugin-0"
        assert parts.tokenizer == "tok-fam-a" and parts.spec.config == {"tag": "fam-a"}
        assert parts.chat_template == ("chat", "fam-a", "tok-fam-a")
        assert parts.vision == ("vision", "fam-a", "tok-fam-a")
        assert [c[0] for c in calls] == ["tokenizer", "spec", "chat", "vision"]  # the documented order
        assert all(c[1] == "fam-a" for c in calls), calls  # plugin-1 was never asked


def test_owner_falls_back_to_the_core_defaults(tmp_path):
    """An owner that implements only the vision hook gets the core's tokenizer, spec and chat
    template; a VLM family whose owner returns no VisionModel is an error naming the plugin."""
    from vlkit.config import ChatTemplateConfig
    from vlkit.testing import make_tokenizer, save_tokenizer, tiny_llama_config

    save_tokenizer(make_tokenizer(["<image>"]), tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content[0].text }}{% endfor %}")

    class VisionOnly:
        def __init__(self, answer):
            self.answer = answer

        @hookimpl
        def vlkit_register_families(self):
            return [ModelFamily("vis", ("VisArch",))]

        @hookimpl
        def vlkit_vision_model(self, family, hf_config, model_path, tokenizer):
            return self.answer

    cfg = {"architectures": ["VisArch"], "text_config": tiny_llama_config()}
    reg = Registry(load_entry_points=False)
    reg.register(VisionOnly("vision"), "vis-plugin")
    parts = reg.build(tmp_path, cfg, ChatTemplateConfig())
    assert parts.tokenizer.convert_tokens_to_ids("<image>") is not None  # AutoTokenizer, the fallback
    assert parts.spec.architecture == "LlamaForCausalLM"  # from text_config
    assert parts.chat_template.template_name == "checkpoint"
    reg = Registry(load_entry_points=False)
    reg.register(VisionOnly(None), "vis-plugin")
    with pytest.raises(ValueError, match="'vis-plugin' returned no VisionModel"):
        reg.build(tmp_path, cfg, ChatTemplateConfig())


def test_checkpoint_code_never_runs_or_prompts_by_default(tmp_path):
    """A tokenizer that is code shipped with the checkpoint (auto_map): read from its
    tokenizer.json without running that code; without one, a one-line error naming
    trust_remote_code; never a terminal prompt (stdin is closed here)."""
    import subprocess
    import sys

    from vlkit.testing import make_tokenizer, save_tokenizer

    save_tokenizer(make_tokenizer(["<image>"]), tmp_path)
    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
    cfg_path.write_text(json.dumps(cfg))
    (tmp_path / "evil.py").write_text("raise SystemExit('checkpoint code ran')\n")
    code = ("import sys; from pathlib import Path; from vlkit.contract import builtin; "
            "from vlkit.contract.builtin import TEXT_FAMILY; "
            "tok = builtin.vlkit_tokenizer(TEXT_FAMILY, {}, Path(sys.argv[1]), False); "
            "print(tok.convert_tokens_to_ids('<image>'))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().isdigit(), r.stdout + r.stderr
    (tmp_path / "tokenizer.json").unlink()
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "checkpoint code ran" not in r.stderr
    assert "RemoteCodeRequired" in r.stderr and "trust_remote_code=True" in r.stderr


def test_demo_picks_an_installed_family_or_plugin():
    from vlkit.cli.demo import pick_family

    reg = Registry(load_entry_points=False)
    reg.register(_Plugin(ModelFamily("qwen2-vl", ("Q",), tiny_checkpoint=lambda d: d),
                         ModelFamily("notiny", ("N",))), "qwen")
    assert pick_family(reg, None).name == "qwen2-vl"  # no llava installed: the first with a factory
    assert pick_family(reg, "qwen").name == "qwen2-vl"  # a plugin name works too
    with pytest.raises(LookupError, match="'llava'.*installed families: \\['qwen2-vl'\\]"):
        pick_family(reg, "llava")
    reg.register(_Plugin(ModelFamily("llava", ("L",), tiny_checkpoint=lambda d: d)), "llava")
    assert pick_family(reg, None).name == "llava"
