"""Paged KV cache, prefix caching, preemption, chunked prefill, abort."""

from __future__ import annotations

import time

import pytest
import torch
from engine_helpers import prompts

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine

GEN = GenerationConfig(max_new_tokens=20, ignore_eos=True)


def _engine(path, **kw):
    kw.setdefault("device", "cpu")
    return LLMEngine.from_pretrained(path, EngineConfig(**kw))


@pytest.fixture(scope="module")
def reference(llama_path):
    ps = prompts(8, seed=21, lo=10, hi=60)
    with _engine(llama_path, num_blocks=256) as eng:
        return ps, [o.token_ids for o in eng.generate(ps, GEN)]


def test_prefix_cache_reuses_shared_blocks(llama_path):
    with _engine(llama_path, num_blocks=64, block_size=16) as eng:
        bm = eng.block_manager
        shared = prompts(1, seed=22, lo=48, hi=49)[0]  # exactly 3 blocks
        a = shared + [5, 6, 7, 8, 9]
        b = shared + [10, 11, 12, 13, 14, 15, 16]
        out_a = eng.generate(a, GEN)
        assert out_a.num_cached_tokens == 0
        allocated = bm.num_allocated_blocks
        hits = bm.prefix_hit_blocks
        out_b = eng.generate(b, GEN)
        total_blocks_b = bm.blocks_for(len(b) + GEN.max_new_tokens - 1)
        assert bm.prefix_hit_blocks - hits == 3
        assert out_b.num_cached_tokens == 48
        assert bm.num_allocated_blocks - allocated == total_blocks_b - 3
    with _engine(llama_path, num_blocks=64, enable_prefix_caching=False) as cold:
        assert cold.generate(b, GEN).token_ids == out_b.token_ids
        assert cold.block_manager.prefix_hit_blocks == 0


def test_requests_of_one_step_share_the_prefix_it_computes(llama_path):
    # submitted together: the first computes the shared 3 blocks, the second reads them in the
    # same step (each layer writes all keys/values before any chunk attends)
    shared = prompts(1, seed=27, lo=48, hi=49)[0]
    a = shared + [5, 6, 7, 8, 9]
    b = shared + [10, 11, 12, 13, 14, 15, 16]
    with _engine(llama_path, num_blocks=64, enable_prefix_caching=False) as cold:
        want = [o.token_ids for o in cold.generate([a, b], GEN)]
    with _engine(llama_path, num_blocks=64) as eng:
        bm = eng.block_manager
        outs = eng.generate([a, b], GEN)
        assert [o.token_ids for o in outs] == want
        assert outs[1].num_cached_tokens == 48 and bm.prefix_hit_blocks == 3
        own = bm.blocks_for(len(a) + GEN.max_new_tokens - 1) + bm.blocks_for(len(b) + GEN.max_new_tokens - 1)
        assert bm.num_allocated_blocks == own - 3


def test_a_request_waiting_for_room_counts_its_prefix_hit_once(llama_path):
    # C shares A's 3 cached blocks but needs 3 more than are free while B decodes: it is matched
    # and given back at every step until B finishes, and must be counted once, when admitted
    with _engine(llama_path, num_blocks=12, block_size=16) as eng:
        bm = eng.block_manager
        shared = prompts(1, seed=24, lo=48, hi=49)[0]
        eng.generate(shared + [5, 6, 7, 8, 9], GenerationConfig(max_new_tokens=1, ignore_eos=True))
        hits, queried = bm.prefix_hit_blocks, bm.prefix_query_tokens
        b = prompts(1, seed=25, lo=100, hi=101)[0]
        c = shared + prompts(1, seed=26, lo=40, hi=41)[0]
        _, out_c = eng.generate([b, c], GEN)
        assert out_c.num_cached_tokens == 48
        assert bm.prefix_hit_blocks - hits == 3
        assert bm.prefix_query_tokens - queried == len(b) + len(c)
        assert eng.stats()["num_preemptions"] == 0


