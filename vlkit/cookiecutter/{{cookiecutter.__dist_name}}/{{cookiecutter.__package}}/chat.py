"""The ChatTemplateWrapper of the ``{{ cookiecutter._name }}`` family.

The base class (:class:`vlkit.contract.chat.ChatTemplateWrapper`) does the work: it turns the
conversation into Hugging Face-style messages, renders the selected Jinja template in a
sandbox, replaces each :attr:`image_marker` the template wrote by ``num_tokens`` image
tokens, tokenizes, and reports the positions each image's embeddings fill. A family
configures it with class attributes and overrides a method only where its format needs it:

* :meth:`image_text` -- what one image becomes in the prompt (default: ``image_token`` x N;
  override for formats such as ``<img>...</img>`` or ``Picture 1: ...``);
* :meth:`template_messages` -- reshape messages before rendering;
* :meth:`tokenize` -- when the prompt must not be tokenized in one piece.
"""

from __future__ import annotations

from vlkit.plugin import ChatTemplateWrapper

from {{ cookiecutter.__package }}.hooks import FAMILY


class {{ cookiecutter.__prefix }}ChatTemplate(ChatTemplateWrapper):
    """Prompts of the {{ cookiecutter._name }} family: ``USER: <image>\\n... ASSISTANT:``.

    Each image is written as one ``<image>`` marker by ``templates/{{ cookiecutter._name }}.jinja``
    and expanded to as many ``<image>`` tokens as the VisionModel produces embeddings for it.
    """

    #: what the template writes where an image goes
    image_marker = "<image>"
    #: the token whose positions receive the image embeddings (None: the marker itself)
    image_token = None
    #: the template used unless ChatTemplateConfig(model_name=...) picks another
    default_template = FAMILY
    #: strings that end a reply besides the EOS token (e.g. "<|im_end|>" for ChatML)
    stop_words = ()
