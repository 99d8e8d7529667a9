"""CUDA graphs for decode steps.

A 135M-parameter model is launch-bound on a GPU: one decode step is ~400 small kernels (matrix
products, norms, RoPE, cache writes, attention, the head), each a few microseconds of work. So
pure-decode steps replay a captured CUDA graph instead: one graph per batch-size bucket, capturing
forward + logits on static input buffers. A step with R rows runs the smallest bucket B >= R; rows
R..B-1 are padding (slot -1: nothing is written; a one-token context in the null block; their
logits are ignored). Prefill steps, and steps larger than the biggest bucket, run eagerly.

Buckets are captured lazily, on first use, after a warm-up run (NVRTC compilation and module
loading must not happen during capture). `enabled=False` (EngineConfig.cuda_graphs) turns it off.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from lmrs.models.attention_metadata import AttentionMetadata

log = logging.getLogger("lmrs.cuda_graphs")

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


class DecodeGraphs:
    def __init__(self, model, kv_cache, max_batch: int, max_model_len: int, buckets=DEFAULT_BUCKETS):
        self.model = model
        self.kv_cache = kv_cache
        self.device = model.device
        self.block_size = kv_cache.block_size
        self.buckets = tuple(b for b in buckets if b <= max_batch) or (max_batch,)
        if self.buckets[-1] < max_batch:
            self.buckets += (max_batch,)
        self.max_rows = self.buckets[-1]
        self.max_blocks = -(-max_model_len // self.block_size)
        n, dev = self.max_rows, self.device
        # Static inputs: the graphs read these; every replay first copies the step's values in.
        self.input_ids = torch.zeros(n, dtype=torch.int32, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int32, device=dev)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int32, device=dev)
        self.block_table = torch.zeros((n, self.max_blocks), dtype=torch.int32, device=dev)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=dev)
        # Pinned host staging, one copy per replay.
        self.host_ids = torch.zeros(n, dtype=torch.int32, pin_memory=True)
        self.host_pos = torch.zeros(n, dtype=torch.int32, pin_memory=True)
        self.host_slots = torch.full((n,), -1, dtype=torch.int32, pin_memory=True)
        self.host_lens = torch.ones(n, dtype=torch.int32, pin_memory=True)
        self.host_table = torch.zeros((n, self.max_blocks), dtype=torch.int32, pin_memory=True)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self.failed = False

    def bucket_for(self, rows: int) -> int | None:
        for b in self.buckets:
            if b >= rows:
                return b
        return None

    def can_run(self, plan) -> bool:
        rows = plan.num_rows
        return (not self.failed and rows > 0 and plan.num_decode_rows == rows and plan.num_sampled == rows
                and rows <= self.max_rows and plan.block_table.shape[1] <= self.max_blocks)

    def _metadata(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(slot_mapping=self.slot_mapping[:b], block_table=self.block_table[:b],
                                 seq_lens=self.seq_lens[:b], query_start_loc=self.query_start_loc[: b + 1],
                                 num_decode_rows=b, max_query_len=1, max_seq_len=self.max_blocks * self.block_size)

    def _forward(self, b: int) -> torch.Tensor:
        hidden = self.model.forward(self.input_ids[:b], self.positions[:b], self._metadata(b), self.kv_cache.layers)
        return self.model.compute_logits(hidden)

    def _capture(self, b: int) -> None:
        # Padding rows everywhere while capturing: nothing is written to the cache.
        self.slot_mapping.fill_(-1)
        self.seq_lens.fill_(1)
        self.block_table.zero_()
        self.input_ids.zero_()
        self.positions.zero_()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: compile and load every kernel, let cuBLAS pick algorithms
                self._forward(b)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self._forward(b)
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[b] = (graph, logits)
        log.info("captured a decode CUDA graph for %d rows", b)

    @torch.inference_mode()
    def run(self, plan) -> torch.Tensor:
        """float32 logits [rows, vocab] of a pure-decode plan, by graph replay."""
        rows = plan.num_rows
        b = self.bucket_for(rows)
        if b not in self.graphs:
            try:
                self._capture(b)
            except Exception as e:  # noqa: BLE001 - fall back to eager steps for good
                log.warning("CUDA graph capture failed (%s: %s); running decode steps eagerly", type(e).__name__, e)
                self.failed = True
                raise
        nb = plan.block_table.shape[1]
        self.host_ids[:rows] = torch.from_numpy(plan.input_ids)
        self.host_pos[:rows] = torch.from_numpy(plan.positions)
        self.host_slots[:rows] = torch.from_numpy(plan.slot_mapping)
        self.host_slots[rows:b] = -1
        self.host_lens[:rows] = torch.from_numpy(plan.seq_lens)
        self.host_lens[rows:b] = 1
        self.host_table[:rows, :nb] = torch.from_numpy(np.ascontiguousarray(plan.block_table))
        self.host_table[:rows, nb:] = 0
        self.host_table[rows:b] = 0
        self.input_ids[:b].copy_(self.host_ids[:b], non_blocking=True)
        self.positions[:b].copy_(self.host_pos[:b], non_blocking=True)
        self.slot_mapping[:b].copy_(self.host_slots[:b], non_blocking=True)
        self.seq_lens[:b].copy_(self.host_lens[:b], non_blocking=True)
        self.block_table[:b].copy_(self.host_table[:b], non_blocking=True)
        graph, logits = self.graphs[b]
        graph.replay()
        return logits[:rows]
