"""EngineConfig: every knob of an engine, with defaults and validation in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    model: str | None = None  # HF folder, .gguf file; None = the embedded default (SmolLM2-135M-Instruct)
    device: str = "cpu"  # "cpu" or "cuda" ("cuda:N")
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    max_num_seqs: int = 64  # most sequences decoded together (--instance-num)
    max_num_batched_tokens: int = 2048  # most tokens computed in one step
    # most embedding tokens in a step that also runs generating requests (None: an eighth of
    # max_num_batched_tokens; 0: no separate limit), so a large embeddings call cannot stall streams
    max_embed_tokens_with_decodes: int | None = None
    block_size: int = 16
    num_blocks: int | None = None  # KV blocks; None: from kv_cache_memory
    kv_cache_memory: int | str | None = None  # bytes for the KV cache (CPU default 1 GiB)
    cache_max_entry_count: float = 0.5  # on CUDA: fraction of free GPU memory for the KV cache
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # the model's context length by default
    session_len: int | None = None  # most tokens one session may hold (default max_model_len)
    max_sessions: int = 10_000
    session_idle_timeout_s: float = 0.0  # 0: sessions never expire by time
    seed: int | None = None
    tp: int = 1  # tensor-parallel ranks (--tp; lmrs starts ranks 1..tp-1 as processes: lmrs.parallel)
    progress: bool = True
    # a GGUF's quantized weights on the CPU in 16 bits: "quantized" (kept as in the file, one copy)
    # or "dequantize" (dense 16-bit copies plus small-batch twins: several times the memory)
    gguf_weights: str = "quantized"
    quantize: str = "auto"  # weight-only quantization for small batches on the CPU: auto | none | int8
    num_threads: int | None = None  # torch CPU threads (default: all cores)
    # CPU, GGUF weights kept quantized, 16-bit: decode steps of more than 8 sequences round the activations of
    # 4-bit and Q8_0 products to 8 bits for AVX512-VNNI ("int8", as llama.cpp does for every product; a
    # 32-row step 1.25x faster) or keep them bfloat16 ("bfloat16"); prompts always compute in bfloat16
    cpu_decode_activations: str = "int8"
    cuda_graphs: bool = True  # on CUDA: replay captured graphs for decode steps (False: always eager)
    # speculative decoding: None (off), "ngram" (prompt lookup: drafts copied from the sequence's
    # own earlier tokens) or "draft" (a smaller model with the same tokenizer, `speculative_model`;
    # implied by a speculative_model)
    speculative_method: str | None = None
    num_speculative_tokens: int = 4  # drafts verified per decode row and step (with a method)
    speculative_model: str | None = None  # the draft model of method "draft"
    # speculation is off in a step with more running sequences than this (0: never off). Measured
    # on the Zen 4 CPU with the switch off (docs/benchmarks.md, speculative decoding): chat 0.98x
    # at 2 and 4 sequences, 0.95x (0.90-0.99) at 8; copying 1.4x at 2 and 4, 1.85x at 8
    spec_max_decode_rows: int = 4

    def core_num_speculative_tokens(self) -> int:
        """Drafts per decode row the core proposes (0: speculation off)."""
        return self.num_speculative_tokens if self.speculative_method else 0

    def embed_tokens_with_decodes(self) -> int:
        """The embedding share of a step that also decodes (0: no separate limit)."""
        if self.max_embed_tokens_with_decodes is not None:
            return self.max_embed_tokens_with_decodes
        return max(self.block_size, self.max_num_batched_tokens // 8)

    def validate(self) -> None:
        def positive(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "tp"):
            positive(name)
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two (16 or 32 are typical), got {self.block_size}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.gguf_weights not in ("quantized", "dequantize"):
            raise ValueError(f"gguf_weights must be 'quantized' or 'dequantize', got {self.gguf_weights!r}")
        if not (str(self.device) == "cpu" or str(self.device).startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        e = self.max_embed_tokens_with_decodes
        if e is not None and (not isinstance(e, int) or isinstance(e, bool) or e < 0):
            raise ValueError(f"max_embed_tokens_with_decodes must be a non-negative integer, got {e!r}")
        if self.num_blocks is not None and self.num_blocks < 2:
            raise ValueError(f"num_blocks must be at least 2, got {self.num_blocks}")
        if not 0 < self.cache_max_entry_count <= 1:
            raise ValueError(f"cache_max_entry_count must be in (0, 1], got {self.cache_max_entry_count}")
        if self.speculative_method not in (None, "ngram", "draft"):
            raise ValueError(f"speculative_method must be 'ngram' or 'draft', got {self.speculative_method!r}")
        if self.speculative_model is not None and self.speculative_method is None:
            self.speculative_method = "draft"
        if self.speculative_method == "draft" and not self.speculative_model:
            raise ValueError("speculative_method 'draft' needs speculative_model (the draft model's path)")
        if self.speculative_model is not None and self.speculative_method != "draft":
            raise ValueError("speculative_model (a draft model) and speculative_method 'ngram' are exclusive")
        if self.speculative_method == "draft" and self.tp > 1:
            raise ValueError("speculative_model (a draft model) is not supported with tensor parallelism (tp > 1)")
        k = self.num_speculative_tokens
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 16:
            raise ValueError(f"num_speculative_tokens must be an integer in [1, 16], got {k!r}")
        r = self.spec_max_decode_rows
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ValueError(f"spec_max_decode_rows must be a non-negative integer, got {r!r}")
        if self.cpu_decode_activations not in ("int8", "bfloat16"):
            raise ValueError(f"cpu_decode_activations must be 'int8' or 'bfloat16', got {self.cpu_decode_activations!r}")
        if self.quantize not in ("auto", "none", "int8"):
            raise ValueError(f"quantize must be auto, none or int8, got {self.quantize!r}")
