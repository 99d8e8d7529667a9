"""GGUF-quantized weights kept quantized on the CPU: one copy of each weight, in its GGUF bits.

- :class:`QuantizedTensor`: a 2-D (or stacked, e.g. [experts, out, in]) weight of one GGUF type (Q4_0, Q4_1,
  Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), repacked at load from the file's block bytes into the tiled layout of
  the Rust kernels (`src/cpu_kernels/gguf_layout.rs`: the same bits, 16 output rows per tile; Q4_K/Q5_K take
  1.03x the file's bytes, the others 1.0x). It dequantizes exactly (bit for bit as ``gguf.quants.dequantize``),
  reorders rows (the llama q/k un-permute), concatenates rows (fused q/k/v, gate/up) and multiplies.
- :class:`QuantizedLinear`: the interface of ``models.linear.Linear`` (``__call__`` for any number of rows,
  ``accepts_float32``, ``out_features``, ``bias``, ``prepack``, ``source``) over one or more row segments, so
  a fused projection may mix types (a K-quant mix stores ``attn_v`` in Q6_K and ``attn_q`` in Q4_K).
- :class:`QuantizedEmbedding`: the embedding lookup (exact float32 rows), the output head's logits from the
  same table (tied embeddings: one copy serves both) and the float32 refinement of each row's top logits
  from exactly dequantized rows (``refine_top_logits`` without a float32 copy of the table).

Products take float32, bfloat16 or float16 activations and accumulate in float32; see
``src/cpu_kernels/gguf_matmul.rs`` for the kernels (streaming for <= 8 rows, decoded panels beyond). On CPUs
with AMX, bfloat16 products of more rows dequantize chunks of the weight into a small reused bfloat16 scratch
(``src/cpu_kernels/gguf_dequant_bf16.rs``) and run torch's (oneDNN's) bfloat16 GEMM on it: see
:mod:`lmrs.models.quantized_dense_gemm`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from lmrs import _core
from lmrs.kernels import cpu as _cpu
from lmrs.models import quantized_dense_gemm as _dense

__all__ = ["QuantizedTensor", "QuantizedLinear", "QuantizedEmbedding", "KEPT_QUANTIZED", "ggml_type", "prefers_float32",
           "keeps_quantized", "weight_nbytes"]

_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _type_names() -> dict[int, str]:
    from gguf import GGMLQuantizationType

    return {int(c): GGMLQuantizationType(c).name for c in _core.cpu_gguf_types()}


#: ggml type code -> name, for the types kept quantized
KEPT_QUANTIZED: dict[int, str] = _type_names()


def ggml_type(qtype) -> int:
    """The ggml type code of `qtype` (a ``gguf.GGMLQuantizationType``, its name or its code); ValueError
    for types that are not kept quantized."""
    if isinstance(qtype, str):
        from gguf import GGMLQuantizationType

        try:
            qtype = GGMLQuantizationType[qtype.upper()]
        except KeyError:
            raise ValueError(f"unknown GGML type {qtype!r}") from None
    code = int(qtype)
    if code not in KEPT_QUANTIZED:
        from gguf import GGMLQuantizationType

        try:
            name = GGMLQuantizationType(code).name
        except ValueError:
            name = str(code)
        raise ValueError(f"GGML type {name} is not kept quantized (supported: {', '.join(KEPT_QUANTIZED.values())})")
    return code


def _int64(ids) -> torch.Tensor:
    t = torch.as_tensor(ids)
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"row indices must be integers, got {t.dtype}")
    return t.reshape(-1).to(torch.int64).contiguous()


def _rows2d(x: torch.Tensor, k: int) -> torch.Tensor:
    """x [..., k] as a CPU [rows, k] tensor with unit stride along k and a kernel dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"quantized products run on the CPU; got a tensor on {x.device}")
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"expected activations with {k} features in the last dimension, got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPE_CODE:
        x = x.float()
    x2 = x.reshape(-1, k)
    if k > 1 and x2.stride(1) != 1:
        x2 = x2.contiguous()
    return x2


