"""The Ray Serve router's pure parts: which key places a request, and /metrics across replicas."""

from __future__ import annotations

import json

from vlkit.serve.ray import merge_metrics, routing_key

CHAT = "/v1/chat/completions"


def _key(body, path=CHAT, **headers):
    return routing_key(path, headers, json.dumps(body).encode())


def _img(url):
    return {"type": "image_url", "image_url": {"url": url}}


def test_a_conversation_keeps_its_key_across_turns():
    opening = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    first = _key({"messages": opening})
    later = _key({"messages": opening + [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]})
    assert first == later and first.startswith("prefix-")
    assert _key({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "bye"}]}) != first


def test_precedence_header_then_user_then_image_then_opening():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "what?"}, _img("data:image/png;base64,AAAA")]}]
    by_image = _key({"messages": msgs})
    assert by_image.startswith("image-")
    # the image decides whatever text surrounds it, in any later turn
    assert _key({"messages": [{"role": "user", "content": "first"}, *msgs]}) == by_image
    by_user = _key({"messages": msgs, "user": "ann"})
    assert by_user.startswith("user-") and by_user == _key({"messages": [{"role": "user", "content": "x"}], "user": "ann"})
    by_header = _key({"messages": msgs, "user": "ann"}, serve_multiplexed_model_id="s1")
    assert by_header.startswith("session-") and by_header != by_user
    # keys are hashes: nothing of the request shows in them
    assert "ann" not in by_user and "s1" not in by_header and "AAAA" not in by_image


def test_completions_and_other_paths():
    assert _key({"prompt": "x" * 600}, "/v1/completions") == _key({"prompt": "x" * 512 + "y"}, "/v1/completions")
    assert _key({"prompt": "x"}, "/v1/completions") != _key({"prompt": "y"}, "/v1/completions")
    assert routing_key("/v1/models", {}, b"") is None
    assert routing_key(CHAT, {}, b"not json") is None
    assert routing_key(CHAT, {}, b"[1, 2]") is None
    assert _key({"messages": []}) is None


def test_merge_metrics_labels_every_sample_once_per_family():
    text = (
        "# HELP vlkit_requests_total Requests.\n# TYPE vlkit_requests_total counter\n"
        'vlkit_requests_total{endpoint="chat",status="200"} 3\n'
        "# HELP vlkit:ttft Time.\n# TYPE vlkit:ttft histogram\n"
        'vlkit:ttft_bucket{le="0.1"} 1\nvlkit:ttft_sum 0.5\nvlkit:ttft_count 1\n'
        "# HELP vlkit_engine_running Running.\n# TYPE vlkit_engine_running gauge\nvlkit_engine_running 2\n"
    )
    merged = merge_metrics({"r1": text, "r2": text.replace("} 3", "} 5")}).splitlines()
    assert merged.count("# HELP vlkit_requests_total Requests.") == 1
    assert merged.count("# TYPE vlkit:ttft histogram") == 1
    assert 'vlkit_requests_total{replica="r1",endpoint="chat",status="200"} 3' in merged
    assert 'vlkit_requests_total{replica="r2",endpoint="chat",status="200"} 5' in merged
    assert 'vlkit:ttft_sum{replica="r2"} 0.5' in merged and 'vlkit_engine_running{replica="r1"} 2' in merged
    # a family's samples follow its HELP/TYPE lines (what Prometheus' parser requires)
    i = merged.index("# TYPE vlkit:ttft histogram")
    assert all(line.startswith("vlkit:ttft") for line in merged[i + 1: i + 7])
    assert merge_metrics({}) == "\n"
