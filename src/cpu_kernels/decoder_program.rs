//! A whole decoder forward pass as one call: the layers' kernels run back to back from Rust.
//!
//! A small model's decode step on the CPU is ~300 kernel calls (9 per layer); driven from Python
//! each costs 5-8 us of wrapper work beside the kernel (shape checks, output allocation, the
//! call itself), a third of a one-row step of SmolLM2-135M. A `DecoderProgram` holds what those
//! calls take that does not change between steps (weight, norm, rotary-table and KV-cache
//! addresses, the shapes) and runs the same kernels in the same order with the same arguments as
//! the Python blocks do (`PreNormBlock` with a RoPE `SelfAttention` and a SiLU `GatedMLP` over
//! GGUF weights kept quantized), so its results are bit for bit theirs.
//!
//! Per layer: h = norm(residual (+= previous delta)) -> qkv = h @ Wqkv -> RoPE on q, k rotated and
//! v into the paged cache -> paged attention -> delta = attn @ Wo -> h = norm(residual += delta)
//! -> gate_up = h @ Wgu -> act = silu(gate) * up -> delta = act @ Wdown; after the last layer the
//! final norm of residual += delta is the float32 output.

use std::cell::RefCell;

use super::activation::{gated_act_and_mul, GateAct, GatedActArgs};
use super::attention::{paged_attention, AttnArgs};
use super::gguf_layout::{packed_bytes, GgufType};
use super::gguf_matmul::{gguf_matmul, GgufMatmulArgs};
use super::norm::{rms_norm, NormArgs};
use super::rope::{rotary_embedding, CacheArgs, RopeArgs};
use super::DType;

/// One run of rows of a projection's weight: a tiled GGUF weight of one type.
#[derive(Clone, Copy, Debug)]
pub struct WeightSegment {
    pub ty: GgufType,
    /// output features this segment computes (its rows)
    pub rows: usize,
    /// the tiled weight [rows, in_features]
    pub packed: usize,
    /// float32 [rows] added to its outputs (0: none)
    pub bias: usize,
}

/// A projection y = x @ W.T (+ b) whose weight is one or more segments side by side in the output.
#[derive(Clone, Debug)]
pub struct ProgramLinear {
    pub in_features: usize,
    pub out_features: usize,
    pub segments: Vec<WeightSegment>,
}

impl ProgramLinear {
    /// Check the segments against the shape (`packed_lens`: each segment's buffer length).
    pub fn new(
        in_features: usize,
        out_features: usize,
        segments: Vec<WeightSegment>,
        packed_lens: &[usize],
        what: &str,
    ) -> Result<ProgramLinear, String> {
        if segments.is_empty() {
            return Err(format!("{what}: no weight segments"));
        }
        let mut rows = 0;
        for (s, &len) in segments.iter().zip(packed_lens) {
            let want = packed_bytes(s.ty, s.rows, in_features)?;
            if len != want || s.packed == 0 {
                return Err(format!(
                    "{what}: a {} [{}, {in_features}] segment needs {want} packed bytes, got {len}",
                    s.ty.name(),
                    s.rows
                ));
            }
            rows += s.rows;
        }
        if rows != out_features {
            return Err(format!(
                "{what}: segments hold {rows} outputs, the layer needs {out_features}"
            ));
        }
        Ok(ProgramLinear {
            in_features,
            out_features,
            segments,
        })
    }

    /// out [m, out_features] (dtype `dt`, row stride out_features) = x [m, in_features] @ W.T.
    unsafe fn run(
        &self,
        m: usize,
        x: usize,
        out: usize,
        dt: DType,
        threads: usize,
    ) -> Result<(), String> {
        let mut col = 0;
        for s in &self.segments {
            gguf_matmul(&GgufMatmulArgs {
                ty: s.ty,
                m,
                n: s.rows,
                k: self.in_features,
                x,
                x_stride: self.in_features,
                x_dtype: dt,
                out: out + col * dt.size(),
                out_stride: self.out_features,
                out_dtype: dt,
                packed: s.packed,
                bias: s.bias,
                threads,
            })?;
            col += s.rows;
        }
        Ok(())
    }
}

/// One decoder layer's fixed operands.
#[derive(Clone, Debug)]
pub struct ProgramLayer {
    /// float32 [hidden] weights and epsilons of the two norms
    pub input_norm: usize,
    pub input_eps: f32,
    pub post_attention_norm: usize,
    pub post_attention_eps: f32,
    pub qkv: ProgramLinear,
    pub o: ProgramLinear,
    pub gate_up: ProgramLinear,
    pub down: ProgramLinear,
    /// float32 [max_positions, head_dim] (cos | sin) of this layer's RoPE
    pub cos_sin: usize,
    pub max_positions: usize,
    pub is_neox: bool,
    /// this layer's paged caches [num_blocks, block_size, kv_heads, head_dim]
    pub k_cache: usize,
    pub v_cache: usize,
}