class QuantizedTensor:
    """A GGUF-quantized weight [..., out, in] in the kernels' tiled layout (see the module docstring)."""

    __slots__ = ("qtype", "shape", "packed", "rows", "_addr")

    def __init__(self, qtype, shape: Sequence[int], packed: torch.Tensor):
        self.qtype = ggml_type(qtype)  #: ggml type code
        self.shape = tuple(int(s) for s in shape)  #: logical shape, torch order (rows..., in)
        if len(self.shape) < 2:
            raise ValueError(f"a quantized weight needs at least 2 dimensions, got shape {self.shape}")
        self.rows = math.prod(self.shape[:-1])  #: rows of the flattened [rows, in] matrix (out, or experts * out)
        want = _core.cpu_gguf_packed_bytes(self.qtype, self.rows, self.in_features)
        if packed.dtype != torch.uint8 or packed.numel() != want or not packed.is_contiguous():
            raise ValueError(f"packed buffer for a {self.type_name} {self.shape} weight must be {want} contiguous bytes")
        self.packed = packed  #: uint8 [packed bytes], the tiled layout
        self._addr = packed.data_ptr()

    # ---- construction
    @classmethod
    def from_gguf_bytes(cls, data, qtype, shape: Sequence[int]) -> "QuantizedTensor":
        """Repack the GGUF block bytes of a tensor of logical `shape` (torch order: [..., out, in]) without
        materialising any float weight. `data`: a numpy array (e.g. a ``gguf`` ReaderTensor's memory-mapped
        ``data``), bytes or a uint8 torch tensor holding exactly the tensor's bytes."""
        code = ggml_type(qtype)
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or any(s <= 0 for s in shape):
            raise ValueError(f"cannot keep a tensor of shape {shape} quantized (needs >= 2 positive dimensions)")
        rows, k = math.prod(shape[:-1]), shape[-1]
        name = KEPT_QUANTIZED[code]
        try:
            row_bytes = _core.cpu_gguf_row_bytes(code, k)
        except ValueError as e:
            raise ValueError(f"a {name} tensor of shape {shape}: {e}") from None
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().contiguous().view(torch.uint8).numpy()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            data = np.frombuffer(data, dtype=np.uint8)
        arr = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if arr.nbytes != rows * row_bytes:
            raise ValueError(f"a {name} tensor of shape {shape} has {rows * row_bytes} bytes, got {arr.nbytes}")
        packed = torch.empty(_core.cpu_gguf_packed_bytes(code, rows, k), dtype=torch.uint8)
        _core.cpu_gguf_pack(code, arr.ctypes.data, arr.nbytes, rows, k, packed.data_ptr(), packed.numel(),
                            _cpu.THREADS)
        return cls(code, shape, packed)

    @classmethod
    def from_reader_tensor(cls, t) -> "QuantizedTensor":
        """From a ``gguf.GGUFReader`` tensor (its memory-mapped block bytes; GGUF lists dimensions innermost
        first, the result has torch order [..., out, in])."""
        return cls.from_gguf_bytes(t.data, t.tensor_type, tuple(int(d) for d in reversed(t.shape.tolist())))

    @classmethod
    def quantize(cls, w: torch.Tensor, qtype) -> "QuantizedTensor":
        """Quantize a float weight [..., out, in] with ``gguf.quants.quantize`` (types it implements: Q4_0,
        Q4_1, Q5_0, Q5_1, Q8_0) and keep it quantized. For tests and for checkpoints stored in float."""
        import gguf

        code = ggml_type(qtype)
        arr = w.detach().float().cpu().numpy()
        raw = gguf.quants.quantize(arr, gguf.GGMLQuantizationType(code))
        return cls.from_gguf_bytes(raw, code, arr.shape)

    # ---- properties
    @property
    def type_name(self) -> str:
        return KEPT_QUANTIZED[self.qtype]

    @property
    def in_features(self) -> int:
        return self.shape[-1]

    @property
    def out_features(self) -> int:
        return self.shape[-2]

    @property
    def nbytes(self) -> int:
        """Bytes held (the packed buffer)."""
        return self.packed.numel()

    def __repr__(self) -> str:
        return f"QuantizedTensor({self.type_name}, shape={self.shape}, nbytes={self.nbytes})"

    # ---- conversions
    def dequantize(self) -> torch.Tensor:
        """The float32 weight of shape `shape`, exactly as ``gguf.quants.dequantize`` gives it."""
        return self.dequantize_rows(torch.arange(self.rows)).view(self.shape)

    def dequantize_rows(self, ids) -> torch.Tensor:
        """float32 [len(ids), in]: rows `ids` of the flattened weight, exactly."""
        ids = _int64(ids)
        out = torch.empty((ids.numel(), self.in_features), dtype=torch.float32)
        if ids.numel():
            _core.cpu_gguf_dequantize_rows(self.qtype, self.packed.data_ptr(), self.nbytes, self.rows,
                                           self.in_features, ids.data_ptr(), ids.numel(), out.data_ptr(),
                                           self.in_features, _cpu.THREADS)
        return out

    def to_gguf_bytes(self) -> np.ndarray:
        """The tensor's GGUF block bytes, uint8 [rows, row bytes] (what it was built from, bit for bit)."""
        ids = torch.arange(self.rows, dtype=torch.int64)
        out = np.empty((self.rows, _core.cpu_gguf_row_bytes(self.qtype, self.in_features)), dtype=np.uint8)
        _core.cpu_gguf_unpack_rows(self.qtype, self.packed.data_ptr(), self.nbytes, self.rows, self.in_features,
                                   ids.data_ptr(), ids.numel(), out.ctypes.data, out.nbytes)
        return out

    def __getitem__(self, index: int) -> "QuantizedTensor":
        """Matrix `index` of a stacked [n, out, in] weight (one expert), as a 2-D weight (a copy of its rows)."""
        if len(self.shape) != 3 or not isinstance(index, int):
            raise TypeError(f"only a stacked [n, out, in] weight can be indexed by an int, this one is {self.shape}")
        n, out = self.shape[0], self.shape[1]
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} stacked matrices")
        index %= n
        return self.select_rows(index * out, (index + 1) * out)

    def take_rows(self, ids) -> "QuantizedTensor":
        """A new 2-D weight whose row i is row ids[i] of this one (flattened rows)."""
        ids = _int64(ids)
        if ids.numel() == 0:
            raise ValueError("take_rows needs at least one row")
        n = ids.numel()
        packed = torch.zeros(_core.cpu_gguf_packed_bytes(self.qtype, n, self.in_features), dtype=torch.uint8)
        _core.cpu_gguf_copy_rows(self.qtype, self.in_features, self.packed.data_ptr(), self.nbytes, self.rows,
                                 ids.data_ptr(), n, packed.data_ptr(), packed.numel(), n, 0)
        return QuantizedTensor(self.qtype, (n, self.in_features), packed)

    def permute_rows(self, order) -> "QuantizedTensor":
        """Rows reordered: row i of the result is row order[i] (order: a permutation of the rows)."""
        order = _int64(order)
        if order.numel() != self.rows or not torch.equal(torch.sort(order).values, torch.arange(self.rows)):
            raise ValueError(f"row order must be a permutation of {self.rows} rows")
        return self.take_rows(order).reshape(self.shape)

    def select_rows(self, start: int, stop: int) -> "QuantizedTensor":
        """Rows [start, stop) of the flattened weight (an expert's slice, a tensor-parallel shard)."""
        if not 0 <= start < stop <= self.rows:
            raise ValueError(f"rows [{start}, {stop}) are not within the {self.rows} rows")
        return self.take_rows(torch.arange(start, stop))

    def reshape(self, shape: Sequence[int]) -> "QuantizedTensor":
        """The same rows under another logical shape with the same last dimension (no copy)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or shape[-1] != self.in_features or math.prod(shape[:-1]) != self.rows:
            raise ValueError(f"cannot view a {self.shape} weight as {shape}")
        return QuantizedTensor(self.qtype, shape, self.packed)

    @classmethod
    def concat_rows(cls, parts: Sequence["QuantizedTensor"]) -> "QuantizedTensor":
        """One 2-D weight with the rows of every part in order (all of one type and input width)."""
        parts = list(parts)
        if not parts:
            raise ValueError("concat_rows needs at least one part")
        p0 = parts[0]
        for p in parts[1:]:
            if p.qtype != p0.qtype or p.in_features != p0.in_features:
                raise ValueError(f"cannot concatenate a {p.type_name} [.., {p.in_features}] weight to a "
                                 f"{p0.type_name} [.., {p0.in_features}] one (use QuantizedLinear segments)")
        n = sum(p.rows for p in parts)
        packed = torch.zeros(_core.cpu_gguf_packed_bytes(p0.qtype, n, p0.in_features), dtype=torch.uint8)
        row0 = 0
        for p in parts:
            ids = torch.arange(p.rows, dtype=torch.int64)
            _core.cpu_gguf_copy_rows(p.qtype, p.in_features, p.packed.data_ptr(), p.nbytes, p.rows, ids.data_ptr(),
                                     p.rows, packed.data_ptr(), packed.numel(), n, row0)
            row0 += p.rows
        return cls(p0.qtype, (n, p0.in_features), packed)

    # ---- products
    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
               out: torch.Tensor | None = None, out_col: int = 0) -> torch.Tensor:
        """x [..., in] @ W.T (+ bias) with W the flattened [rows, in] weight; float32 accumulation. The result
        has x's dtype (float32 / bfloat16 / float16; other dtypes are computed as float32) unless `out_dtype`
        is given. With `out` ([m, N] with unit column stride), the result goes to its columns out_col.. instead."""
        k, n = self.shape[-1], self.rows
        # the common case first: a CPU [m, k] tensor with unit stride along k, no reshaping
        if not (x.dim() == 2 and x.is_cpu and x.shape[1] == k and x.dtype in _DTYPE_CODE
                and (k == 1 or x.stride(1) == 1)):
            shape = x.shape
            x = _rows2d(x, k)
            if out is None and len(shape) != 2:
                return self.matmul(x, bias, out_dtype).view(*shape[:-1], n)
        m = x.shape[0]
        if out is None:
            out = torch.empty((m, n), dtype=out_dtype or x.dtype)
        elif (out.dtype not in _DTYPE_CODE or out.dim() != 2 or out.shape[0] != m or out_col < 0
              or out_col + n > out.shape[1] or (out.shape[1] > 1 and out.stride(1) != 1)):
            raise ValueError(f"out must be a [{m}, >= {out_col + n}] tensor with unit column stride")
        bias_addr = 0
        if bias is not None:
            if bias.dtype != torch.float32 or not bias.is_contiguous() or bias.numel() != n:
                bias = bias.detach().float().contiguous().reshape(-1)
                if bias.numel() != n:
                    raise ValueError(f"bias has {bias.numel()} values for {n} outputs")
            bias_addr = bias.data_ptr()
        if m and x.dtype == torch.bfloat16 and out.dtype == torch.bfloat16 and _dense.dense_gemm_pays(m):
            _dense.matmul(self, x, bias, out, out_col)
        elif m:
            _core.cpu_gguf_matmul(self.qtype, m, n, k, x.data_ptr(), x.stride(0), _DTYPE_CODE[x.dtype],
                                  out.data_ptr() + out_col * out.element_size(), out.stride(0),
                                  _DTYPE_CODE[out.dtype], self._addr, bias_addr, _cpu.THREADS)
        return out


def keeps_quantized(dtype: torch.dtype, device) -> bool:
    """Whether a model in `dtype` on `device` runs GGUF-quantized weights as they are (the CPU in a 16-bit
    dtype); float32 is the exactness reference and dequantizes them, other devices get float copies."""
    return dtype != torch.float32 and torch.device(device).type == "cpu"


def weight_nbytes(w) -> int:
    """Bytes a weight holds: a QuantizedTensor's packed buffer or a tensor's elements."""
    return w.nbytes if isinstance(w, QuantizedTensor) else w.numel() * w.element_size()


#: rows up to which products stream the weight (memory-bound; float32 activations cost nothing extra)
STREAMING_ROWS = 8

_int8_now = [False]  # the Rust switch's state (set once per step)


def vnni_available() -> bool:
    """Whether this CPU runs the 8-bit activation products (AVX-512 with VNNI)."""
    return _core.cpu_has_avx512_vnni()


def set_int8_activations(on: bool) -> None:
    """Let the bfloat16 products of more than STREAMING_ROWS rows of 4-bit and Q8_0 weights round their
    activations to 8 bits and run on AVX512-VNNI (`gguf_gemm_i8.rs`: 1.4-1.9x the bfloat16 panels), or not.
    A process-wide switch of the Rust kernels (off by default), set by `DecoderModel.forward` for each step:
    on for decode steps of engines with `cpu_decode_activations="int8"`."""
    on = bool(on)
    if on != _int8_now[0]:
        _core.cpu_gguf_int8_activations(on)
        _int8_now[0] = on


def native_bf16() -> bool:
    """Whether the large-batch products have AVX512-BF16 (bfloat16 activations then run twice as fast as
    float32 ones); without it every product converts to float32 anyway."""
    return _core.cpu_kernels_isa() == "avx512bf16"


def prefers_float32(rows: int, eight_bit: bool = False) -> bool:
    """Whether float32 activations cost no more than bfloat16 ones in a product of `rows` rows: for one row
    (memory-bound), for streaming products without AVX512-BF16 or of 8-bit weights (`eight_bit`: Q8_0),
    and for larger ones unless AVX512-BF16 or the dense GEMM makes bfloat16 activations faster. With
    AVX512-BF16, 2 to 8 rows of a 4- to 6-bit weight stream it with `vdpbf16ps` (`gguf_gemv_bf16.rs`):
    2-2.3x the float32 kernel at 5-8 rows."""
    if rows <= 1:
        return True
    if rows <= STREAMING_ROWS:
        return eight_bit or not native_bf16()
    return not (native_bf16() or _dense.dense_gemm_pays(rows))


class QuantizedLinear:
    """y = x @ W.T (+ b) with W kept quantized: the ``models.linear.Linear`` interface over row segments."""

    def __init__(self, weight: QuantizedTensor | Sequence[QuantizedTensor], bias: torch.Tensor | None = None):
        parts = [weight] if isinstance(weight, QuantizedTensor) else list(weight)
        if not parts:
            raise ValueError("a QuantizedLinear needs at least one weight")
        parts = [p if len(p.shape) == 2 else p.reshape((p.rows, p.in_features)) for p in parts]
        k = parts[0].in_features
        if any(p.in_features != k for p in parts):
            raise ValueError(f"segments have different input widths: {[p.in_features for p in parts]}")
        # neighbouring segments of one type become one weight (one kernel call)
        groups: list[list[QuantizedTensor]] = []
        for p in parts:
            if groups and groups[-1][0].qtype == p.qtype:
                groups[-1].append(p)
            else:
                groups.append([p])
        self.segments = tuple(g[0] if len(g) == 1 else QuantizedTensor.concat_rows(g) for g in groups)
        self.in_features = k
        self.out_features = sum(s.rows for s in self.segments)
        if bias is not None:
            bias = bias.detach().float().contiguous().reshape(-1)
            if bias.numel() != self.out_features:
                raise ValueError(f"bias has {bias.numel()} values for {self.out_features} outputs")
        self.bias = bias
        self._bias_parts = []
        col = 0
        for s in self.segments:
            self._bias_parts.append(None if bias is None else bias[col: col + s.rows])
            col += s.rows
        self.source = None  # Linear's checkpoint copy: none, the quantized weight is the only copy
        # Q8_0 streams faster on float32 activations (`prefers_float32`)
        self._eight_bit = any(s.type_name == "Q8_0" for s in self.segments)

    def prepack(self) -> bool:
        """Nothing to prepack (the layout is built at load)."""
        return False

    def accepts_float32(self, rows: int) -> bool:
        """Whether a product of `rows` rows should take float32 activations (it returns float32 then): see
        :func:`prefers_float32`. Any dtype is accepted at any row count."""
        return prefers_float32(rows, self._eight_bit)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.segments)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] (the float32 reference path)."""
        return torch.cat([s.dequantize().view(s.rows, self.in_features) for s in self.segments])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.segments) == 1:
            return self.segments[0].matmul(x, self.bias)
        x2 = _rows2d(x, self.in_features)
        out = torch.empty((x2.shape[0], self.out_features), dtype=x2.dtype)
        col = 0
        for s, b in zip(self.segments, self._bias_parts):
            s.matmul(x2, b, out=out, out_col=col)
            col += s.rows
        return out.view(*x.shape[:-1], self.out_features)

    def __repr__(self) -> str:
        types = "+".join(s.type_name for s in self.segments)
        return f"QuantizedLinear({types}, in={self.in_features}, out={self.out_features})"


