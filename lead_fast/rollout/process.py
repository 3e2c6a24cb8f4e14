"""An engine in a process of its own: what a disaggregated rollout rank runs vLLM in.

Why a process: vLLM keeps its distributed state per process and builds it over the whole default process
group. In-process under torchrun (``external_launcher``) that group is the trainer's world, so on a rollout
rank vLLM's group creation waits for trainer ranks that never join it (seen with vLLM 0.32's CPU build). In
a child process started with ``spawn`` (no torchrun variables, no process group) the engine makes its own
world of one, as it does without a launcher, and the rank's process keeps torchrun's group for the orders,
the weights and the batches.

The rank's side (``EngineProcess``) speaks the same protocol as any engine (``RolloutEngine``); every call
is one message over a pipe and one answer:

- ``generate``: the prompts' token ids and the settings go over, the completions come back (small: token
  ids, finish reasons, log-probs).
- ``update_weights``: the tensors are copied into buffers this side allocated once and shares with the
  child (CPU shared memory; on CUDA an IPC handle of the same device's memory), then one message tells the
  child to load them. The weights cross no file and no socket. Cost: one extra copy of the weights on the
  rollout rank, and a memory copy per sync.
- errors raised in the child come back as the same exception, with the child's traceback attached as a
  note; a child that dies (killed, out of memory) is reported with its exit code, never waited on forever.

The child ignores SIGINT and SIGTERM (the rank decides when to stop, and a preempted rank finishes its
batch first) and dies with the rank (Linux ``PR_SET_PDEATHSIG``; elsewhere it exits when the pipe closes).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from typing import Callable, Iterable

import torch

from lead_fast.errors import LeadFastError
from lead_fast.rollout.base import Completion, RolloutEngine, SamplingSettings

# torchrun's per-rank variables: with them vLLM would take the child for a rank of torchrun's world
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
                 "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE", "TORCH_NCCL_ASYNC_ERROR_HANDLING")


class EngineProcessError(LeadFastError, RuntimeError):
    """The engine's process died or could not be started (the message says how, and what to lower)."""

    exit_code = 1


def _die_with_parent() -> None:
    """Linux: the kernel sends this process SIGKILL when the rank that started it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)    # PR_SET_PDEATHSIG = 1
        except OSError:
            pass


def _received(obj):
    """A weight buffer as sent: a tensor (CPU shared memory), or a CUDA IPC handle to rebuild (see ``_shared``)."""
    if isinstance(obj, tuple):
        rebuild, args = obj
        return rebuild(*args)
    return obj


def _serve(conn, build: Callable[[], RolloutEngine], threads: int) -> None:
    """The child's main: build the engine, then answer messages until ``close`` or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    torch.set_num_threads(threads)
    engine, buffers = None, None
    try:
        engine = build()
        conn.send(("ok", None))
        while True:
            try:
                kind, payload = conn.recv()
            except EOFError:      # the rank is gone
                break
            try:
                if kind == "generate":
                    result = engine.generate(*payload)
                elif kind == "weights":
                    if payload is not None:
                        buffers = [(name, _received(t)) for name, t in payload]
                    engine.update_weights(iter(buffers))
                    result = None
                elif kind == "close":
                    engine.close()
                    engine = None
                    conn.send(("ok", None))
                    break
                else:
                    raise ValueError(f"unknown message {kind!r}")
            except Exception as e:
                _send_error(conn, e)
                continue
            conn.send(("ok", result))
    except Exception as e:          # the engine could not be built
        _send_error(conn, e)
    finally:
        if engine is not None:
            engine.close()
        conn.close()


def _send_error(conn, e: Exception) -> None:
    text = "".join(traceback.format_exception(e))
    try:
        conn.send(("error", (e, text)))
    except Exception:         # an exception that does not pickle: its text
        conn.send(("error", (RuntimeError(f"{type(e).__name__}: {e}"), text)))