/// The shapes every layer shares.
#[derive(Clone, Copy, Debug)]
pub struct ProgramShape {
    pub hidden: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// I: the gated MLP's intermediate width
    pub inter: usize,
    /// attention scale (multiplies q.k)
    pub scale: f32,
    pub cache_dtype: DType,
    pub num_blocks: usize,
    pub block_size: usize,
}

/// The per-step operands: the rows of this step and their attention metadata (int32 arrays).
#[derive(Clone, Copy, Debug)]
pub struct ProgramStep {
    pub tokens: usize,
    /// dtype of the activations between the kernels (float32 or 16-bit); the residual is float32
    pub compute: DType,
    /// float32 [tokens, hidden]: the embeddings in, the residual stream (updated in place)
    pub residual: usize,
    /// float32 [tokens, hidden]: the final norm's output
    pub out: usize,
    pub positions: usize,
    pub slots: usize,
    pub block_table: usize,
    pub bt_stride: usize,
    pub max_blocks: usize,
    pub seq_lens: usize,
    pub query_start_loc: usize,
    /// sequences in the step (rows of the block table)
    pub rows: usize,
    pub threads: usize,
}

/// A decoder's layers and final norm, ready to run steps.
#[derive(Clone, Debug)]
pub struct DecoderProgram {
    pub shape: ProgramShape,
    pub layers: Vec<ProgramLayer>,
    /// float32 [hidden] weight and epsilon of the final norm
    pub final_norm: usize,
    pub final_eps: f32,
}

