"""Video parts in every input form, decoding within limits, and bad video failing alone.

The families' own video paths are tested against transformers in their plugins
(plugins/vlkit-plugin-qwen/tests/test_video.py, the InternVL examples); here: what the core owns.
"""

from __future__ import annotations

import base64
import io

import pytest

import vlkit
from vlkit import VIDEO_TOKEN
from vlkit.api.video import VideoLimits, VideoLoadError, VideoMetadata, decode_video, frames_video
from vlkit.config import EngineConfig, GenerationConfig
from vlkit.contract.messages import MessageError, to_conversation
from vlkit.testing import image_bytes, make_image
from vlkit.testing.server import ThreadedServer

av = pytest.importorskip("av")


def mp4(n: int = 12, fps: int = 6, size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(n):
            frame = np.asarray(make_image(*size, seed=seed + i))
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def uri(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


# -- messages ------------------------------------------------------------------------------------
def test_every_form_gives_a_video_part():
    frames = [make_image(32, 32, seed=i) for i in range(3)]
    forms = [
        [{"role": "user", "content": [{"type": "video", "video": frames, "fps": 2.0}, {"type": "text", "text": "q"}]}],
        [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AA",
                                                                          "num_frames": 4}},
                                      {"type": "text", "text": "q"}]}],
        ("q", [{"video": frames, "fps": 2.0}]),
    ]
    for form in forms:
        conv = to_conversation(form)
        assert [r.kind for r in conv.images] == ["video"] and conv.num_videos == 1
        assert conv.to_template()[0]["content"][0]["type"] == "video"
    assert to_conversation(forms[1]).images[0].options == {"num_frames": 4}
    assert to_conversation(forms[0]).images[0].options == {"fps": 2.0}


def test_video_token_and_image_token_place_each_kind():
    img, frames = make_image(32, 32), [make_image(32, 32, seed=1)]
    conv = to_conversation([{"role": "user", "content": [
        {"type": "text", "text": f"a {VIDEO_TOKEN} b {vlkit.IMAGE_TOKEN} c"},
        {"type": "image", "image": img}, {"type": "video", "video": frames}]}])
    kinds = [p.type for p in conv.messages[0].parts if p.type != "text"]
    assert kinds == ["video", "image"]
    idx = [p.index for p in conv.messages[0].parts if p.type != "text"]
    assert [conv.images[i].kind for i in idx] == ["video", "image"]
    with pytest.raises(MessageError, match=r"1 video\(s\) given but the text has 0 <VIDEO_TOKEN>"):
        to_conversation([{"role": "user", "content": [{"type": "text", "text": f"a {vlkit.IMAGE_TOKEN}"},
                                                      {"type": "image", "image": img}, {"type": "video", "video": frames}]}])


@pytest.mark.parametrize("bad,match", [
    ({"type": "video"}, r"content\[0\].video: missing"),
    ({"type": "video", "video": []}, "non-empty list of PIL images"),
    ({"type": "video", "video": 3}, "a video must be a path, URL"),
    ({"type": "video_url", "video_url": {}}, r"video_url.url: missing"),
])
def test_malformed_video_parts_are_named(bad, match):
    with pytest.raises(MessageError, match=match):
        to_conversation([{"role": "user", "content": [bad]}])


def test_videos_only_in_user_messages():
    with pytest.raises(MessageError, match="only accepted in user messages"):
        to_conversation([{"role": "assistant", "content": [{"type": "video", "video": [make_image(8, 8)]}]}])


# -- decoding ------------------------------------------------------------------------------------
def test_decode_keeps_only_the_chosen_frames_in_order():
    data = mp4(12, 6)
    asked = []

    def sample(meta: VideoMetadata) -> list[int]:
        asked.append(meta)
        return [9, 0, 3]

    v = decode_video(data, "clip", sample)
    assert asked[0].total_frames == 12 and asked[0].fps == 6.0 and (asked[0].width, asked[0].height) == (64, 48)
    assert v.indices == [0, 3, 9] and len(v.frames) == 3 and all(f.mode == "RGB" for f in v.frames)
    assert v.sample_fps == pytest.approx(1.5)
    with av.open(io.BytesIO(data)) as c:  # the same pixels as decoding every frame
        every = [f.to_image().convert("RGB") for f in c.decode(c.streams.video[0])]
    assert [f.tobytes() for f in v.frames] == [every[i].tobytes() for i in (0, 3, 9)]


@pytest.mark.parametrize("limits,match", [
    (VideoLimits(max_seconds=1.0), r"lasts 2.0 s, over the limit of 1 s \(VisionConfig.max_video_seconds\)"),
    (VideoLimits(max_frames=10), r"12 frames, over the limit of 10"),
    (VideoLimits(max_frame_pixels=1000), r"64x48 pixels are over the limit of 1000"),
])
def test_limits_refuse_before_decoding(limits, match):
    with pytest.raises(VideoLoadError, match=match):
        decode_video(mp4(12, 6), "clip", lambda m: [0], limits)


def test_not_a_video_is_a_clear_error():
    with pytest.raises(VideoLoadError, match="is not a video PyAV can read"):
        decode_video(b"definitely not a video" * 50, "junk.mp4", lambda m: [0])
    with pytest.raises(VideoLoadError, match="no video stream"):
        decode_video(_wav(), "tone.wav", lambda m: [0])
    with pytest.raises(VideoLoadError, match="frame 40 was asked of a video of 12"):
        decode_video(mp4(12, 6), "clip", lambda m: [40])


