"""Qwen2-VL / Qwen2.5-VL native video against transformers' models fed the same video inputs.

transformers' video *processor* needs torchvision (not installable beside the CPU torch), so its
inputs are computed as it computes them (``qwen_reference.video_pixels``,
``sample_frame_indices``); the models are transformers' own.
"""

from __future__ import annotations

import base64
import io

import pytest
import torch

from vlkit.config import GenerationConfig
from vlkit.testing import make_image

N = 6


def frames(n: int = 4, size: tuple[int, int] = (84, 56), seed: int = 0) -> list:
    return [make_image(*size, seed=seed + i) for i in range(n)]


def video_part(fr: list, fps: float, reference: bool) -> dict:
    return {"type": "video", "video": fr, "fps": fps}


def gen(n: int = N) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, min_new_tokens=n)


@pytest.fixture(scope="module")
def vref(qwen):
    import transformers
    from conftest import MODELS
    from qwen_reference import QwenVideoReference

    name, path, pipe, _ = qwen
    return QwenVideoReference(path, getattr(transformers, MODELS[name][1]))


def check(pipe, ref, messages, n: int = N):
    want = ref(messages, n)
    got = pipe.prepare_inputs(messages)
    assert list(got["input_ids"]) == want.prompt_ids, got["prompt"]
    r = pipe(messages, gen_config=gen(n), use_tqdm=False)
    assert r.finish_reason in ("stop", "length"), r.error
    assert r.token_ids == want.generated
    logits = pipe.get_logits(got).float()
    assert (logits - want.logits[:, :logits.shape[-1]]).abs().max() < 2e-3
    return r


def test_one_video(qwen, vref):
    _, _, pipe, _ = qwen
    msgs = [{"role": "user", "content": [video_part(frames(), 2.0, False), {"type": "text", "text": "What happens?"}]}]
    check(pipe, vref, msgs)


def test_odd_frame_count_pads_with_the_last_frame(qwen, vref):
    _, _, pipe, _ = qwen
    msgs = [{"role": "user", "content": [video_part(frames(3, seed=5), 2.0, False), {"type": "text", "text": "Go."}]}]
    check(pipe, vref, msgs)


def test_video_and_image_in_one_prompt(qwen, vref):
    _, _, pipe, _ = qwen
    img = make_image(70, 98, seed=9)
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "This picture, and "},
                                         video_part(frames(seed=3), 2.0, False),
                                         {"type": "text", "text": " this video: the same place?"}]}]
    check(pipe, vref, msgs)


def test_two_turns_about_one_video(qwen, vref):
    _, _, pipe, _ = qwen
    fr = frames(seed=11)
    msgs = [
        {"role": "user", "content": [video_part(fr, 2.0, False), {"type": "text", "text": "What happens?"}]},
        {"role": "assistant", "content": "A dog runs."},
        {"role": "user", "content": "And then?"},
    ]
    check(pipe, vref, msgs)


def test_video_token_places_the_video(qwen, vref):
    """VIDEO_TOKEN in the text puts the video there (as IMAGE_TOKEN does an image)."""
    from vlkit import VIDEO_TOKEN

    _, _, pipe, _ = qwen
    fr = frames(seed=21)
    placed = [{"role": "user", "content": [{"type": "text", "text": f"Look: {VIDEO_TOKEN} What is it?"},
                                           video_part(fr, 2.0, False)]}]
    ordered = [{"role": "user", "content": [{"type": "text", "text": "Look: "}, video_part(fr, 2.0, False),
                                            {"type": "text", "text": " What is it?"}]}]
    assert list(pipe.prepare_inputs(placed)["input_ids"]) == vref(ordered, 1).prompt_ids


