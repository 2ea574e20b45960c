import json
import subprocess
import sys

from transformers import AutoTokenizer

from vlkit.testing import (
    make_tokenizer,
    save_tokenizer,
    write_chat_template,
    write_config,
    write_preprocessor_config,
)

TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


def test_write_chat_template_both_places_and_tokenizer_uses_it(tmp_path):
    save_tokenizer(make_tokenizer(["<image>"]), tmp_path)
    write_chat_template(tmp_path, TEMPLATE)
    assert (tmp_path / "chat_template.jinja").read_text() == TEMPLATE
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == TEMPLATE and cfg["bos_token"] == "<s>"  # updated in place
    tok = AutoTokenizer.from_pretrained(tmp_path)
    out = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert out == "[user] hi\n"


def test_write_config_files(tmp_path):
    from transformers import LlamaConfig

    write_config(tmp_path, {"architectures": ["X"], "b": 1})
    assert json.loads((tmp_path / "config.json").read_text()) == {"architectures": ["X"], "b": 1}
    write_config(tmp_path / "obj", LlamaConfig(hidden_size=32))
    assert json.loads((tmp_path / "obj" / "config.json").read_text())["hidden_size"] == 32
    write_preprocessor_config(tmp_path, {"image_processor_type": "CLIPImageProcessor"})
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["image_processor_type"] == "CLIPImageProcessor"


def test_importing_the_kit_is_lazy():
    code = ("import sys, vlkit.testing as t; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "t.make_image(4, 4); assert 'torch' not in sys.modules; print(len(t.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 30
