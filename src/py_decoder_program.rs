//! `lmrs._core.CpuDecoderProgram`: a decoder's forward pass as one call from Python (see
//! `cpu_kernels::decoder_program`). Built once per model and KV cache by
//! `lmrs.models.cpu_program`, which keeps the tensors whose addresses it holds alive.
//!
//! Addresses are `t.data_ptr()`, dtypes the codes of `lmrs.kernels.cpu` (0 = float32,
//! 1 = bfloat16, 2 = float16), weight types ggml codes; a bad argument raises ValueError.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::cpu_kernels::decoder_program::{
    DecoderProgram, ProgramLayer, ProgramLinear, ProgramShape, ProgramStep, WeightSegment,
};
use crate::cpu_kernels::gguf_layout::GgufType;
use crate::py_args::{checked, dtype, nonnull, run};

/// One weight segment from Python: (ggml type, rows, packed address, packed bytes, bias address or 0).
type SegmentTuple = (u32, usize, usize, usize, usize);

fn linear(
    in_features: usize,
    out_features: usize,
    segs: Vec<SegmentTuple>,
    what: &str,
) -> PyResult<ProgramLinear> {
    let mut segments = Vec::with_capacity(segs.len());
    let mut lens = Vec::with_capacity(segs.len());
    for (ty, rows, packed, len, bias) in segs {
        segments.push(WeightSegment {
            ty: checked(GgufType::from_ggml(ty))?,
            rows,
            packed,
            bias,
        });
        lens.push(len);
    }
    checked(ProgramLinear::new(
        in_features,
        out_features,
        segments,
        &lens,
        what,
    ))
}

/// A decoder's layers (PreNorm, RoPE attention, SiLU gated MLP, GGUF weights kept quantized) and
/// final norm; `run` computes a step's final hidden states.
#[pyclass(module = "lmrs._core")]
pub struct CpuDecoderProgram {
    /// the layers and shapes (plain addresses: the Python owner keeps the tensors alive)
    program: DecoderProgram,
}

#[pymethods]
impl CpuDecoderProgram {
    /// The shape every layer shares, the KV caches' layout and dtype, and the final norm.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        hidden: usize,
        q_heads: usize,
        kv_heads: usize,
        head_dim: usize,
        inter: usize,
        scale: f32,
        cache_dtype: u32,
        num_blocks: usize,
        block_size: usize,
        final_norm: usize,
        final_eps: f32,
    ) -> PyResult<Self> {
        if hidden == 0
            || q_heads == 0
            || kv_heads == 0
            || head_dim == 0
            || inter == 0
            || !q_heads.is_multiple_of(kv_heads)
        {
            return Err(PyValueError::new_err(format!(
                "bad decoder shape: hidden {hidden}, heads {q_heads} / {kv_heads}, head_dim {head_dim}, inter {inter}"
            )));
        }
        let shape = ProgramShape {
            hidden,
            q_heads,
            kv_heads,
            head_dim,
            inter,
            scale,
            cache_dtype: dtype(cache_dtype)?,
            num_blocks,
            block_size,
        };
        Ok(CpuDecoderProgram {
            program: DecoderProgram {
                shape,
                layers: Vec::new(),
                final_norm: nonnull(final_norm, "final_norm")?,
                final_eps,
            },
        })
    }

    /// Append a layer: its norms' weights (float32 [hidden]) and epsilons, its four projections as
    /// lists of segments (ggml type, rows, packed address, packed bytes, bias address or 0), its
    /// RoPE table (float32 [max_positions, head_dim]) and its KV caches.
    #[allow(clippy::too_many_arguments)]
    fn add_layer(
        &mut self,
        input_norm: usize,
        input_eps: f32,
        post_attention_norm: usize,
        post_attention_eps: f32,
        qkv: Vec<SegmentTuple>,
        o: Vec<SegmentTuple>,
        gate_up: Vec<SegmentTuple>,
        down: Vec<SegmentTuple>,
        cos_sin: usize,
        max_positions: usize,
        is_neox: bool,
        k_cache: usize,
        v_cache: usize,
    ) -> PyResult<()> {
        let s = self.program.shape;
        let (q, kv) = (s.q_heads * s.head_dim, s.kv_heads * s.head_dim);
        let layer = ProgramLayer {
            input_norm,
            input_eps,
            post_attention_norm,
            post_attention_eps,
            qkv: linear(s.hidden, q + 2 * kv, qkv, "qkv")?,
            o: linear(q, s.hidden, o, "o")?,
            gate_up: linear(s.hidden, 2 * s.inter, gate_up, "gate_up")?,
            down: linear(s.inter, s.hidden, down, "down")?,
            cos_sin,
            max_positions,
            is_neox,
            k_cache,
            v_cache,
        };
        checked(self.program.check_layer(&layer))?;
        self.program.layers.push(layer);
        Ok(())
    }

    /// Layers added so far.
    #[getter]
    fn num_layers(&self) -> usize {
        self.program.layers.len()
    }

    /// One step: `residual` (float32 [tokens, hidden], the embeddings; updated in place) through
    /// every layer, the final norm into `out` (float32 [tokens, hidden]). The metadata are int32
    /// arrays: positions and slots [tokens], block table [rows, >= max_blocks] at `bt_stride`,
    /// seq_lens [rows], query_start_loc [rows + 1]. `compute_dtype`: the activations' dtype
    /// between kernels (float32, or the KV cache's 16-bit dtype).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        tokens: usize,
        compute_dtype: u32,
        residual: usize,
        out: usize,
        positions: usize,
        slots: usize,
        block_table: usize,
        bt_stride: usize,
        max_blocks: usize,
        seq_lens: usize,
        query_start_loc: usize,
        rows: usize,
        threads: usize,
    ) -> PyResult<()> {
        if tokens == 0 {
            return Ok(());
        }
        let compute = dtype(compute_dtype)?;
        if compute != crate::cpu_kernels::DType::F32 && compute != self.program.shape.cache_dtype {
            return Err(PyValueError::new_err(
                "compute_dtype must be float32 or the KV cache's dtype",
            ));
        }
        let st = ProgramStep {
            tokens,
            compute,
            residual: nonnull(residual, "residual")?,
            out: nonnull(out, "out")?,
            positions: nonnull(positions, "positions")?,
            slots: nonnull(slots, "slot_mapping")?,
            block_table: nonnull(block_table, "block_table")?,
            bt_stride,
            max_blocks,
            seq_lens: nonnull(seq_lens, "seq_lens")?,
            query_start_loc: nonnull(query_start_loc, "query_start_loc")?,
            rows,
            threads,
        };
        let program = &self.program;
        run(py, move || unsafe { program.run(&st) })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CpuDecoderProgram>()
}
