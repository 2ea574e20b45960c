"""Tiny but real fast tokenizers for tiny checkpoints.

``make_tokenizer`` trains a byte-level BPE (the ``tokenizers`` library) on a small English
corpus embedded below, so any text, emoji and CJK included, encodes; the special tokens a
family needs are added as special tokens (one id each, never split). Training is
deterministic (the trainer breaks ties by pair ids, which come from a sorted alphabet) and
takes a few milliseconds; results are cached per arguments in the process.

``save_tokenizer`` writes the files a model repository carries (``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json`` and, with a chat template,
``chat_template.jinja``) so that ``AutoTokenizer.from_pretrained`` reproduces the encodings.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CHATML_TEMPLATE",
    "CORPUS",
    "make_chatml_tokenizer",
    "make_tokenizer",
    "save_tokenizer",
]

# Written for this module; plain prose with a varied vocabulary, digits and punctuation.
CORPUS = """\
A small lighthouse stood at the end of the northern pier. Every evening the keeper climbed
the spiral stairs, counted the ninety-two steps out loud, and lit the lamp before the fishing
boats came home. Children from the village liked to watch the beam sweep across the water,
turning grey waves into silver for a moment and then letting them fall back into darkness.

The market opened early on Saturdays. Farmers arrived with baskets of apples, pears, plums
and cherries; a baker sold warm bread, honey cakes and small pies filled with spinach and
cheese. Prices were written in chalk on wooden boards: three loaves for 4.50, a dozen eggs
for 2.75, a jar of jam for 3.20. By noon most stalls were empty, and the square was quiet
again except for pigeons searching for crumbs between the stones.

In the photograph, a red bicycle leans against a yellow wall. Its front wheel is turned
slightly to the left, and a blue basket hangs from the handlebars. Behind the bicycle there
is a window with white curtains, a green door, and a cat sleeping on the doorstep. The
shadow on the ground suggests that the picture was taken in the late afternoon.

What is shown in this image? Describe the scene in detail. How many people are visible, and
what are they doing? The picture shows two dogs running across a wide field of tall grass,
while a woman in a brown coat throws a ball toward the trees. Clouds cover most of the sky,
but sunlight breaks through near the horizon.

Scientists measured the temperature of the river every hour for twelve days. The water was
coldest just before sunrise and warmest in the middle of the afternoon. They recorded each
value in a notebook, drew a chart with the hours along the bottom and the degrees along the
side, and noticed that the curve repeated almost exactly from one day to the next.

The recipe is simple. First, chop the onions and fry them gently in olive oil until they
become soft and golden. Add the garlic, tomatoes, salt and pepper, then let the sauce cook
slowly for twenty minutes. Meanwhile, boil the pasta in plenty of water. Mix everything
together, sprinkle fresh basil on top, and serve immediately.

Our train left the station at seven o'clock, crossed a long bridge over the valley, and
entered the mountains as the snow began to fall. Passengers pressed their faces to the
windows. Someone opened a thermos of coffee, someone else shared oranges, and an old man
told stories about the winter when the tracks were buried for a whole week.

Please answer the question briefly. Yes, the chart compares sales across four regions:
north, south, east and west. Sales grew in every region during the second quarter, but the
eastern region grew fastest, rising by almost forty percent compared with the first quarter.
The table below lists the exact figures, and the notes explain how they were calculated.

Rain fell softly on the roof of the library. Inside, students turned pages, whispered
questions, and wrote long answers in careful handwriting. A librarian pushed a cart of
returned books between the shelves, placing each volume back where it belonged: history on
the left, poetry near the windows, maps and atlases in the large drawers beside the stairs.
"""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _extra_kwarg() -> str:
    """The keyword for unnamed special tokens: ``extra_special_tokens`` (a list) in
    transformers 5, ``additional_special_tokens`` in 4.x (where ``extra_special_tokens`` is a
    dict of named extras)."""
    return "extra_special_tokens" if _transformers_major() >= 5 else "additional_special_tokens"


def _extra_special_tokens(tok) -> list[str]:
    for attr in ("extra_special_tokens", "additional_special_tokens"):
        value = getattr(tok, attr, None)
        if isinstance(value, (list, tuple)) and value:
            return [str(t) for t in value]
    return []


def _dedupe(tokens: Sequence[str | None]) -> list[str]:
    out: list[str] = []
    for t in tokens:
        if t is not None and t not in out:
            out.append(t)
    return out


@functools.lru_cache(maxsize=64)
def _train(special: tuple[str, ...], vocab_size: int, bos: str | None, eos: str | None,
           add_bos: bool, add_eos: bool) -> str:
    """Train once per arguments; return the serialized ``tokenizer.json``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special):
        raise ValueError(f"vocab_size={vocab_size} is below the 256 byte tokens plus {len(special)} special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special), initial_alphabet=alphabet, show_progress=False,
    )
    tok.train_from_iterator(CORPUS.split("\n\n"), trainer)
    single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
    ids = []
    if add_bos:
        ids.append((bos, tok.token_to_id(bos)))
    if add_eos and eos != (bos if add_bos else None):
        ids.append((eos, tok.token_to_id(eos)))
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)
    return tok.to_str()