def test_image_hashes_key_the_prefix_cache(llama_path):
    with _engine(llama_path, num_blocks=64) as eng:
        bm = eng.block_manager
        p = prompts(1, seed=23, lo=50, hi=51)[0]
        emb = eng.runner.model.embed_tokens(torch.tensor(p[10:20])).detach()

        def run(h):
            rid = eng.add_request(None, p, GEN, input_embeddings=[emb], embedding_ranges=[(10, 20)],
                                  embedding_hashes=[h])
            while eng.has_unfinished():
                eng.step()
            return rid

        run("image-A")
        hits = bm.prefix_hit_blocks
        run("image-B")  # block 0 holds image tokens 10..19: different image, no reuse at all
        assert bm.prefix_hit_blocks == hits
        run("image-A")  # same image: the 3 full prompt blocks are reused
        assert bm.prefix_hit_blocks - hits == 3


def test_preemption_gives_same_tokens(llama_path, reference):
    ps, ref = reference
    # 8 requests of up to ~80 tokens need ~40 blocks at once; 12 forces preemption
    with _engine(llama_path, num_blocks=12) as eng:
        outs = eng.generate(ps, GEN)
        assert [o.token_ids for o in outs] == ref
        assert eng.stats()["num_preemptions"] > 0
        assert eng.block_manager.num_free_blocks == 12


def test_chunked_prefill_gives_same_tokens(llama_path, reference):
    ps, ref = reference
    with _engine(llama_path, num_blocks=256, max_prefill_token_num=7) as eng:
        outs = eng.generate(ps, GEN)
        assert [o.token_ids for o in outs] == ref


def test_max_batch_size_limits_running(llama_path, reference):
    ps, ref = reference
    with _engine(llama_path, num_blocks=256, max_batch_size=3) as eng:
        for p in ps:
            eng.add_request(None, p, GEN)
        peak, outs = 0, {}
        while eng.has_unfinished():
            for o in eng.step():
                outs[o.request_id] = o
            peak = max(peak, eng.stats()["num_running"])
        assert peak == 3
        assert len(outs) == 8


def test_blocks_return_and_abort_frees_at_once(llama_path):
    with _engine(llama_path, num_blocks=64) as eng:
        bm = eng.block_manager
        start = bm.num_free_blocks
        ps = prompts(4, seed=24, lo=20, hi=40)
        ids = [eng.add_request(f"r{i}", p, GenerationConfig(max_new_tokens=30, ignore_eos=True))
               for i, p in enumerate(ps)]
        for _ in range(3):
            eng.step()
        used = bm.num_used_blocks
        assert used > 0
        held = len(eng._seqs["r1"].block_table)
        assert eng.abort("r1")
        assert bm.num_used_blocks == used - held  # freed immediately, before any step
        assert not eng.abort("r1")
        outs = {}
        while eng.has_unfinished():
            for o in eng.step():
                outs.setdefault(o.request_id, []).append(o)
        assert outs["r1"][-1].finish_reason == "abort" and outs["r1"][-1].finished
        assert all(outs[i][-1].finish_reason == "length" for i in ids if i != "r1")
        assert bm.num_free_blocks == start


def test_incremental_outputs(llama_path):
    with _engine(llama_path, num_blocks=64) as eng:
        rid = eng.add_request("x", prompts(1, seed=25)[0], GenerationConfig(max_new_tokens=5, ignore_eos=True))
        seen = []
        while eng.has_unfinished():
            for o in eng.step():
                assert o.request_id == rid
                seen.extend(o.new_token_ids)
                assert o.token_ids == seen
                last = o
        assert last.finished and len(seen) == 5


def test_add_and_abort_from_another_thread(llama_path, reference):
    import threading

    ps, ref = reference
    with _engine(llama_path, num_blocks=256) as eng:
        results, stop = {}, threading.Event()

        def loop():
            while not stop.is_set():
                for o in eng.step():
                    if o.finished:
                        results[o.request_id] = o

        t = threading.Thread(target=loop)
        t.start()
        try:
            for i, p in enumerate(ps):
                eng.add_request(f"t{i}", p, GEN)
            eng.add_request("victim", ps[0], GenerationConfig(max_new_tokens=200, ignore_eos=True))
            eng.abort("victim")
            deadline = time.time() + 60
            while len(results) < 9 and time.time() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            t.join()
        assert [results[f"t{i}"].token_ids for i in range(8)] == ref
        assert results["victim"].finish_reason == "abort"
        assert eng.block_manager.num_used_blocks == 0
