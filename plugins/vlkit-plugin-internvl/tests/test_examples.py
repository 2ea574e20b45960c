"""The examples of lmdeploy's InternVL guide (/work/shared/seeds, 002), written with vlkit's names.

Each runs as written — OpenAI-style messages with ``image_url: {max_dynamic_patch, url}``,
``IMAGE_TOKEN``, ``GenerationConfig(top_k=1)``, a second turn appended to ``messages`` — with
local tiny images instead of URLs, generated frames instead of a downloaded video, a tiny
InternLM2 checkpoint (as InternVL2-8B) instead of the hub one, and ``max_new_tokens=8``. Every
turn's tokens are checked against the original ``chat()`` semantics on transformers' model
(internvl_reference.OriginalReference).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from internvl_reference import OriginalReference
from PIL import Image

import vlkit
from vlkit import IMAGE_TOKEN, EngineConfig, GenerationConfig, encode_image_base64, load_image

MAX_NEW = 8


@pytest.fixture(scope="module")
def model(ckpts):
    return ckpts["internlm2"]


@pytest.fixture(scope="module")
def pipe(model):
    p = vlkit.pipeline(str(model), log_level="INFO",
                       backend_config=EngineConfig(device="cpu", dtype="float32", num_blocks=512))
    yield p
    p.close()


@pytest.fixture(scope="module")
def reference(model, ckpts):
    return OriginalReference(model, ckpts["hf-llama"])


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    rng = np.random.default_rng(0)
    paths = []
    for name, (w, h) in (("image1.jpg", (230, 100)), ("image2.jpg", (90, 160))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name, quality=95)
        paths.append(str(root / name))
    return paths


def gen():
    return GenerationConfig(top_k=1, max_new_tokens=MAX_NEW)


def to_reference(messages):
    """The same conversation for the reference: image parts as decoded PIL images."""
    out = []
    for m in messages:
        if isinstance(m["content"], str):
            out.append({"role": m["role"], "content": [{"type": "text", "text": m["content"]}]})
            continue
        parts = []
        for p in m["content"]:
            if p["type"] in ("text", "image"):
                parts.append(p)
            else:
                url = p["image_url"]["url"]
                if url.startswith("data:"):
                    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
                else:
                    img = Image.open(url).convert("RGB")
                parts.append({"type": "image", "image": img})
        out.append({"role": m["role"], "content": parts})
    return out


def check(out, reference, messages, max_num):
    ref = reference(to_reference(messages), MAX_NEW, mask_eos=False, max_num=max_num)
    eos = {reference.tokenizer.convert_tokens_to_ids("<|im_end|>"), reference.tokenizer.eos_token_id}
    strip = [t for t in ref.generated]
    while strip and strip[-1] in eos:
        strip.pop()
    mine = list(out.token_ids)
    while mine and mine[-1] in eos:
        mine.pop()
    assert out.finish_reason in ("stop", "length"), out.error
    assert mine == strip
    return ref


def _two_image_dialogue(pipe, reference, image_files, first_text):
    messages = [
        dict(role="user", content=[
            dict(type="text", text=first_text),
            dict(type="image_url", image_url=dict(max_dynamic_patch=12, url=image_files[0])),
            dict(type="image_url", image_url=dict(max_dynamic_patch=12, url=image_files[1])),
        ])
    ]
    out = pipe(messages, gen_config=gen())
    ref = check(out, reference, messages, 12)
    messages.append(dict(role="assistant", content=out.text))
    messages.append(dict(role="user", content="What are the similarities and differences between these two images."))
    out2 = pipe(messages, gen_config=gen())
    check(out2, reference, messages, 12)
    return out, ref


def test_multi_image_concatenated(pipe, reference, image_files):
    out, ref = _two_image_dialogue(pipe, reference, image_files, f"{IMAGE_TOKEN}{IMAGE_TOKEN}\nDescribe the two images in detail.")
    prompt = pipe.prepare_inputs([dict(role="user", content=[
        dict(type="text", text=f"{IMAGE_TOKEN}{IMAGE_TOKEN}\nDescribe the two images in detail."),
        dict(type="image_url", image_url=dict(max_dynamic_patch=12, url=image_files[0])),
        dict(type="image_url", image_url=dict(max_dynamic_patch=12, url=image_files[1])),
    ])])["prompt"]
    assert prompt.count("<img>") == 1 and "</img>\nDescribe the two images" in prompt  # one span for both
    assert out.input_token_len == len(ref.prompt_ids)


def test_multi_image_separate(pipe, reference, image_files):
    _two_image_dialogue(pipe, reference, image_files, f"Image-1: {IMAGE_TOKEN}\nImage-2: {IMAGE_TOKEN}\nDescribe the two images in detail.")


def make_frames(n=8, size=(64, 48)):
    frames = []
    for i in range(n):
        arr = np.full((size[1], size[0], 3), 30, dtype=np.uint8)
        x = 2 + (40 * i) // max(n - 1, 1)
        arr[10:26, x:x + 16] = (200, 60, 20)  # a red panda moving right
        frames.append(Image.fromarray(arr))
    return frames


def video_dialogue(pipe, reference, imgs):
    question = ""
    for i in range(len(imgs)):
        question = question + f"Frame{i + 1}: {IMAGE_TOKEN}\n"
    question += "What is the red panda doing?"
    content = [{"type": "text", "text": question}]
    for img in imgs:
        content.append({"type": "image_url", "image_url": {"max_dynamic_patch": 1,
                                                          "url": f"data:image/jpeg;base64,{encode_image_base64(img)}"}})
    messages = [dict(role="user", content=content)]
    out = pipe(messages, gen_config=gen())
    check(out, reference, messages, 1)
    messages.append(dict(role="assistant", content=out.text))
    messages.append(dict(role="user", content="Describe this video in detail. Don't repeat."))
    out = pipe(messages, gen_config=gen())
    check(out, reference, messages, 1)
    return out


def test_video_frames(pipe, reference):
    out = video_dialogue(pipe, reference, make_frames())
    assert out.generate_token_len >= 1


def test_video_part_equals_the_original_frame_layout(pipe, reference):
    """{"type": "video", "video": frames} is the original video chat: Frame{i}: <image> lines,
    one tile per frame; same prompt ids and tokens as the frames written out by hand."""
    imgs = make_frames()
    messages = [{"role": "user", "content": [{"type": "video", "video": imgs},
                                             {"type": "text", "text": "What is the red panda doing?"}]}]
    by_hand = video_dialogue(pipe, reference, imgs)  # the original layout, checked against chat()
    assert by_hand.generate_token_len >= 1
    out = pipe(messages, gen_config=gen())
    ref = check(out, reference, _original_layout(imgs, "What is the red panda doing?"), 1)
    prepared = pipe.prepare_inputs(messages)
    assert list(prepared["input_ids"]) == ref.prompt_ids and "Frame8: <img>" in prepared["prompt"]


def _original_layout(imgs, question):
    text = "".join(f"Frame{i + 1}: {IMAGE_TOKEN}\n" for i in range(len(imgs))) + question
    return [dict(role="user", content=[{"type": "text", "text": text},
                                       *({"type": "image", "image": im, "max_dynamic_patch": 1} for im in imgs)])]


def test_video_file_sampled_as_load_video(pipe, reference, tmp_path):
    """A video file: 8 segments' middle frames (the original get_index), in order."""
    av = pytest.importorskip("av")
    from internvl_reference import get_index

    path = tmp_path / "red-panda.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for img in make_frames(20):
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as c:
        decoded = [f.to_image().convert("RGB") for f in c.decode(c.streams.video[0])]
    imgs = [decoded[i] for i in get_index(None, 10.0, len(decoded) - 1, num_segments=4)]
    xs = [int(np.argmax(np.asarray(im)[18, :, 0] > 120)) for im in imgs]
    assert xs == sorted(xs) and xs[0] < xs[-1]  # the red square moves right: frames come in order
    messages = [{"role": "user", "content": [{"type": "video", "video": str(path), "num_segments": 4},
                                             {"type": "text", "text": "What is the red panda doing?"}]}]
    ref = check(pipe(messages, gen_config=gen()), reference, _original_layout(imgs, "What is the red panda doing?"), 1)
    assert list(pipe.prepare_inputs(messages)["input_ids"]) == ref.prompt_ids


def test_chat_session(pipe, reference, image_files):
    image = load_image(image_files[0])
    sess = pipe.chat(("describe this image", image), gen_config=gen())
    ref_msgs = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "describe this image"}]}]
    check(sess.response, reference, ref_msgs, None)
    first = sess.response.text
    sess = pipe.chat("what is she doing?", session=sess, gen_config=gen())
    ref_msgs += [{"role": "assistant", "content": [{"type": "text", "text": first}]},
                 {"role": "user", "content": [{"type": "text", "text": "what is she doing?"}]}]
    check(sess.response, reference, ref_msgs, None)
    assert pipe.image_encoder.stats["cache_hits"] >= 1  # the second turn did not encode the image again
