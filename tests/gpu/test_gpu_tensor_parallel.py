"""The tensor-parallel code path on CUDA with NCCL, in a single-rank group (one GPU): the model's
collectives (embedding all-reduce, one all-reduce per row-parallel layer, the logits gather) run on
NCCL, eagerly and inside captured CUDA graphs, and give the logits of the non-distributed model.
TP > 1 on CUDA needs several GPUs; its sharding is the one the CPU tests check on gloo."""

from __future__ import annotations

import datetime

import numpy as np
import torch
import torch.distributed as dist

from tp_shards import prefill_plan


def _decode_plan(lengths, block_size=16):
    """One decode row per sequence of `lengths` (their blocks as prefill_plan laid them out)."""
    from lmrs.parallel.plan_wire import WirePlan

    slots, table, nb = [], [], 0
    width = max(-(-(n + 1) // block_size) for n in lengths)
    for n in lengths:
        blocks = list(range(nb, nb + -(-(n + 1) // block_size)))
        nb += -(-n // block_size)
        slots.append(blocks[n // block_size] * block_size + n % block_size)
        table.append(blocks + [0] * (width - len(blocks)))
    i32 = lambda x: np.asarray(x, dtype=np.int32)  # noqa: E731
    rows = len(lengths)
    return WirePlan(dict(num_rows=rows, num_decode_rows=rows, max_query_len=1, max_seq_len=max(lengths) + 1,
                         num_sampled=rows, num_pool_rows=0),
                    dict(input_ids=i32([11] * rows), positions=i32(lengths), slot_mapping=i32(slots),
                         block_table=i32(table), seq_lens=i32([n + 1 for n in lengths]),
                         query_start_loc=i32(range(rows + 1)), logits_indices=i32(range(rows)), pool_rows=i32([])),
                    False)


def test_single_rank_nccl_group_matches_the_plain_model():
    from lmrs.engine.config import EngineConfig
    from lmrs.engine.loading import build_model_and_cache
    from lmrs.models.linear import SINGLE, ParallelContext
    from lmrs.models.loader import default_model_path, load_model_files
    from lmrs.runner.model_runner import ModelRunner

    path = default_model_path()
    store = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=datetime.timedelta(seconds=60), wait_for_workers=False)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=torch.device("cuda:0"))
    try:
        ctx = ParallelContext(0, 1, dist.group.WORLD)
        cfg = EngineConfig(model=path, device="cuda", dtype="float32", num_blocks=64, progress=False)
        results = []
        for parallel in (SINGLE, ctx):
            loaded = load_model_files(path, progress=False, gguf_weights="dequantize")
            stack = build_model_and_cache(cfg, loaded, "cuda", parallel)
            runner = ModelRunner(stack.model, stack.kv_cache, sampler=None, decode_graphs=stack.decode_graphs)
            with torch.inference_mode():
                _h, prefill = runner.forward_step(prefill_plan([21, 7]))
                _h, decode = runner.forward_step(_decode_plan([21, 7]))  # replayed from a captured graph
            results.append((prefill.float().cpu(), decode.float().cpu(), runner.graph_steps))
        (p0, d0, g0), (p1, d1, g1) = results
        assert g1 == g0 == 1, "the decode step ran from a CUDA graph (NCCL all-reduce captured)"
        torch.testing.assert_close(p1, p0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(d1, d0, rtol=1e-4, atol=1e-4)
    finally:
        dist.destroy_process_group()
