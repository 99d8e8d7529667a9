"""Step failures: which ones end the process, and a switch to inject them in tests.

A step that raises fails only the requests it was running (`Core.fail_step`); the engine keeps
serving. Only an unrecoverable device error ends the process: a sticky CUDA error (an illegal
memory access, a device-side assert, a launch failure...) leaves the CUDA context unusable for
every later call, so the server exits non-zero and a supervisor restarts it.

Fault injection: `LMRS_FAULT_STEPS=3,7,12!` makes the engine's 3rd, 7th and 12th model steps
(steps that run at least one row, counted from 1) raise before the forward pass; a `!` makes
that fault an unrecoverable device error.
"""

from __future__ import annotations

import os

import torch

# Messages of CUDA errors after which the context cannot be used again (cudaError_t names and
# their descriptions, as torch and CuPy report them).
_STICKY_MARKERS = (
    "illegal memory access", "cudaerrorillegaladdress", "device-side assert", "cudaerrorassert",
    "unspecified launch failure", "cudaerrorlaunchfailure", "misaligned address", "illegal instruction",
    "hardware stack error", "uncorrectable ecc error", "context is destroyed", "cudaerrorcontextisdestroyed",
    "launch timed out", "cuda_error_illegal_address", "cuda_error_launch_failed",
)


class InjectedStepFault(RuntimeError):
    """A fault injected by LMRS_FAULT_STEPS (recoverable: only the step's requests fail)."""


class InjectedDeviceFault(RuntimeError):
    """An injected unrecoverable device error (LMRS_FAULT_STEPS with `!`)."""


class FaultInjector:
    """Raises at the model steps listed in LMRS_FAULT_STEPS (none by default)."""

    def __init__(self, spec: str = ""):
        self.recoverable: set[int] = set()
        self.fatal: set[int] = set()
        for part in filter(None, (p.strip() for p in spec.split(","))):
            fatal = part.endswith("!")
            try:
                n = int(part.rstrip("!"))
            except ValueError:
                raise ValueError(f"LMRS_FAULT_STEPS: {part!r} is not a step number (e.g. 3,7,12!)") from None
            (self.fatal if fatal else self.recoverable).add(n)

    @classmethod
    def from_env(cls) -> "FaultInjector":
        return cls(os.environ.get("LMRS_FAULT_STEPS", ""))

    def __bool__(self) -> bool:
        return bool(self.recoverable or self.fatal)

    def before_step(self, step: int) -> None:
        if step in self.fatal:
            raise InjectedDeviceFault(f"injected unrecoverable device error at model step {step}")
        if step in self.recoverable:
            raise InjectedStepFault(f"injected fault at model step {step}")


def is_unrecoverable(exc: BaseException, device: torch.device) -> bool:
    """Whether a step failure left the device unusable (sticky CUDA error)."""
    if isinstance(exc, InjectedDeviceFault):
        return True
    from lmrs.parallel.ranks import RankFailure

    if isinstance(exc, RankFailure):  # a tensor-parallel rank died or a collective failed
        return True
    if not isinstance(exc, Exception):
        return True  # KeyboardInterrupt, SystemExit, MemoryError-like BaseExceptions
    if device.type != "cuda":
        return False
    msg = f"{type(exc).__name__}: {exc}".lower()
    if any(m in msg for m in _STICKY_MARKERS):
        return True
    try:  # a sticky error makes every later call fail: probe the context
        torch.cuda.synchronize(device)
        torch.zeros(1, device=device).add_(1).item()
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return True
    return False
