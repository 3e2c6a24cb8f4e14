"""Rollout engines behind one small protocol: transformers ``generate`` (here) and vLLM (GPUs)."""

from lead_fast.rollout.base import Completion, EngineMemory, RolloutEngine, SamplingSettings
from lead_fast.rollout.factory import make_engine

__all__ = ["Completion", "EngineMemory", "RolloutEngine", "SamplingSettings", "make_engine"]
