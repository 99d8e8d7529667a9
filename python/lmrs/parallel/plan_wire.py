"""The step plan on the wire: rank 0 packs what a forward pass needs into one byte buffer.

A message is a fixed-size uint8 buffer (`MESSAGE_BYTES`, 64 KiB) broadcast from rank 0 on the
control group: a header of `HEADER_WORDS` int64 words, then the payload (the plan's flat arrays, one
after another). A decode step of up to a few hundred rows fits in that one broadcast; a larger plan
(long prefill chunks, wide block tables) says so in its header and its payload follows in a second
broadcast of exactly its size.

Header words: kind, payload bytes, flags, the six scalars (`SCALARS`), then per array (`ARRAYS`, in
order) dtype code, ndim, dim0, dim1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MESSAGE_BYTES", "STEP", "SHUTDOWN", "WirePlan", "pack_plan", "unpack_header", "unpack_plan"]

MESSAGE_BYTES = 64 * 1024
STEP, SHUTDOWN = 1, 2
FLAG_RETURN_HIDDEN = 1
#: the plan's scalar attributes a forward pass reads
SCALARS = ("num_rows", "num_decode_rows", "max_query_len", "max_seq_len", "num_sampled", "num_pool_rows")
#: the plan's arrays a forward pass reads (block_table is 2-D, the others 1-D)
ARRAYS = ("input_ids", "positions", "slot_mapping", "block_table", "seq_lens", "query_start_loc",
          "logits_indices", "pool_rows")
_DTYPES = (np.int32, np.int64, np.uint32, np.uint64, np.int16, np.uint8, np.float32)
_CODE = {np.dtype(d): i for i, d in enumerate(_DTYPES)}
HEADER_WORDS = 3 + len(SCALARS) + 4 * len(ARRAYS)
HEADER_BYTES = 8 * HEADER_WORDS


class WirePlan:
    """A plan rebuilt from a message: the attributes `ModelRunner.forward_step` reads."""

    def __init__(self, scalars: dict, arrays: dict, return_hidden: bool):
        self.__dict__.update(scalars)
        self.__dict__.update(arrays)
        self.return_hidden = return_hidden


def control_message(kind: int) -> np.ndarray:
    """A message with no plan (SHUTDOWN)."""
    buf = np.zeros(MESSAGE_BYTES, dtype=np.uint8)
    buf[:8] = np.frombuffer(np.int64(kind).tobytes(), dtype=np.uint8)
    return buf


def pack_plan(plan, return_hidden: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(the message buffer, the payload when it does not fit and needs a second broadcast, else None)."""
    arrays = [np.ascontiguousarray(getattr(plan, name)) for name in ARRAYS]
    header = np.zeros(HEADER_WORDS, dtype=np.int64)
    payload_bytes = sum(a.nbytes for a in arrays)
    header[0], header[1], header[2] = STEP, payload_bytes, FLAG_RETURN_HIDDEN if return_hidden else 0
    header[3:3 + len(SCALARS)] = [int(getattr(plan, name)) for name in SCALARS]
    w = 3 + len(SCALARS)
    for a in arrays:
        if a.ndim > 2:
            raise ValueError(f"plan array of {a.ndim} dimensions cannot be sent")
        header[w:w + 4] = [_CODE[a.dtype], a.ndim, a.shape[0] if a.ndim else 0, a.shape[1] if a.ndim == 2 else 0]
        w += 4
    buf = np.zeros(MESSAGE_BYTES, dtype=np.uint8)
    buf[:HEADER_BYTES] = header.view(np.uint8)
    fits = HEADER_BYTES + payload_bytes <= MESSAGE_BYTES
    payload = buf[HEADER_BYTES:HEADER_BYTES + payload_bytes] if fits else np.empty(payload_bytes, dtype=np.uint8)
    off = 0
    for a in arrays:
        payload[off:off + a.nbytes] = a.reshape(-1).view(np.uint8)
        off += a.nbytes
    return buf, (None if fits else payload)


def unpack_header(buf: np.ndarray) -> tuple[int, int]:
    """(kind, payload bytes) of a message."""
    header = buf[:HEADER_BYTES].view(np.int64)
    return int(header[0]), int(header[1])


def payload_in_message(buf: np.ndarray) -> bool:
    return HEADER_BYTES + unpack_header(buf)[1] <= MESSAGE_BYTES


def unpack_plan(buf: np.ndarray, payload: np.ndarray | None = None) -> WirePlan:
    """The WirePlan of a STEP message (`payload`: the second broadcast, when the plan did not fit)."""
    header = buf[:HEADER_BYTES].view(np.int64)
    nbytes = int(header[1])
    if payload is None:
        payload = buf[HEADER_BYTES:HEADER_BYTES + nbytes]
    scalars = {name: int(v) for name, v in zip(SCALARS, header[3:3 + len(SCALARS)])}
    arrays = {}
    w, off = 3 + len(SCALARS), 0
    for name in ARRAYS:
        code, ndim, d0, d1 = (int(v) for v in header[w:w + 4])
        w += 4
        dtype = np.dtype(_DTYPES[code])
        shape = (d0, d1)[:ndim]
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if ndim else dtype.itemsize
        arrays[name] = payload[off:off + size].copy().view(dtype).reshape(shape)
        off += size
    return WirePlan(scalars, arrays, bool(header[2] & FLAG_RETURN_HIDDEN))
