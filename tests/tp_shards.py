"""Helper for test_tensor_parallel: every family's tiny model, sharded over a 2-rank gloo group,
gives the logits of the unsharded model (run in spawned rank processes)."""

from __future__ import annotations

import datetime

import numpy as np
import torch
import torch.distributed as dist


def prefill_plan(lengths: list[int], block_size: int = 16):
    """A plan prefilling sequences of `lengths` tokens from scratch (fresh blocks, all rows sampled)."""
    from lmrs.parallel.plan_wire import WirePlan

    rng = np.random.default_rng(3)
    ids, pos, slots, qsl, table = [], [], [], [0], []
    width = max(-(-n // block_size) for n in lengths)
    next_block = 0
    for n in lengths:
        blocks = list(range(next_block, next_block + -(-n // block_size)))
        next_block += len(blocks)
        ids += rng.integers(10, 300, n).tolist()
        pos += list(range(n))
        slots += [blocks[i // block_size] * block_size + i % block_size for i in range(n)]
        qsl.append(qsl[-1] + n)
        table.append(blocks + [0] * (width - len(blocks)))
    i32 = lambda x: np.asarray(x, dtype=np.int32)  # noqa: E731
    arrays = dict(input_ids=i32(ids), positions=i32(pos), slot_mapping=i32(slots), block_table=i32(table),
                  seq_lens=i32(lengths), query_start_loc=i32(qsl), logits_indices=i32(qsl[1:]) - 1,
                  pool_rows=i32([]))
    scalars = dict(num_rows=len(lengths), num_decode_rows=0, max_query_len=max(lengths), max_seq_len=max(lengths),
                   num_sampled=len(lengths), num_pool_rows=0)
    return WirePlan(scalars, arrays, False)


def family_logits(folder: str, parallel) -> torch.Tensor | None:
    """float32 logits of a 2-sequence prefill on this rank's shard (None on ranks other than 0)."""
    from lmrs.engine.config import EngineConfig
    from lmrs.engine.loading import build_model_and_cache
    from lmrs.models.loader import load_model_files
    from lmrs.runner.model_runner import ModelRunner

    cfg = EngineConfig(model=folder, dtype="float32", num_blocks=16, progress=False)
    stack = build_model_and_cache(cfg, load_model_files(folder, progress=False), "cpu", parallel)
    runner = ModelRunner(stack.model, stack.kv_cache, sampler=None)
    with torch.inference_mode():
        _hidden, logits = runner.forward_step(prefill_plan([21, 7]))
    return logits


def rank_main(rank: int, port: int, folders: dict, out_path: str) -> None:
    from lmrs.models.linear import ParallelContext

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=datetime.timedelta(seconds=60),
                          wait_for_workers=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    ctx = ParallelContext(rank, 2, dist.group.WORLD)
    results = {name: family_logits(folder, ctx) for name, folder in folders.items()}
    if rank == 0:
        torch.save(results, out_path)
    dist.destroy_process_group()
