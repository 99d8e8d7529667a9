"""Build the runnable pieces of an engine from an EngineConfig: weights, model, KV cache, Core."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from lmrs import _core
from lmrs.engine.config import EngineConfig
from lmrs.models.decoder import DecoderModel
from lmrs.models.linear import SINGLE, ParallelContext
from lmrs.models.loader import LoadedModel, default_model_path, load_model_files
from lmrs.models.registry import build_model
from lmrs.runner.kv_cache import KVCache, bytes_per_block, parse_bytes
from lmrs.runner.model_runner import ModelRunner
from lmrs.runner.sampler import Sampler

log = logging.getLogger("lmrs.engine")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_DEFAULT_KV_BYTES = 1 << 30


@dataclass
class EngineParts:
    loaded: LoadedModel
    model: DecoderModel
    runner: ModelRunner
    core: "_core.Core"
    max_model_len: int
    session_len: int
    dtype: torch.dtype


def resolve_dtype(name: str, device: str, checkpoint_dtype: str | None) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if str(device).startswith("cuda"):
        return torch.float16 if checkpoint_dtype == "float16" else torch.bfloat16
    return torch.bfloat16  # the fast CPU path (AMX); float32 stays available as the exact reference


def _num_blocks(cfg: EngineConfig, per_block: int, device: str) -> int:
    if cfg.num_blocks is not None:
        return int(cfg.num_blocks)
    if cfg.kv_cache_memory is not None:
        budget = parse_bytes(cfg.kv_cache_memory)
    elif str(device).startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        budget = int(free * cfg.cache_max_entry_count)
    else:
        budget = CPU_DEFAULT_KV_BYTES
    n = budget // per_block
    if n < 2:
        raise ValueError(f"the KV cache budget of {budget} bytes holds fewer than 2 blocks of {per_block} bytes")
    return int(n)


def gguf_weights_mode(cfg: EngineConfig, device: str) -> str:
    """How a GGUF's quantized weights are loaded: kept quantized (one copy, run by the Rust kernels) for a
    16-bit model on the CPU, unless the config asks for dense copies (``gguf_weights="dequantize"``:
    several times the memory); dequantized for the float32 reference and for other devices."""
    if str(device) != "cpu" or resolve_dtype(cfg.dtype, device, None) == torch.float32 or cfg.tp > 1:
        return "dequantize"  # (tensor parallel: each rank keeps dense slices of the dequantized weights)
    return cfg.gguf_weights


@dataclass
class ModelStack:
    """What every tensor-parallel rank builds: its shard of the model and of the KV cache."""

    model: DecoderModel
    kv_cache: KVCache
    num_blocks: int  # the same on every rank (agreed: the smallest any rank can hold)
    max_model_len: int
    dtype: torch.dtype
    decode_graphs: object | None  # CUDA graphs of decode steps, or None


def build_model_and_cache(cfg: EngineConfig, loaded: LoadedModel, device: str, parallel: ParallelContext = SINGLE,
                          agree_min=None) -> ModelStack:
    """The model (this rank's shard), quantized twins, prepacked weights and the KV cache.
    `agree_min(n)`: the smallest n over the ranks (tensor parallel), so all ranks hold the same blocks."""
    mc = loaded.config
    dtype = resolve_dtype(cfg.dtype, device, mc.torch_dtype)
    model = build_model(mc, loaded.weights, dtype=dtype, device=device, parallel=parallel)
    model.int8_decode = cfg.cpu_decode_activations == "int8"
    if device == "cpu" and cfg.quantize != "none" and dtype != torch.float32:
        from lmrs.models.quant import quantize_for_small_batches

        quantize_for_small_batches(model, cfg.quantize)
    if device == "cpu":
        for lin in [*model.linears(), model.lm_head]:
            lin.prepack()
    model.drop_sources()
    per_block = bytes_per_block(mc.num_hidden_layers, cfg.block_size, model.num_kv_heads, mc.head_dim, dtype)
    num_blocks = _num_blocks(cfg, per_block, device)
    if agree_min is not None:
        num_blocks = agree_min(num_blocks)
    capacity_tokens = (num_blocks - 1) * cfg.block_size
    max_model_len = min(cfg.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings)
    if cfg.max_model_len is None:
        max_model_len = min(max_model_len, capacity_tokens)
    if max_model_len < 2:
        raise ValueError(f"max_model_len must be at least 2 (KV capacity is {capacity_tokens} tokens)")
    model.set_max_model_len(max_model_len)
    kv = KVCache(mc.num_hidden_layers, num_blocks, cfg.block_size, model.num_kv_heads, mc.head_dim, dtype, device)
    if parallel.rank == 0:
        log.info("KV cache: %d blocks of %d tokens (%.1f MiB, %d tokens), max_model_len %d",
                 num_blocks, cfg.block_size, kv.nbytes / 2**20, capacity_tokens, max_model_len)
    graphs = None
    if device.startswith("cuda") and cfg.cuda_graphs:
        from lmrs.runner.cuda_graphs import DecodeGraphs

        graphs = DecodeGraphs(model, kv, cfg.max_num_seqs, max_model_len)
    return ModelStack(model, kv, num_blocks, max_model_len, dtype, graphs)


def build_engine_parts(cfg: EngineConfig, loaded: LoadedModel | None = None,
                       draft_loaded: LoadedModel | None = None) -> EngineParts:
    """`draft_loaded`: the draft model's files, already loaded (else `cfg.speculative_model` is)."""
    cfg.validate()
    device = str(cfg.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but PyTorch sees no CUDA GPU on this machine")
    ranks = None
    if cfg.tp > 1:  # start the other ranks first: a rank that cannot start fails before any loading
        from lmrs.parallel.ranks import RankGroup, rank_device, threads_per_rank

        if not cfg.num_threads:
            torch.set_num_threads(threads_per_rank(cfg.tp))
        ranks = RankGroup.start(cfg)
        device = rank_device(device, 0)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    try:
        owned = loaded is None
        if loaded is None:
            path = cfg.model or default_model_path()
            loaded = load_model_files(path, progress=cfg.progress, gguf_weights=gguf_weights_mode(cfg, device))
        mc = loaded.config
        stack = build_model_and_cache(cfg, loaded, device, ranks.context if ranks else SINGLE,
                                      ranks.agree_min if ranks else None)
    except BaseException as e:
        if ranks is not None:
            ranks.failure = ranks.failure or f"rank 0 failed while loading: {e}"
            ranks.close()
        raise
    if owned:
        loaded.weights = {}  # the model holds what it needs; let the checkpoint tensors go
    max_model_len, num_blocks = stack.max_model_len, stack.num_blocks
    session_len = min(cfg.session_len or max_model_len, max_model_len)
    sampler = Sampler(mc.eos_token_ids, seed=cfg.seed)
    runner = ModelRunner(stack.model, stack.kv_cache, sampler, decode_graphs=stack.decode_graphs)
    runner.ranks = ranks
    if cfg.speculative_method == "draft":
        from lmrs.engine.draft_loading import build_drafter

        runner.drafter = build_drafter(cfg, loaded, num_blocks, max_model_len, device, sampler.generator,
                                       draft_loaded)
    core = _core.Core(
        num_blocks,
        vocab_size=mc.vocab_size,
        block_size=cfg.block_size,
        max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        max_embed_tokens_with_decodes=cfg.embed_tokens_with_decodes(),
        eos_token_ids=list(mc.eos_token_ids),
        max_model_len=max_model_len,
        enable_prefix_caching=cfg.enable_prefix_caching,
        max_sessions=cfg.max_sessions,
        session_idle_timeout_s=cfg.session_idle_timeout_s,
        num_speculative_tokens=cfg.core_num_speculative_tokens(),
        spec_max_decode_rows=cfg.spec_max_decode_rows,
        external_drafts=cfg.speculative_method == "draft",
    )
    return EngineParts(loaded, stack.model, runner, core, max_model_len, session_len, stack.dtype)


def model_display_name(cfg: EngineConfig, loaded: LoadedModel) -> str:
    if cfg.model is None:
        return "SmolLM2-135M-Instruct"
    from lmrs.models.hub import parse_model_id

    if not os.path.exists(os.path.expanduser(cfg.model)) and parse_model_id(cfg.model) is not None:
        return cfg.model  # a model id names itself, as in vLLM
    base = os.path.basename(os.path.normpath(cfg.model))
    return base[:-5] if base.endswith(".gguf") else base
