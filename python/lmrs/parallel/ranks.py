"""Rank processes of a tensor-parallel engine, seen from rank 0.

`RankGroup.start(cfg)` (rank 0, the server process):
1. opens the rendezvous store (`MASTER_ADDR` / `MASTER_PORT`, default 127.0.0.1 and a free port): a
   port that is taken fails here, before anything is started;
2. spawns ranks 1..N-1 (`torch.multiprocessing`, spawn; daemon processes) running
   `lmrs.parallel.worker.worker_main`; each checks its device and reports over a pipe, and a rank that
   fails to start (bad device) makes `start` stop the others and raise `RankStartError`;
3. joins the torch.distributed group: NCCL on CUDA (one GPU per rank, cuda:base+rank), gloo on the
   CPU, plus a gloo *control* group for the plan broadcast (its long timeout lets workers idle);
4. watches the workers' process sentinels from a thread: a rank that dies marks the group failed,
   the engine's next step (or its idle check, within a second) raises `RankFailure`, which the engine
   treats as unrecoverable (in-flight requests end with an error, the server exits 1).

Per step rank 0 calls `send_step(plan)`: one broadcast of a 64 KiB message (`plan_wire`); the model's
collectives (one all-reduce per row-parallel layer, the embedding's all-reduce, the logits gather)
then run inside the forward pass on every rank. `close()` broadcasts SHUTDOWN, joins the workers
(terminating any that linger) and leaves the group; it also runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import multiprocessing.connection
import os
import threading
import time

import torch
import torch.distributed as dist

from ..models.linear import ParallelContext
from . import plan_wire

log = logging.getLogger("lmrs.parallel")

__all__ = ["RankGroup", "RankStartError", "RankFailure", "join_group", "rank_device", "threads_per_rank"]

#: seconds a collective inside the forward pass may wait for a peer before failing
COLLECTIVE_TIMEOUT_S = float(os.environ.get("LMRS_TP_TIMEOUT", "60"))
#: the plan broadcast waits as long as the server is idle
CONTROL_TIMEOUT = datetime.timedelta(days=30)
#: seconds the workers have to check their device and connect
STARTUP_TIMEOUT_S = float(os.environ.get("LMRS_TP_STARTUP_TIMEOUT", "120"))


class RankStartError(RuntimeError):
    """A tensor-parallel rank could not start (port taken, bad device, a rank that died while loading)."""


class RankFailure(RuntimeError):
    """A tensor-parallel rank died or a collective failed while serving: the engine cannot continue."""


def rank_device(device: str, rank: int) -> str:
    """The device of `rank`: "cpu", or cuda:(base + rank) for "cuda" / "cuda:base" (checked to exist)."""
    device = str(device)
    if not device.startswith("cuda"):
        return "cpu"
    base = int(device.split(":", 1)[1]) if ":" in device else 0
    idx = base + rank
    if not torch.cuda.is_available():
        raise RankStartError(f"rank {rank}: device {device!r} was requested but PyTorch sees no CUDA GPU")
    if idx >= torch.cuda.device_count():
        raise RankStartError(f"rank {rank} needs cuda:{idx} but PyTorch sees {torch.cuda.device_count()} GPU(s); "
                             f"--tp N needs N GPUs from {device}")
    return f"cuda:{idx}"


def join_group(rank: int, size: int, store, device: str) -> tuple[ParallelContext, object]:
    """Join the ranks' groups: (the model's ParallelContext, the gloo control group)."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    kw = {}
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
        kw["device_id"] = torch.device(device)
    dist.init_process_group(backend, store=store, rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S), **kw)
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return ParallelContext(rank, size, dist.group.WORLD), control