def _wav() -> bytes:
    import struct

    pcm = b"\x00\x00" * 800
    return (b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
            + b"data" + struct.pack("<I", len(pcm)) + pcm)


def test_frames_are_taken_as_given():
    frames = [make_image(20, 10, mode="RGBA", seed=i) for i in range(5)]
    v = frames_video(frames, fps=3)
    assert v.indices == list(range(5)) and v.fps == 3.0 and v.sample_fps == 3.0
    assert all(f.mode == "RGB" for f in v.frames)
    with pytest.raises(VideoLoadError, match="fps must be a positive number"):
        frames_video(frames, fps=0)


def test_missing_pyav_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_av(name, *a, **k):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(VideoLoadError, match=r"pip install 'vlkit\[video\]'"):
        decode_video(b"x", "clip", lambda m: [0])


# -- through a pipeline --------------------------------------------------------------------------
def _family_dir(name: str, tmp_path_factory, **opts):
    from vlkit.contract.registry import get_registry

    try:
        fam = get_registry().get_family(name)
    except KeyError:
        pytest.skip(f"the plugin of {name!r} is not installed")
    return fam.tiny_checkpoint(tmp_path_factory.mktemp(name) / "model", **opts)


@pytest.fixture(scope="module")
def qwen_pipe(tmp_path_factory):
    path = _family_dir("qwen2-vl", tmp_path_factory, seed=1)
    p = vlkit.pipeline(path, engine_config=EngineConfig(session_len=1024, device="cpu", dtype="float32", num_blocks=256))
    yield p
    p.close()


def _video_msg(src, text="what happens?"):
    return [{"role": "user", "content": [src, {"type": "text", "text": text}]}]


GEN = GenerationConfig(max_new_tokens=3, min_new_tokens=3)


def test_a_bad_video_fails_alone_in_its_batch(qwen_pipe):
    good = _video_msg({"type": "video_url", "video_url": {"url": uri(mp4())}})
    junk = _video_msg({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,"
                                                          + base64.b64encode(b"junk" * 100).decode()}})
    image_as_video = _video_msg({"type": "video_url", "video_url": {"url": "data:image/png;base64,"
                                + base64.b64encode(image_bytes(make_image(32, 32), "PNG")).decode()}})
    bad_option = _video_msg({"type": "video_url", "video_url": {"url": uri(mp4()), "frames_per_minute": 2}})
    alone = qwen_pipe(good, gen_config=GEN, use_tqdm=False)
    out = qwen_pipe([good, junk, image_as_video, bad_option], gen_config=GEN, use_tqdm=False)
    assert out[0].finish_reason == "length" and out[0].token_ids == alone.token_ids
    assert out[1].finish_reason == "error" and "video 0" in out[1].error and "not a video" in out[1].error
    assert out[2].finish_reason == "error" and "not a video but a still image (png)" in out[2].error
    assert out[3].finish_reason == "error" and "unknown Qwen2-VL video option" in out[3].error


def test_a_family_without_video_refuses_it_by_name(llava_dir):
    with vlkit.pipeline(llava_dir) as pipe:
        good = ("describe", make_image(40, 40))
        vid = _video_msg({"type": "video", "video": [make_image(40, 40)]})
        out = pipe([good, vid], gen_config=GEN, use_tqdm=False)
        assert out[0].finish_reason == "length"
        assert out[1].finish_reason == "error" and "'llava' family takes no video input" in out[1].error
        with pytest.raises(MessageError, match="takes no video input"):
            pipe.prepare_inputs(vid)


def test_server_takes_video_url_through_the_openai_client(qwen_pipe):
    import openai

    server = ThreadedServer(qwen_pipe)
    try:
        want = qwen_pipe(_video_msg({"type": "video_url", "video_url": {"url": uri(mp4(seed=5))}}),
                         gen_config=GenerationConfig(max_new_tokens=4, min_new_tokens=4, ignore_eos=True),
                         use_tqdm=False)
        r = server.client.chat.completions.create(
            model="tiny", max_tokens=4, temperature=0,
            messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": uri(mp4(seed=5))}},
                                                   {"type": "text", "text": "what happens?"}]}],
            extra_body={"min_tokens": 4, "ignore_eos": True},
        )
        assert r.choices[0].message.content == want.text
        assert r.usage.prompt_tokens == want.input_token_len
        with pytest.raises(openai.BadRequestError) as err:
            server.client.chat.completions.create(
                model="tiny", max_tokens=2,
                messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {
                    "url": "data:video/mp4;base64," + base64.b64encode(b"junk" * 64).decode()}}]}])
        assert "not a video" in str(err.value)
    finally:
        server.stop()


def test_server_without_video_support_answers_400(llava_dir):
    import openai

    with vlkit.pipeline(llava_dir) as pipe:
        server = ThreadedServer(pipe)
        try:
            with pytest.raises(openai.BadRequestError) as err:
                server.client.chat.completions.create(
                    model="tiny", max_tokens=2,
                    messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": uri(mp4())}}]}])
            assert "takes no video input" in str(err.value)
        finally:
            server.stop()