thread_local! {
    /// Scratch activations of the running thread's steps (grown, never shrunk).
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Bytes rounded up to whole cache lines.
fn lines(bytes: usize) -> usize {
    bytes.div_ceil(64) * 64
}

impl DecoderProgram {
    /// Check a layer against the shape before it is added.
    pub fn check_layer(&self, l: &ProgramLayer) -> Result<(), String> {
        let s = &self.shape;
        let q = s.q_heads * s.head_dim;
        let kv = s.kv_heads * s.head_dim;
        let want = [
            ("qkv", &l.qkv, s.hidden, q + 2 * kv),
            ("o", &l.o, q, s.hidden),
            ("gate_up", &l.gate_up, s.hidden, 2 * s.inter),
            ("down", &l.down, s.inter, s.hidden),
        ];
        for (name, lin, i, o) in want {
            if lin.in_features != i || lin.out_features != o {
                return Err(format!(
                    "{name} projection is [{}, {}], the shape needs [{o}, {i}]",
                    lin.out_features, lin.in_features
                ));
            }
        }
        if l.input_norm == 0
            || l.post_attention_norm == 0
            || l.cos_sin == 0
            || l.k_cache == 0
            || l.v_cache == 0
        {
            return Err("a layer operand is a null pointer".into());
        }
        Ok(())
    }

    /// Run one step: every layer, then the final norm into `st.out`.
    ///
    /// # Safety
    /// Every address of the program must still hold what it was built with; the step's addresses
    /// must hold the tensors `st` describes; nothing else may write them during the call.
    pub unsafe fn run(&self, st: &ProgramStep) -> Result<(), String> {
        let t = st.tokens;
        if t == 0 {
            return Ok(());
        }
        let s = &self.shape;
        let e = st.compute.size();
        let q = s.q_heads * s.head_dim;
        let kv = s.kv_heads * s.head_dim;
        let widths = [s.hidden, q + 2 * kv, q, s.hidden, 2 * s.inter, s.inter];
        let sizes: Vec<usize> = widths.iter().map(|w| lines(t * w * e)).collect();
        let total: usize = sizes.iter().sum();
        SCRATCH.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() * 8 < total + 64 {
                buf.resize((total + 64).div_ceil(8), 0);
            }
            let base = lines(buf.as_mut_ptr() as usize);
            let mut at = [0usize; 6];
            let mut off = base;
            for (a, sz) in at.iter_mut().zip(&sizes) {
                *a = off;
                off += sz;
            }
            let [h, qkv, attn, delta, gu, act] = at;
            for (i, l) in self.layers.iter().enumerate() {
                let added = if i == 0 { 0 } else { delta };
                self.norm(st, added, l.input_norm, l.input_eps, h, st.compute)?;
                l.qkv.run(t, h, qkv, st.compute, st.threads)?;
                self.rope_and_cache(st, l, qkv)?;
                self.attention(st, l, qkv, attn)?;
                l.o.run(t, attn, delta, st.compute, st.threads)?;
                self.norm(
                    st,
                    delta,
                    l.post_attention_norm,
                    l.post_attention_eps,
                    h,
                    st.compute,
                )?;
                l.gate_up.run(t, h, gu, st.compute, st.threads)?;
                gated_act_and_mul(&GatedActArgs {
                    act: GateAct::Silu,
                    rows: t,
                    inter: s.inter,
                    x: gu,
                    x_stride: 2 * s.inter,
                    out: act,
                    out_stride: s.inter,
                    dtype: st.compute,
                    threads: st.threads,
                })?;
                l.down.run(t, act, delta, st.compute, st.threads)?;
            }
            let added = if self.layers.is_empty() { 0 } else { delta };
            self.norm(
                st,
                added,
                self.final_norm,
                self.final_eps,
                st.out,
                DType::F32,
            )
        })
    }

    /// out = norm(residual) with residual += added first (added: 0 for none, else [t, hidden] in
    /// the compute dtype).
    unsafe fn norm(
        &self,
        st: &ProgramStep,
        added: usize,
        weight: usize,
        eps: f32,
        out: usize,
        out_dtype: DType,
    ) -> Result<(), String> {
        let hsz = self.shape.hidden;
        let (x, x_dtype, residual) = if added == 0 {
            (st.residual, DType::F32, 0)
        } else {
            (added, st.compute, st.residual)
        };
        rms_norm(&NormArgs {
            rows: st.tokens,
            hidden: hsz,
            x,
            x_stride: hsz,
            x_dtype,
            residual,
            residual_stride: hsz,
            weight,
            weight_dtype: DType::F32,
            out,
            out_stride: hsz,
            out_dtype,
            eps,
            threads: st.threads,
        })
    }

    /// RoPE on q in place; k rotated and v into this layer's cache at the step's slots.
    unsafe fn rope_and_cache(
        &self,
        st: &ProgramStep,
        l: &ProgramLayer,
        qkv: usize,
    ) -> Result<(), String> {
        let s = &self.shape;
        let (q, kv) = (s.q_heads * s.head_dim, s.kv_heads * s.head_dim);
        let row = q + 2 * kv;
        let e = st.compute.size();
        rotary_embedding(&RopeArgs {
            tokens: st.tokens,
            head_dim: s.head_dim,
            rotary_dim: s.head_dim,
            is_neox: l.is_neox,
            dtype: st.compute,
            positions: st.positions,
            cos_sin: l.cos_sin,
            max_positions: l.max_positions,
            q: qkv,
            q_stride: row,
            q_heads: s.q_heads,
            k: qkv + q * e,
            k_stride: row,
            k_heads: s.kv_heads,
            cache: Some(CacheArgs {
                v: qkv + (q + kv) * e,
                v_stride: row,
                slots: st.slots,
                k_cache: l.k_cache,
                v_cache: l.v_cache,
                num_slots: s.num_blocks * s.block_size,
                dtype: s.cache_dtype,
            }),
            threads: st.threads,
        })
    }

    /// Paged attention of the step's q (the first columns of qkv) into attn [t, q_heads * D].
    unsafe fn attention(
        &self,
        st: &ProgramStep,
        l: &ProgramLayer,
        qkv: usize,
        attn: usize,
    ) -> Result<(), String> {
        let s = &self.shape;
        let (q, kv) = (s.q_heads * s.head_dim, s.kv_heads * s.head_dim);
        paged_attention(&AttnArgs {
            dtype: st.compute,
            cache_dtype: s.cache_dtype,
            num_tokens: st.tokens,
            q: qkv,
            q_stride: q + 2 * kv,
            out: attn,
            out_stride: q,
            q_heads: s.q_heads,
            kv_heads: s.kv_heads,
            head_dim: s.head_dim,
            k_cache: l.k_cache,
            v_cache: l.v_cache,
            num_blocks: s.num_blocks,
            block_size: s.block_size,
            block_table: st.block_table,
            bt_stride: st.bt_stride,
            max_blocks: st.max_blocks,
            seq_lens: st.seq_lens,
            query_start_loc: st.query_start_loc,
            rows: st.rows,
            scale: s.scale,
            sliding_window: 0,
            soft_cap: 0.0,
            threads: st.threads,
        })
    }
}