def make_tokenizer(
    special_tokens: Sequence[str] = (),
    vocab_size: int = 1000,
    *,
    bos: str | None = "<s>",
    eos: str | None = "</s>",
    unk: str | None = "<unk>",
    pad: str | None = None,
    add_bos: bool = True,
    add_eos: bool = False,
    chat_template: str | None = None,
    model_max_length: int = 4096,
):
    """A real ``PreTrainedTokenizerFast``: byte-level BPE trained on :data:`CORPUS`.

    Ids: ``unk``, ``bos``, ``eos``, ``pad`` (those not None and not listed in
    ``special_tokens``, in that order) take ids 0.., then ``special_tokens`` in the given
    order, then the 256 byte tokens, then merges up to
    ``vocab_size`` (the embedded corpus has enough merges for about 1000; bigger sizes give a
    smaller tokenizer, all ids still below ``vocab_size``). Special tokens are single ids and
    never split. With ``add_bos`` a TemplateProcessing post-processor prepends BOS (as
    LLaMA's tokenizer does); ``add_eos`` appends EOS. Returns a new object each call (the
    training is cached), so callers may mutate it.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if isinstance(special_tokens, str):
        raise TypeError("special_tokens must be a list of strings, not a string")
    if add_bos and bos is None:
        raise ValueError("add_bos=True needs a bos token")
    if add_eos and eos is None:
        raise ValueError("add_eos=True needs an eos token")
    listed = _dedupe(special_tokens)
    special = tuple(_dedupe([t for t in (unk, bos, eos, pad) if t not in listed] + listed))
    raw = _train(special, int(vocab_size), bos, eos, bool(add_bos), bool(add_eos))
    named = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    extra = [t for t in _dedupe(special_tokens) if t not in named.values()]
    kwargs = {k: v for k, v in named.items() if v is not None}
    kwargs[_extra_kwarg()] = extra
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(raw),
        add_bos_token=bool(add_bos),
        add_eos_token=bool(add_eos),
        chat_template=chat_template,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )


def make_chatml_tokenizer(
    special_tokens: Sequence[str] = (),
    vocab_size: int = 1000,
    *,
    eos: str = "<|im_end|>",
    chat_template: str | None = CHATML_TEMPLATE,
    model_max_length: int = 4096,
):
    """A Qwen-style ChatML tokenizer: ids 0, 1, 2 are ``<|endoftext|>`` (also the pad token),
    ``<|im_start|>``, ``<|im_end|>`` (EOS, as in the chat models), then ``special_tokens``; no BOS, no UNK, nothing
    added around the text. ``chat_template`` defaults to a plain ChatML template."""
    base = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return make_tokenizer(
        [*base, *special_tokens], vocab_size, bos=None, eos=eos, unk=None, pad="<|endoftext|>",
        add_bos=False, add_eos=False, chat_template=chat_template, model_max_length=model_max_length,
    )


def save_tokenizer(tok, directory) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` (with ``chat_template`` when the
    tokenizer has one, as model repositories carry it), ``special_tokens_map.json`` and
    ``chat_template.jinja`` (what transformers 5 writes). Returns the directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok.backend_tokenizer.save(str(d / "tokenizer.json"))
    special_map = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = getattr(tok, name, None)
        if value is not None:
            special_map[name] = str(value)
    extra = [t for t in _extra_special_tokens(tok) if t not in special_map.values()]
    if extra:
        special_map["additional_special_tokens"] = extra
    added = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special}
        for i, t in sorted(tok.added_tokens_decoder.items())
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
        "add_eos_token": bool(getattr(tok, "add_eos_token", False)),
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(tok.model_max_length),
        **special_map,
    }
    template = tok.chat_template
    if template is not None:
        config["chat_template"] = template
        if isinstance(template, str):
            (d / "chat_template.jinja").write_text(template, encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (d / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    return d
