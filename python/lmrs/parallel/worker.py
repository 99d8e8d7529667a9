"""A worker rank (1..N-1) of a tensor-parallel engine: receive a plan, run the forward pass, repeat.

Started by `RankGroup.start` (spawn). It checks its device and reports over a pipe, joins the group,
loads the model files itself and builds its shard of the model and of the KV cache (the same
`build_model_and_cache` as rank 0; the block count is agreed with the other ranks), then loops on the
control group's broadcast: a STEP message runs `ModelRunner.forward_step` (the same collectives as
rank 0, in the same order), SHUTDOWN ends the loop. It has no scheduler, sampler or tokenizer use.

It ignores SIGINT (Ctrl-C in a terminal reaches the whole process group: rank 0 drains, then sends
SHUTDOWN), and exits when rank 0 disappears (its parent pid changes) or a collective fails.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback

log = logging.getLogger("lmrs.parallel")


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def worker_main(rank: int, size: int, cfg, addr: str, port: int, parent_pid: int, status_conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="lmrs-tp-parent", daemon=True).start()
    import datetime

    import torch
    import torch.distributed as dist

    from .ranks import STARTUP_TIMEOUT_S, RankStartError, join_group, rank_device, threads_per_rank

    try:
        if os.environ.get("LMRS_TP_FAIL_RANK") == str(rank):  # tests: a rank that cannot start
            raise RankStartError(f"rank {rank}: start failure injected by LMRS_TP_FAIL_RANK")
        device = rank_device(cfg.device, rank)
        torch.set_num_threads(int(cfg.num_threads or threads_per_rank(size)))
        status_conn.send(("ok", None))
    except Exception as e:  # noqa: BLE001 - reported to rank 0
        status_conn.send(("error", str(e)))
        sys.exit(1)
    status_conn.close()
    try:
        store = dist.TCPStore(addr, port, size, False, timeout=datetime.timedelta(seconds=STARTUP_TIMEOUT_S))
        context, control = join_group(rank, size, store, device)
        _serve(cfg, context, control, device)
    except BaseException:  # noqa: BLE001 - rank 0 sees the exit; the traceback says why
        print(f"lmrs tensor-parallel rank {rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(0)


def _serve(cfg, context, control, device: str) -> None:
    import torch
    import torch.distributed as dist

    from lmrs.engine.loading import build_model_and_cache
    from lmrs.models.loader import default_model_path, load_model_files
    from lmrs.runner.model_runner import ModelRunner

    from . import plan_wire

    def agree_min(value: int) -> int:
        t = torch.tensor([int(value)], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=control)
        return int(t.item())

    from lmrs.engine.loading import gguf_weights_mode

    loaded = load_model_files(cfg.model or default_model_path(), progress=False,
                              gguf_weights=gguf_weights_mode(cfg, device))
    stack = build_model_and_cache(cfg, loaded, device, context, agree_min)
    runner = ModelRunner(stack.model, stack.kv_cache, sampler=None, decode_graphs=stack.decode_graphs)
    buf = torch.empty(plan_wire.MESSAGE_BYTES, dtype=torch.uint8)
    with torch.inference_mode():
        while True:
            dist.broadcast(buf, src=0, group=control)
            msg = buf.numpy()
            kind, nbytes = plan_wire.unpack_header(msg)
            if kind == plan_wire.SHUTDOWN:
                break
            payload = None
            if not plan_wire.payload_in_message(msg):
                extra = torch.empty(nbytes, dtype=torch.uint8)
                dist.broadcast(extra, src=0, group=control)
                payload = extra.numpy()
            plan = plan_wire.unpack_plan(msg, payload)
            runner.forward_step(plan, plan.return_hidden)
    dist.destroy_process_group()