def threads_per_rank(size: int) -> int:
    """CPU threads for each of `size` ranks sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // size)


class RankGroup:
    """Rank 0's handle on the worker ranks: plan broadcast, liveness, shutdown."""

    def __init__(self, cfg, procs, context: ParallelContext, control):
        self.size = cfg.tp
        self.procs = procs  # rank r's process at index r - 1
        self.context = context
        self.control = control
        self.failure: str | None = None  # why the group broke (set by the watchdog or a failed collective)
        self.closed = False
        self.steps_sent = 0
        self.bytes_sent = 0  # broadcast bytes (messages + overflow payloads)
        self._watchdog = threading.Thread(target=self._watch, name="lmrs-tp-watchdog", daemon=True)
        self._watchdog.start()
        atexit.register(self.close)

    # ---- start ------------------------------------------------------------------------------------
    @classmethod
    def start(cls, cfg) -> "RankGroup":
        from torch import multiprocessing as mp

        from .worker import worker_main

        size = int(cfg.tp)
        device0 = rank_device(cfg.device, 0)
        addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
        port = int(os.environ.get("MASTER_PORT", "0"))
        try:
            store = dist.TCPStore(addr, port, size, True, timeout=datetime.timedelta(seconds=STARTUP_TIMEOUT_S),
                                  wait_for_workers=False)
        except Exception as e:  # noqa: BLE001 - reported as a start error
            raise RankStartError(f"tensor parallel: cannot open the rendezvous port {addr}:{port} "
                                 f"({type(e).__name__}: {e}); set MASTER_PORT to a free port") from None
        ctx = mp.get_context("spawn")
        procs, conns = [], []
        try:
            for r in range(1, size):
                recv, send = ctx.Pipe(duplex=False)
                p = ctx.Process(target=worker_main, args=(r, size, cfg, addr, store.port, os.getpid(), send),
                                name=f"lmrs-tp-rank{r}", daemon=True)
                p.start()
                send.close()
                procs.append(p)
                conns.append(recv)
            _wait_started(procs, conns)
            context, control = join_group(0, size, store, device0)
        except BaseException:
            _stop(procs)
            raise
        finally:
            for conn in conns:  # the start-up status pipes are done with either way
                conn.close()
        log.info("tensor parallel: %d ranks on %s (%s)", size, cfg.device, "nccl" if device0 != "cpu" else "gloo")
        return cls(cfg, procs, context, control)

    # ---- per step ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise RankFailure when a rank has died, or the group was closed."""
        if self.failure is not None:
            raise RankFailure(self.failure)
        if self.closed:
            raise RankFailure("the tensor-parallel ranks were stopped (the engine was closed)")

    def send_step(self, plan, return_hidden: bool = False) -> None:
        """Broadcast a plan to the workers (one message, plus its payload when it does not fit)."""
        self.check()
        buf, overflow = plan_wire.pack_plan(plan, return_hidden)
        dist.broadcast(torch.from_numpy(buf), src=0, group=self.control)
        self.bytes_sent += buf.nbytes
        if overflow is not None:
            dist.broadcast(torch.from_numpy(overflow), src=0, group=self.control)
            self.bytes_sent += overflow.nbytes
        self.steps_sent += 1

    def agree_min(self, value: int) -> int:
        """The smallest of every rank's `value` (the KV cache's block count)."""
        t = torch.tensor([int(value)], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.control)
        return int(t.item())

    # ---- liveness and shutdown --------------------------------------------------------------------
    def _watch(self) -> None:
        sentinels = {p.sentinel: r for r, p in enumerate(self.procs, start=1)}
        try:
            done = multiprocessing.connection.wait(list(sentinels))
        except (OSError, ValueError):  # close() released the sentinels under the wait
            done = []
        if self.closed or not done:
            return
        r = sentinels[done[0]]
        self.procs[r - 1].join(1.0)
        code = self.procs[r - 1].exitcode
        self.failure = f"tensor-parallel rank {r} exited (exit code {code}) while serving"
        log.error("%s; the engine stops", self.failure)

    def close(self) -> None:
        """Stop every worker rank (SHUTDOWN, then terminate what lingers) and leave the group."""
        if self.closed:
            return
        self.closed = True
        if self.failure is None:
            try:
                dist.broadcast(torch.from_numpy(plan_wire.control_message(plan_wire.SHUTDOWN)), src=0,
                               group=self.control)
            except Exception:  # noqa: BLE001 - a worker already gone: terminated below
                pass
        _stop(self.procs, grace_s=5.0)
        # Leave the group (the workers are gone now), also after a failure: a group left initialized makes
        # the process's next tensor-parallel engine fail ("initialize the default process group twice").
        # NCCL after a failure is left as it is: its teardown may wait on the dead peer.
        try:
            if self.failure is None or dist.get_backend() == "gloo":
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - already left
            pass
        # Let go of what holds file descriptors (the groups' sockets, the processes' sentinels), also for
        # an engine closed long before the interpreter exits (atexit would keep this object alive).
        atexit.unregister(self.close)
        self.control = None
        self.context = ParallelContext(self.context.rank, self.context.size, None)


def _wait_started(procs, conns) -> None:
    """Wait until every worker reported its device ready; raise RankStartError for one that did not."""
    pending = dict(zip(conns, range(1, len(procs) + 1)))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RankStartError(f"tensor parallel: ranks {sorted(pending.values())} did not start within "
                                 f"{STARTUP_TIMEOUT_S:.0f} s")
        ready = multiprocessing.connection.wait(list(pending) + [procs[r - 1].sentinel for r in pending.values()],
                                                timeout=left)
        for obj in ready:
            if obj in pending:
                r = pending.pop(obj)
                try:
                    status, message = obj.recv()
                except EOFError:
                    status, message = "error", f"rank {r} exited before it started"
                if status != "ok":
                    raise RankStartError(f"tensor parallel: {message}")
            else:
                r = next(r for r in pending.values() if procs[r - 1].sentinel == obj)
                conn = next(c for c, rr in pending.items() if rr == r)
                if conn.poll():
                    continue  # its status is readable: handled on the next round
                procs[r - 1].join(1.0)
                raise RankStartError(f"tensor parallel: rank {r} exited (code {procs[r - 1].exitcode}) "
                                     "before it started")


def _stop(procs, grace_s: float = 2.0) -> None:
    """Join the processes; terminate, then kill, those still running."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join(1.0)
        if not p.is_alive():
            p.close()  # its sentinel and pipe

