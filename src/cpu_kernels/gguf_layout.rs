//! GGUF quantized weights kept quantized: the formats, their GGUF block bytes and the tiled
//! layout the CPU products read.
//!
//! Supported GGUF types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (blocks of 32 values) and Q4_K, Q5_K, Q6_K
//! (super-blocks of 256). Every weight is `w = S * (q - zp)` (symmetric types) or `w = S * q + O`
//! (types with a minimum), with an unsigned code `q` (Q8_0: a signed byte, zp 0) and a scale `S`
//! and offset `O` per group of consecutive input features (32; 16 for Q6_K):
//! - Q4_0 / Q5_0 / Q8_0: S = d (zp 8 / 16 / 0); Q4_1 / Q5_1: S = d, O = m;
//! - Q4_K / Q5_K: S = d * sc[g], O = -(dmin * mn[g]) (sc, mn: 6-bit integers);
//! - Q6_K: S = d * sc[g] (sc: int8), zp 32.
//!
//! `S * (q - zp)` and `S * q` are exact in float32 (at most 24 significant bits), so one rounding
//! (of the `+ O`) is all there is, as in `gguf.quants.dequantize`: the products and the exact
//! dequantization below reproduce it bit for bit.
//!
//! Tiled layout: a weight [n, k] is stored as tiles of [`TILE`] = 16 output rows; each tile is a
//! row of blocks, one per GGUF block along k (KB = 32 or 256 values), tile-major, so a tile
//! streams from one contiguous range. A tile block holds the 16 rows' parameters, then their
//! codes group after group (rows past n are zero), so a product reads it front to back:
//! - parameters: 16 float16 d (byte 2j), then 16 float16 m or dmin (Q4_1, Q5_1, Q4_K, Q5_K),
//!   then per group of a K-quant block 16 scales (Q4_K, Q5_K: u8; Q6_K: i8; byte 16g+j) and for
//!   Q4_K / Q5_K 16 minimums per group;
//! - codes of 4-6 bits, per group of G values: a nibble plane of G / 4 steps of 32 bytes (byte
//!   2j+e of step s holds the low 4 bits of q[j][4s+e] in its low nibble and those of
//!   q[j][4s+2+e] in its high nibble, as `quant_matmul`'s Q4), then for 5 and 6 bits one and
//!   two bit planes of G / 4 steps of 8 bytes (the u16 at 2r of step s has bit j = bit 4
//!   (plane 0) or 5 (plane 1) of q[j][4s+r]);
//! - 8-bit codes: pairs of 32 bytes (byte 2j+e of pair p holds q[j][2p+e]).
//!
//! The layout takes the GGUF file's bytes (Q4_K and Q5_K 1.03x: their 6-bit scales are unpacked
//! to bytes); it converts back to the GGUF bytes exactly.

use super::elem::f16_to_f32;