def make_mp4(fr: list, fps: int) -> bytes:
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height = fr[0].size
        s.pix_fmt = "yuv420p"
        s.options = {"qscale": "1"}
        for f in fr:
            for p in s.encode(av.VideoFrame.from_ndarray(np.asarray(f.convert("RGB")), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def decode_all(data: bytes) -> tuple[list, float]:
    import av

    with av.open(io.BytesIO(data)) as c:
        st = c.streams.video[0]
        return [f.to_image().convert("RGB") for f in c.decode(st)], float(st.average_rate)


def test_video_file_sampled_at_2_fps(qwen, vref, tmp_path):
    """A 12-frame, 6 fps file: 2 fps of 2 s is 4 frames, chosen as the video processor does."""
    from qwen_reference import sample_frame_indices

    pytest.importorskip("av")
    _, _, pipe, _ = qwen
    data = make_mp4(frames(12, size=(84, 56), seed=40), fps=6)  # time positions stay within the spatial ones
    all_frames, rate = decode_all(data)
    idx = sample_frame_indices(len(all_frames), rate)
    assert len(idx) == 4
    sampled = [all_frames[i] for i in idx]
    ref_msgs = [{"role": "user", "content": [video_part(sampled, rate * len(idx) / len(all_frames), True),
                                             {"type": "text", "text": "Describe."}]}]
    want = vref(ref_msgs, N)
    uri = "data:video/mp4;base64," + base64.b64encode(data).decode()
    (tmp_path / "clip.mp4").write_bytes(data)
    for src in ({"type": "video_url", "video_url": {"url": uri}}, {"type": "video", "video": str(tmp_path / "clip.mp4")}):
        msgs = [{"role": "user", "content": [src, {"type": "text", "text": "Describe."}]}]
        assert list(pipe.prepare_inputs(msgs)["input_ids"]) == want.prompt_ids
        assert pipe(msgs, gen_config=gen(), use_tqdm=False).token_ids == want.generated


def test_sampling_follows_the_video_processor(qwen):
    from qwen_reference import sample_frame_indices

    from vlkit.api.video import VideoMetadata

    _, _, pipe, _ = qwen
    vision = pipe.vision
    for total, rate in ((12, 6.0), (300, 30.0), (7, 24.0), (1000, 25.0), (5, 1.0)):
        meta = VideoMetadata(total, rate, 64, 48)
        assert vision.sample_video_frames(meta, {}) == sample_frame_indices(total, rate), (total, rate)
        assert vision.sample_video_frames(meta, {"fps": 1.0}) == sample_frame_indices(total, rate, fps=1.0)
    assert len(vision.sample_video_frames(VideoMetadata(300, 30.0, 64, 48), {"num_frames": 7})) == 8  # rounded to 2
    with pytest.raises(ValueError, match="mutually exclusive"):
        vision.sample_video_frames(VideoMetadata(300, 30.0, 64, 48), {"fps": 1.0, "num_frames": 4})
    with pytest.raises(ValueError, match="unknown Qwen2-VL video option"):
        vision.sample_video_frames(VideoMetadata(300, 30.0, 64, 48), {"frames_per_minute": 3})


def test_text_after_a_long_video_follows_the_original_rule(qwen, vref):
    """Time positions that pass the spatial ones (Qwen2.5-VL at 0.5 fps: 8 per temporal patch;
    Qwen2-VL with more temporal patches than rows): the text after the video starts at the
    largest position + 1, as Qwen's code, transformers 4.x and vLLM place it. transformers 5.x
    starts it at start + max(h, w) instead; vlkit's prompt logits equal transformers' model fed
    the original positions."""
    from qwen_reference import original_rope_index

    name, _, pipe, _ = qwen
    fr = frames(8, size=(56, 56), seed=60) if name == "qwen2-vl" else frames(4, size=(56, 56), seed=60)
    fps = 2.0 if name == "qwen2-vl" else 0.5
    msgs = [{"role": "user", "content": [video_part(fr, fps, False), {"type": "text", "text": "After the video."}]}]
    inputs = vref.inputs(msgs)
    ids = inputs["input_ids"][0].tolist()
    tps = 2.0 if name == "qwen2.5-vl" else None
    original = original_rope_index(ids, vref.image_token_id, vref.video_token_id, vref.last_video_grids, 2, tps)
    got = pipe.prepare_inputs(msgs)
    assert list(got["input_ids"]) == ids
    mine = pipe.vision.mrope_positions(ids, [pipe_item for pipe_item in _items(pipe, msgs)])[0]
    assert torch.equal(mine, original)
    model = vref.model
    kwargs = {k: v for k, v in inputs.items() if k not in ("mm_token_type_ids",)}
    theirs, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], None,
                                           inputs["video_grid_thw"], **({"second_per_grid_ts": inputs["second_per_grid_ts"]}
                                                                       if "second_per_grid_ts" in inputs else {}))
    assert not torch.equal(theirs[:, 0], original), "this case should tell the two rules apart"
    with torch.inference_mode():
        ref_logits = model(**kwargs, position_ids=original.unsqueeze(1)).logits[0].float()
    logits = pipe.get_logits(got).float()
    assert (logits - ref_logits[:, :logits.shape[-1]]).abs().max() < 2e-3


def _items(pipe, msgs):
    conv = pipe._prep.conversation(msgs)
    return pipe.image_encoder.preprocess(conv.images)


def test_same_video_is_encoded_once(qwen):
    _, _, pipe, _ = qwen
    fr = frames(seed=80)
    msgs = [{"role": "user", "content": [video_part(fr, 2.0, False), {"type": "text", "text": "Once."}]}]
    before = pipe.image_encoder.stats["encoded"]
    pipe([msgs, msgs], gen_config=gen(1), use_tqdm=False)
    assert pipe.image_encoder.stats["encoded"] - before == 1
    other = [{"role": "user", "content": [video_part(fr, 1.0, False), {"type": "text", "text": "Once."}]}]
    pipe(other, gen_config=gen(1), use_tqdm=False)  # another fps: other time positions, another entry
    assert pipe.image_encoder.stats["encoded"] - before == 2


@pytest.mark.slow
def test_tp2_equals_tp1_with_video(qwen):
    import vlkit
    from vlkit.config import EngineConfig

    _, path, pipe, _ = qwen
    prompts = [
        [{"role": "user", "content": [video_part(frames(seed=90), 2.0, False), {"type": "text", "text": "What?"}]}],
        [{"role": "user", "content": [{"type": "image", "image": make_image(56, 84, seed=2)},
                                      video_part(frames(3, seed=95), 1.0, False), {"type": "text", "text": "Both."}]}],
    ]
    one = pipe(prompts, gen_config=gen(), use_tqdm=False)
    with vlkit.pipeline(path, engine_config=EngineConfig(session_len=1024, device="cpu", dtype="float32",
                                                         num_blocks=256, tp=2)) as pipe2:
        two = pipe2(prompts, gen_config=gen(), use_tqdm=False)
    for a, b in zip(one, two):
        assert a.finish_reason != "error" and b.finish_reason != "error", (a.error, b.error)
        assert a.token_ids == b.token_ids
