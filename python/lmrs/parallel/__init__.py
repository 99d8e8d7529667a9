"""Tensor parallelism: shard ranges, rank processes, the per-step plan broadcast and the worker loop."""