/// Output rows per tile.
pub const TILE: usize = 16;
/// Values per K-quant super-block.
pub const QK_K: usize = 256;

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgufType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl GgufType {
    pub const ALL: [GgufType; 8] = [
        GgufType::Q4_0,
        GgufType::Q4_1,
        GgufType::Q5_0,
        GgufType::Q5_1,
        GgufType::Q8_0,
        GgufType::Q4_K,
        GgufType::Q5_K,
        GgufType::Q6_K,
    ];

    /// The type of a `ggml_type` code (as `gguf.GGMLQuantizationType`).
    pub fn from_ggml(code: u32) -> Result<GgufType, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.ggml_code() == code)
            .ok_or_else(|| {
                format!(
                    "GGML type {code} is not kept quantized (supported: {})",
                    Self::ALL.map(|t| t.name()).join(", ")
                )
            })
    }

    pub fn ggml_code(self) -> u32 {
        match self {
            GgufType::Q4_0 => 2,
            GgufType::Q4_1 => 3,
            GgufType::Q5_0 => 6,
            GgufType::Q5_1 => 7,
            GgufType::Q8_0 => 8,
            GgufType::Q4_K => 12,
            GgufType::Q5_K => 13,
            GgufType::Q6_K => 14,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgufType::Q4_0 => "Q4_0",
            GgufType::Q4_1 => "Q4_1",
            GgufType::Q5_0 => "Q5_0",
            GgufType::Q5_1 => "Q5_1",
            GgufType::Q8_0 => "Q8_0",
            GgufType::Q4_K => "Q4_K",
            GgufType::Q5_K => "Q5_K",
            GgufType::Q6_K => "Q6_K",
        }
    }

    /// Values per GGUF block (KB): 32, or 256 for the K-quants.
    pub fn block_values(self) -> usize {
        match self {
            GgufType::Q4_K | GgufType::Q5_K | GgufType::Q6_K => QK_K,
            _ => 32,
        }
    }

    /// Bytes of one GGUF block.
    pub fn gguf_block_bytes(self) -> usize {
        match self {
            GgufType::Q4_0 => 18,
            GgufType::Q4_1 => 20,
            GgufType::Q5_0 => 22,
            GgufType::Q5_1 => 24,
            GgufType::Q8_0 => 34,
            GgufType::Q4_K => 144,
            GgufType::Q5_K => 176,
            GgufType::Q6_K => 210,
        }
    }

    /// Input features sharing one scale (and offset).
    pub fn group(self) -> usize {
        if self == GgufType::Q6_K {
            16
        } else {
            32
        }
    }

    pub fn groups_per_block(self) -> usize {
        self.block_values() / self.group()
    }

    pub fn code_bits(self) -> usize {
        match self {
            GgufType::Q4_0 | GgufType::Q4_1 | GgufType::Q4_K => 4,
            GgufType::Q5_0 | GgufType::Q5_1 | GgufType::Q5_K => 5,
            GgufType::Q6_K => 6,
            GgufType::Q8_0 => 8,
        }
    }

    /// Whether weights are `S * q + O` (else `S * (q - zp)`).
    pub fn has_offset(self) -> bool {
        matches!(
            self,
            GgufType::Q4_1 | GgufType::Q5_1 | GgufType::Q4_K | GgufType::Q5_K
        )
    }

    /// The code of a zero weight, for the symmetric types (Q8_0's codes are signed: 0).
    pub fn zero_point(self) -> i32 {
        match self {
            GgufType::Q4_0 => 8,
            GgufType::Q5_0 => 16,
            GgufType::Q6_K => 32,
            _ => 0,
        }
    }

    fn is_k_quant(self) -> bool {
        self.block_values() == QK_K
    }

    /// Bytes of a tile block's codes (after its parameters).
    pub fn code_bytes(self) -> usize {
        2 * self.code_bits() * self.block_values()
    }

    /// Bytes of one group's codes in a tile block (nibble plane and bit planes).
    pub fn group_code_bytes(self) -> usize {
        2 * self.code_bits() * self.group()
    }

    /// Offset of group g's codes in a tile block.
    pub fn group_codes(self, g: usize) -> usize {
        self.param_bytes() + g * self.group_code_bytes()
    }

    /// Offset of the bit plane `p` (0: bit 4, 1: bit 5) within a group's codes.
    pub fn bit_plane(self, p: usize) -> usize {
        8 * self.group() + p * 2 * self.group()
    }

    /// Bytes of a tile block's parameters (at its start).
    pub fn param_bytes(self) -> usize {
        match self {
            GgufType::Q4_0 | GgufType::Q5_0 | GgufType::Q8_0 => 2 * TILE,
            GgufType::Q4_1 | GgufType::Q5_1 => 4 * TILE,
            GgufType::Q4_K | GgufType::Q5_K => 4 * TILE + 2 * 8 * TILE,
            GgufType::Q6_K => 2 * TILE + 16 * TILE,
        }
    }

    /// Bytes of one tile block (16 rows x KB values).
    pub fn tile_block_bytes(self) -> usize {
        self.code_bytes() + self.param_bytes()
    }
}

/// Check a [n, k] shape for type `t`.
pub fn check_shape(t: GgufType, n: usize, k: usize) -> Result<(), String> {
    let kb = t.block_values();
    if n == 0 || k == 0 || k % kb != 0 {
        return Err(format!(
            "a {} weight [{n}, {k}] needs n > 0 and k a positive multiple of {kb}",
            t.name()
        ));
    }
    Ok(())
}

/// Bytes of a tiled [n, k] weight of type `t`.
pub fn packed_bytes(t: GgufType, n: usize, k: usize) -> Result<usize, String> {
    check_shape(t, n, k)?;
    Ok(n.div_ceil(TILE) * (k / t.block_values()) * t.tile_block_bytes())
}