def _shared(t: torch.Tensor):
    """A buffer the child can read without a copy: CPU tensors go to shared memory (sent as tensors, torch's
    multiprocessing reductions pass the memory); a CUDA tensor goes as its IPC handle with the device index
    set to 0, the only device the child sees (``CUDA_VISIBLE_DEVICES`` is this rank's device there)."""
    if t.device.type == "cpu":
        return t.share_memory_()
    from torch.multiprocessing.reductions import reduce_tensor

    rebuild, args = reduce_tensor(t)
    args = list(args)
    args[6] = 0         # storage_device (torch 2.x rebuild_cuda_tensor's 7th argument)
    return rebuild, tuple(args)


class EngineProcess:
    """``RolloutEngine`` by messages to an engine built by ``build`` (a picklable callable, such as a
    ``functools.partial`` of the engine class) in a spawned child process."""

    def __init__(self, build: Callable[[], RolloutEngine], *, device: torch.device, what: str = "rollout engine",
                 start_timeout_s: float = 1800.0):
        self.what, self.device = what, device
        self._buffers: list[tuple[str, torch.Tensor]] | None = None
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child_conn, build, torch.get_num_threads()),
                                 name=f"lead_fast {what}", daemon=True)
        with _child_environment(device):
            self._proc.start()
        child_conn.close()
        self._call(None, None, timeout_s=start_timeout_s)     # the engine is built (or its error comes back)

    def _call(self, kind: str | None, payload, timeout_s: float | None = None):
        if kind is not None:
            self._conn.send((kind, payload))
        t0 = time.monotonic()
        while not self._conn.poll(1.0):
            if not self._proc.is_alive():
                break
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise EngineProcessError(f"the {self.what}'s process did not answer in {timeout_s:.0f} s")
        try:
            status, value = self._conn.recv()
        except (EOFError, ConnectionResetError):
            self._proc.join(5)
            code = self._proc.exitcode
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            raise EngineProcessError(
                f"the {self.what}'s process {how} (pid {self._proc.pid}){_memory_hint(code)}") from None
        if status == "error":
            exc, text = value
            exc.add_note(f"raised in the {self.what}'s process:\n{text}")
            raise exc
        return value

    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        return self._call("generate", (prompts, settings))

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self._buffers is None:
            self._buffers = [(name, torch.empty_like(t, device=self.device).copy_(t)) for name, t in named_tensors]
            payload = [(name, _shared(t)) for name, t in self._buffers]
        else:
            for i, ((name, buf), (sent, t)) in enumerate(zip(self._buffers, named_tensors, strict=True)):
                if name != sent:
                    raise RuntimeError(f"weight sync: expected {name!r} at position {i}, got {sent!r}")
                buf.copy_(t)
            payload = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)    # the child reads the buffers from its own stream
        self._call("weights", payload)

    def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.is_alive():
                self._call("close", None, timeout_s=120)
        except (EngineProcessError, OSError):
            pass            # already gone: nothing to close
        finally:
            self._proc = None
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            self._conn.close()
            self._buffers = None


def _memory_hint(code: int | None) -> str:
    if code == -signal.SIGKILL:
        return ("; SIGKILL most often means the machine ran out of memory (the kernel's OOM killer): lower "
                "the engine's memory settings or the rollout batch")
    return ""


def _set_environment(values: dict[str, str | None]) -> dict[str, str | None]:
    """Set (None: remove) each variable; returns what they were, for undoing."""
    before = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return before


@contextlib.contextmanager
def _child_environment(device: torch.device):
    """The environment a spawned child inherits, for the duration of ``start``: no torchrun variables, and
    on CUDA only this rank's device visible (vLLM without a launcher takes device 0)."""
    changes: dict[str, str | None] = dict.fromkeys(LAUNCHER_VARS)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        changes["CUDA_VISIBLE_DEVICES"] = ids[index]
    before = _set_environment(changes)
    try:
        yield
    finally:
        _set_environment(before)
