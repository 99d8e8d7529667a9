"""The offline engine: `lmrs.Engine`.

    from lmrs import Engine, SamplingParams
    engine = Engine("model.gguf", device="cpu", dtype="bfloat16")
    outs = engine.generate(["Tell me a joke", [1, 2, 3]], SamplingParams(temperature=0, max_tokens=48))
    outs[0].text, outs[0].token_ids, outs[0].finish_reason
    engine.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=32))

`generate` adds every prompt to the continuous batch at once and steps until all are done;
`embed` does the same with prefill-only embedding requests.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lmrs.engine.config import EngineConfig
from lmrs.engine.llm_engine import LLMEngine
from lmrs.engine.outputs import OFFLINE_FINISH, CompletionOutput, RequestDelta, RequestOutput
from lmrs.engine.params import SamplingParams

Prompt = str | Sequence[int]


class Engine:
    """Load a model and run batches of prompts through the continuous batch.

    Args mirror `EngineConfig`: model (HF folder or .gguf; None = the embedded SmolLM2), device,
    dtype ("auto" | "float32" | "bfloat16" | "float16"), max_num_seqs, max_num_batched_tokens,
    block_size, num_blocks or kv_cache_memory, enable_prefix_caching, seed, tensor_parallel_size (or tp):
    N ranks as processes (`lmrs.parallel`; `close()` or the end of the process stops them), ...
    """

    def __init__(self, model: str | None = None, *, loaded=None, draft_loaded=None, **kwargs: Any):
        """`loaded`: model files already loaded with `lmrs.models.loader.load_model_files` (skips loading);
        `draft_loaded`: the same for the draft model of speculative decoding (implies it)."""
        from lmrs.engine.loading import build_engine_parts

        if "tensor_parallel_size" in kwargs:  # vLLM's name for EngineConfig.tp
            kwargs["tp"] = kwargs.pop("tensor_parallel_size")
        if draft_loaded is not None:
            kwargs.setdefault("speculative_model", draft_loaded.source)
        self.config = EngineConfig(model=model, **kwargs)
        self.engine = LLMEngine(self.config, parts=build_engine_parts(self.config, loaded, draft_loaded))
        self.tokenizer = self.engine.tokenizer
        self._compiler = None

    @property
    def core(self):
        return self.engine.core

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=self.tokenizer.add_bos_token)
        return [int(t) for t in prompt]

    @property
    def grammar_compiler(self):
        """The model's `lmrs.structured.GrammarCompiler` (built on first use)."""
        if self._compiler is None:
            from lmrs.structured import GrammarCompiler

            info = self.engine.model_info
            self._compiler = GrammarCompiler.for_tokenizer(self.tokenizer, vocab_size=info.vocab_size,
                                                           eos_token_ids=list(info.eos_token_ids))
        return self._compiler

    def generate(self, prompts: Prompt | Sequence[Prompt], sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, use_tqdm: bool = False, grammar=None) -> list[RequestOutput]:
        """Generate for every prompt (strings or token-id lists), all in one continuous batch.
        `grammar`: a `lmrs.structured.GrammarSpec` (e.g. `json_schema_spec(schema, "schema")`) or a
        compiled grammar every output must follow (each prompt gets its own matcher)."""
        if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = list(sampling_params) if isinstance(sampling_params, Sequence) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params)} sampling params")
        encoded = [self.encode(p) for p in prompts]
        proc = self.engine.processor
        field = "prompt" if len(prompts) == 1 else "prompts[{}]"
        if grammar is not None and not hasattr(grammar, "matcher"):
            grammar = self.grammar_compiler.compile(grammar)
        requests = [proc.generate(enc, sp, field=field.format(i), grammar=grammar)
                    for i, (enc, sp) in enumerate(zip(encoded, params))]
        ids = self._add_all(requests)
        return self._run(ids, prompts, encoded, use_tqdm)

    def _add_all(self, requests) -> list[int]:
        ids = []
        try:
            for r in requests:
                ids.append(self.engine.add(r))
        except Exception:
            for rid in ids:
                self.engine.abort_request(rid)
            raise
        return ids

    def chat(self, messages, sampling_params: SamplingParams | None = None, **kw) -> RequestOutput | list[RequestOutput]:
        """Apply the model's chat template to one conversation (a list of {role, content}) or to a
        list of conversations, then generate."""
        single = bool(messages) and isinstance(messages[0], dict)
        convs = [messages] if single else list(messages)
        token_lists = [self.tokenizer.encode_chat(c, add_generation_prompt=True) for c in convs]
        outs = self.generate(token_lists, sampling_params, **kw)
        return outs[0] if single else outs

    def embed(self, inputs: str | Sequence[str]) -> np.ndarray:
        """Embeddings (float32 [n, hidden], unit norm) of one text or a list of texts: the
        final hidden states mean-pooled, computed as prefill-only requests of the batch."""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        proc = self.engine.processor
        ids = self._add_all([proc.embedding(self.encode(t), f"inputs[{i}]") for i, t in enumerate(texts)])
        pending, vectors = set(ids), {}
        while pending:
            for d in self.engine.step():
                if d.request_id in pending and d.finished:
                    if d.embedding is None:
                        raise RuntimeError(f"embedding {ids.index(d.request_id)} failed: {d.error}")
                    vectors[d.request_id] = d.embedding
                    pending.discard(d.request_id)
        return np.stack([vectors[i] for i in ids])

    def _run(self, ids, prompts, encoded, use_tqdm) -> list[RequestOutput]:
        pending = set(ids)
        tokens: dict[int, list[int]] = {i: [] for i in ids}
        texts: dict[int, list[str]] = {i: [] for i in ids}
        final: dict[int, RequestDelta] = {}
        lps: dict[int, list] = {i: [] for i in ids}
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="generate", unit="req")
        while pending:
            for d in self.engine.step():
                if d.request_id not in pending:
                    continue
                tokens[d.request_id].extend(d.token_ids)
                texts[d.request_id].append(d.text)
                if d.logprobs:
                    lps[d.request_id].extend(d.logprobs)
                if d.finished:
                    final[d.request_id] = d
                    pending.discard(d.request_id)
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        outs = []
        for rid, prompt, enc in zip(ids, prompts, encoded):
            d = final[rid]
            comp = CompletionOutput(0, "".join(texts[rid]), tokens[rid], OFFLINE_FINISH[d.finish_reason],
                                    logprobs=lps[rid] or None)
            outs.append(RequestOutput(rid, prompt if isinstance(prompt, str) else None, enc, [comp], True,
                                      num_cached_tokens=d.num_cached_tokens, error=d.error))
        return outs

    def stats(self) -> dict:
        return self.engine.stats()

    def close(self) -> None:
        """Stop the tensor-parallel worker ranks (they also stop when the process exits)."""
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
