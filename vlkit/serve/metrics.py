"""Prometheus text exposition: the server's counters, the engine's KV-cache gauges, and latency
histograms (prometheus_client, one registry per app) under vLLM's names.

* ``vlkit:e2e_request_latency_seconds``: from the request's arrival to its last token;
* ``vlkit:time_to_first_token_seconds``: from arrival to the first output (image fetching and
  encoding and the queue included, as a client sees it);
* ``vlkit:time_per_output_token_seconds``: the gap between output tokens after the first, per request;
* ``vlkit:request_queue_time_seconds``: how long the request waited in the engine's queue
  (prepared, images encoded) before it was first scheduled.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
            80.0, 160.0)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry()
        self.e2e = Histogram("vlkit:e2e_request_latency_seconds", "End-to-end request latency.",
                             buckets=_BUCKETS, registry=self.registry)
        self.ttft = Histogram("vlkit:time_to_first_token_seconds", "Time from arrival to the first output.",
                              buckets=_BUCKETS, registry=self.registry)
        self.tpot = Histogram("vlkit:time_per_output_token_seconds", "Time per output token after the first.",
                              buckets=_BUCKETS, registry=self.registry)
        self.queue = Histogram("vlkit:request_queue_time_seconds", "Time waiting in the engine's queue.",
                               buckets=_BUCKETS, registry=self.registry)
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.running = 0

    def finished(self, endpoint: str, status: str, prompt_tokens: int = 0, generation_tokens: int = 0) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.prompt_tokens += prompt_tokens
            self.generation_tokens += generation_tokens

    def observe_latency(self, arrived: float, first: float, done: float, tokens: int,
                        queue_time: float | None = None) -> None:
        """One finished request: its arrival, first-output and last-token times (monotonic) and
        its time in the engine's queue."""
        if queue_time is not None:
            self.queue.observe(queue_time)
        self.e2e.observe(done - arrived)
        self.ttft.observe(first - arrived)
        if tokens > 1:
            self.tpot.observe((done - first) / (tokens - 1))

    def render(self, engine_stats: dict[str, Any]) -> str:
        lines = [
            "# HELP vlkit_requests_total Requests answered, by endpoint and status.",
            "# TYPE vlkit_requests_total counter",
        ]
        with self._lock:
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'vlkit_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            counters = {
                "vlkit_prompt_tokens_total": ("Prompt tokens processed.", self.prompt_tokens),
                "vlkit_generation_tokens_total": ("Tokens generated.", self.generation_tokens),
            }
            gauges = {"vlkit_requests_running": ("Requests in flight in the server.", self.running)}
        for name, (doc, value) in counters.items():
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter", f"{name} {value}"]
        docs = {
            "vlkit_queue_depth": "Requests waiting in the engine's scheduler.",
            "vlkit_engine_running": "Sequences the engine is running.",
            "vlkit_kv_cache_free_blocks": "Free KV-cache blocks.",
            "vlkit_kv_cache_total_blocks": "KV-cache blocks in all.",
            "vlkit_kv_cache_usage_ratio": "Fraction of KV-cache blocks in use.",
            "vlkit_kv_cache_peak_used_blocks": "Most KV-cache blocks in use at once since the start.",
            "vlkit_prefix_cache_hit_tokens_total": "Prompt tokens served from the prefix cache.",
            "vlkit_preemptions_total": "Sequences preempted (freed, to be recomputed) for lack of KV cache.",
        }
        for key, doc in docs.items():
            if key in engine_stats and key.endswith("_total"):
                lines += [f"# HELP {key} {doc}", f"# TYPE {key} counter", f"{key} {engine_stats[key]}"]
            elif key in engine_stats:
                gauges[key] = (doc, engine_stats[key])
        for name, (doc, value) in gauges.items():
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {value}"]
        from prometheus_client import generate_latest

        return "\n".join(lines) + "\n" + generate_latest(self.registry).decode()