class QuantizedEmbedding:
    """An embedding table kept quantized: lookup, output-head logits and refinement from the one table."""

    def __init__(self, table: QuantizedTensor):
        if len(table.shape) != 2:
            raise ValueError(f"an embedding table is 2-D, got shape {table.shape}")
        self.table = table
        self._head = None

    @property
    def num_embeddings(self) -> int:
        return self.table.rows

    @property
    def embedding_dim(self) -> int:
        return self.table.in_features

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def __call__(self, ids) -> torch.Tensor:
        """float32 [*ids.shape, dim]: the rows of token ids, exactly (ValueError for ids out of range)."""
        t = torch.as_tensor(ids)
        flat = _int64(t)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            bad = int(flat.min()) if int(flat.min()) < 0 else int(flat.max())
            raise ValueError(f"token id {bad} is out of range for an embedding of {self.num_embeddings} rows")
        return self.table.dequantize_rows(flat).view(*t.shape, self.embedding_dim)

    def head(self) -> QuantizedLinear:
        """The output head over the same table (tied embeddings: no second copy)."""
        if self._head is None:
            self._head = QuantizedLinear(self.table)
        return self._head

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits [rows, vocab] = x @ E.T (x float32 or bfloat16 [rows, dim])."""
        return self.table.matmul(x, out_dtype=torch.float32)

    def refine_top_logits(self, logits: torch.Tensor, hidden: torch.Tensor, k: int) -> torch.Tensor:
        """In place: each row's `k` largest logits recomputed as hidden @ E[id] in float32 from exactly
        dequantized rows (bit for bit ``refine_top_logits`` over the float32 table); returns logits."""
        vocab, h = self.num_embeddings, self.embedding_dim
        if logits.dtype != torch.float32 or logits.dim() != 2 or logits.shape[1] != vocab or (
                vocab > 1 and logits.stride(1) != 1) or logits.device.type != "cpu":
            raise ValueError(f"logits must be a float32 CPU [rows, {vocab}] tensor with unit column stride")
        hidden = hidden.float()
        if hidden.dim() != 2 or hidden.shape != (logits.shape[0], h):
            raise ValueError(f"hidden must be [{logits.shape[0]}, {h}], got {tuple(hidden.shape)}")
        if h > 1 and hidden.stride(1) != 1:
            hidden = hidden.contiguous()
        if logits.shape[0] and k > 0:
            _core.cpu_gguf_refine_top_logits(self.table.qtype, logits.shape[0], vocab, h, logits.data_ptr(),
                                             logits.stride(0), hidden.data_ptr(), hidden.stride(0),
                                             self.table.packed.data_ptr(), int(k), _cpu.THREADS)
        return logits

    def __repr__(self) -> str:
        return f"QuantizedEmbedding({self.table.type_name}, {self.num_embeddings} x {self.embedding_dim})"