/// Bytes of one row of a [n, k] weight in the GGUF file.
pub fn gguf_row_bytes(t: GgufType, k: usize) -> usize {
    k / t.block_values() * t.gguf_block_bytes()
}

/// One row's share of one block: raw codes and parameters, as both layouts hold them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockVals {
    /// codes (Q8_0: the signed byte's bits), KB of them
    pub codes: [u8; QK_K],
    /// float16 bits of d
    pub d: u16,
    /// float16 bits of m (Q4_1, Q5_1) or dmin (Q4_K, Q5_K)
    pub m: u16,
    /// per group: 6-bit scales (Q4_K, Q5_K) or int8 scales (Q6_K)
    pub sc: [u8; 16],
    /// per group: 6-bit minimums (Q4_K, Q5_K)
    pub mn: [u8; 8],
}

impl Default for BlockVals {
    fn default() -> Self {
        BlockVals {
            codes: [0; QK_K],
            d: 0,
            m: 0,
            sc: [0; 16],
            mn: [0; 8],
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Read one GGUF block (`src`: its bytes).
pub fn gguf_decode(t: GgufType, src: &[u8], v: &mut BlockVals) {
    let q = &mut v.codes;
    match t {
        GgufType::Q4_0 | GgufType::Q4_1 | GgufType::Q5_0 | GgufType::Q5_1 => {
            v.d = u16_at(src, 0);
            let mut at = 2;
            if t.has_offset() {
                v.m = u16_at(src, 2);
                at = 4;
            }
            let qh = if t.code_bits() == 5 {
                at += 4;
                u32::from_le_bytes([src[at - 4], src[at - 3], src[at - 2], src[at - 1]])
            } else {
                0
            };
            for l in 0..16 {
                let byte = src[at + l];
                q[l] = (byte & 15) | (((qh >> l) & 1) << 4) as u8;
                q[l + 16] = (byte >> 4) | (((qh >> (l + 16)) & 1) << 4) as u8;
            }
        }
        GgufType::Q8_0 => {
            v.d = u16_at(src, 0);
            q[..32].copy_from_slice(&src[2..34]);
        }
        GgufType::Q4_K | GgufType::Q5_K => {
            v.d = u16_at(src, 0);
            v.m = u16_at(src, 2);
            let s = &src[4..16];
            for j in 0..4 {
                v.sc[j] = s[j] & 63;
                v.mn[j] = s[j + 4] & 63;
                v.sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 2) & 0x30);
                v.mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
            }
            let (qh, qs) = if t == GgufType::Q5_K {
                (Some(&src[16..48]), &src[48..176])
            } else {
                (None, &src[16..144])
            };
            for i in 0..8 {
                let (c, h) = (i / 2, i % 2);
                for l in 0..32 {
                    let mut x = (qs[32 * c + l] >> (4 * h)) & 15;
                    if let Some(qh) = qh {
                        x |= ((qh[l] >> i) & 1) << 4;
                    }
                    q[32 * i + l] = x;
                }
            }
        }
        GgufType::Q6_K => {
            let (ql, qh) = (&src[0..128], &src[128..192]);
            v.sc.copy_from_slice(&src[192..208]);
            v.d = u16_at(src, 208);
            for a in 0..2 {
                for tq in 0..4 {
                    for l in 0..32 {
                        let low = if tq < 2 {
                            ql[64 * a + 32 * tq + l] & 15
                        } else {
                            ql[64 * a + 32 * (tq - 2) + l] >> 4
                        };
                        let high = (qh[32 * a + l] >> (2 * tq)) & 3;
                        q[128 * a + 32 * tq + l] = low | (high << 4);
                    }
                }
            }
        }
    }
}

/// Write one GGUF block (the inverse of [`gguf_decode`]).
pub fn gguf_encode(t: GgufType, v: &BlockVals, dst: &mut [u8]) {
    let q = &v.codes;
    dst[..t.gguf_block_bytes()].fill(0);
    match t {
        GgufType::Q4_0 | GgufType::Q4_1 | GgufType::Q5_0 | GgufType::Q5_1 => {
            put_u16(dst, 0, v.d);
            let mut at = 2;
            if t.has_offset() {
                put_u16(dst, 2, v.m);
                at = 4;
            }
            if t.code_bits() == 5 {
                let mut qh = 0u32;
                for (l, &x) in q[..32].iter().enumerate() {
                    qh |= (((x >> 4) & 1) as u32) << l;
                }
                dst[at..at + 4].copy_from_slice(&qh.to_le_bytes());
                at += 4;
            }
            for l in 0..16 {
                dst[at + l] = (q[l] & 15) | ((q[l + 16] & 15) << 4);
            }
        }
        GgufType::Q8_0 => {
            put_u16(dst, 0, v.d);
            dst[2..34].copy_from_slice(&q[..32]);
        }
        GgufType::Q4_K | GgufType::Q5_K => {
            put_u16(dst, 0, v.d);
            put_u16(dst, 2, v.m);
            for j in 0..4 {
                dst[4 + j] = (v.sc[j] & 63) | ((v.sc[j + 4] >> 4) << 6);
                dst[8 + j] = (v.mn[j] & 63) | ((v.mn[j + 4] >> 4) << 6);
                dst[12 + j] = (v.sc[j + 4] & 15) | ((v.mn[j + 4] & 15) << 4);
            }
            let qs_at = if t == GgufType::Q5_K { 48 } else { 16 };
            for i in 0..8 {
                let (c, h) = (i / 2, i % 2);
                for l in 0..32 {
                    let x = q[32 * i + l];
                    dst[qs_at + 32 * c + l] |= (x & 15) << (4 * h);
                    if t == GgufType::Q5_K {
                        dst[16 + l] |= ((x >> 4) & 1) << i;
                    }
                }
            }
        }
        GgufType::Q6_K => {
            for a in 0..2 {
                for tq in 0..4 {
                    for l in 0..32 {
                        let x = q[128 * a + 32 * tq + l];
                        if tq < 2 {
                            dst[64 * a + 32 * tq + l] |= x & 15;
                        } else {
                            dst[64 * a + 32 * (tq - 2) + l] |= (x & 15) << 4;
                        }
                        dst[128 + 32 * a + l] |= ((x >> 4) & 3) << (2 * tq);
                    }
                }
            }
            dst[192..208].copy_from_slice(&v.sc);
            put_u16(dst, 208, v.d);
        }
    }
}

/// Where code i of row j lives in a tile block: (offset of its group's codes, index within the
/// group).
#[inline(always)]
fn code_at(t: GgufType, i: usize) -> (usize, usize) {
    (t.group_codes(i / t.group()), i % t.group())
}

/// (byte, shift) of the low 4 bits of code il (within its group) of row j, from the group start.
#[inline(always)]
fn nibble_at(il: usize, j: usize) -> (usize, u32) {
    let (s, r) = (il / 4, il % 4);
    (s * 32 + 2 * j + (r & 1), if r >= 2 { 4 } else { 0 })
}

/// (byte, bit) of code il (within its group) of row j in a bit plane, from the plane start.
#[inline(always)]
fn plane_bit_at(il: usize, j: usize) -> (usize, u32) {
    let (s, r) = (il / 4, il % 4);
    (s * 8 + 2 * r + j / 8, (j % 8) as u32)
}

/// Row j's raw code i in a tile block.
#[inline(always)]
pub fn tile_code(t: GgufType, blk: &[u8], i: usize, j: usize) -> u8 {
    let bits = t.code_bits();
    let (base, il) = code_at(t, i);
    if bits == 8 {
        return blk[base + (il / 2) * 32 + 2 * j + (il % 2)];
    }
    let (at, sh) = nibble_at(il, j);
    let mut q = (blk[base + at] >> sh) & 15;
    for p in 0..bits - 4 {
        let (b, bit) = plane_bit_at(il, j);
        q |= ((blk[base + t.bit_plane(p) + b] >> bit) & 1) << (4 + p);
    }
    q
}

/// Store row j's share of a block into a tile block (overwriting what row j held).
pub fn tile_store(t: GgufType, blk: &mut [u8], j: usize, v: &BlockVals) {
    let bits = t.code_bits();
    for i in 0..t.block_values() {
        let q = v.codes[i];
        let (base, il) = code_at(t, i);
        if bits == 8 {
            blk[base + (il / 2) * 32 + 2 * j + (il % 2)] = q;
            continue;
        }
        let (at, sh) = nibble_at(il, j);
        blk[base + at] = (blk[base + at] & !(15 << sh)) | ((q & 15) << sh);
        for p in 0..bits - 4 {
            let (b, bit) = plane_bit_at(il, j);
            let byte = &mut blk[base + t.bit_plane(p) + b];
            *byte = (*byte & !(1 << bit)) | (((q >> (4 + p)) & 1) << bit);
        }
    }
    let p = 0;
    put_u16(blk, p + 2 * j, v.d);
    if t.has_offset() {
        put_u16(blk, p + 2 * TILE + 2 * j, v.m);
    }
    if t.is_k_quant() {
        let sc_at = p + if t.has_offset() { 4 * TILE } else { 2 * TILE };
        for g in 0..t.groups_per_block() {
            blk[sc_at + TILE * g + j] = v.sc[g];
            if t.has_offset() {
                blk[sc_at + 8 * TILE + TILE * g + j] = v.mn[g];
            }
        }
    }
}

/// Read row j's share of a tile block (the inverse of [`tile_store`]).
pub fn tile_load(t: GgufType, blk: &[u8], j: usize, v: &mut BlockVals) {
    for i in 0..t.block_values() {
        v.codes[i] = tile_code(t, blk, i, j);
    }
    let p = 0;
    v.d = u16_at(blk, p + 2 * j);
    v.m = if t.has_offset() {
        u16_at(blk, p + 2 * TILE + 2 * j)
    } else {
        0
    };
    if t.is_k_quant() {
        let sc_at = p + if t.has_offset() { 4 * TILE } else { 2 * TILE };
        for g in 0..t.groups_per_block() {
            v.sc[g] = blk[sc_at + TILE * g + j];
            if t.has_offset() {
                v.mn[g] = blk[sc_at + 8 * TILE + TILE * g + j];
            }
        }
    }
}

/// Offset (in a tile block) of the parameter arrays: (d, m or dmin, scales, minimums); 0 where
/// the type has none.
pub fn param_offsets(t: GgufType) -> (usize, usize, usize, usize) {
    let p = 0;
    match t {
        GgufType::Q4_0 | GgufType::Q5_0 | GgufType::Q8_0 => (p, 0, 0, 0),
        GgufType::Q4_1 | GgufType::Q5_1 => (p, p + 2 * TILE, 0, 0),
        GgufType::Q4_K | GgufType::Q5_K => (p, p + 2 * TILE, p + 4 * TILE, p + 12 * TILE),
        GgufType::Q6_K => (p, 0, p + 2 * TILE, 0),
    }
}

/// Row j's scale S and offset O of group g in a tile block (O = 0 for the symmetric types).
#[inline(always)]
pub fn tile_scale_offset(t: GgufType, blk: &[u8], g: usize, j: usize) -> (f32, f32) {
    let (pd, pm, psc, pmn) = param_offsets(t);
    let d = f16_to_f32(u16_at(blk, pd + 2 * j));
    match t {
        GgufType::Q4_0 | GgufType::Q5_0 | GgufType::Q8_0 => (d, 0.0),
        GgufType::Q4_1 | GgufType::Q5_1 => (d, f16_to_f32(u16_at(blk, pm + 2 * j))),
        GgufType::Q4_K | GgufType::Q5_K => {
            let dmin = f16_to_f32(u16_at(blk, pm + 2 * j));
            let sc = blk[psc + TILE * g + j] as f32;
            let mn = blk[pmn + TILE * g + j] as f32;
            (d * sc, -(dmin * mn))
        }
        GgufType::Q6_K => (d * (blk[psc + TILE * g + j] as i8) as f32, 0.0),
    }
}

/// The signed code value c (q - zp; Q8_0: the signed byte) of a raw code.
#[inline(always)]
pub fn code_value(t: GgufType, q: u8) -> f32 {
    if t == GgufType::Q8_0 {
        q as i8 as f32
    } else {
        (q as i32 - t.zero_point()) as f32
    }
}

/// Row j of a tile block dequantized exactly (as `gguf.quants.dequantize`) into `out` [KB].
pub fn tile_dequantize(t: GgufType, blk: &[u8], j: usize, out: &mut [f32]) {
    let gk = t.group();
    for g in 0..t.groups_per_block() {
        let (s, o) = tile_scale_offset(t, blk, g, j);
        for i in g * gk..(g + 1) * gk {
            let q = tile_code(t, blk, i, j);
            out[i] = if t.has_offset() {
                s * q as f32 + o
            } else {
                s * code_value(t, q)
            };
        }
    }
}
