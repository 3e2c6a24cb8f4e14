"""Rollout engines behind one small protocol: transformers ``generate`` (here) and vLLM (GPUs)."""

from lead_fast.rollout.base import RolloutEngine, SamplingSettings, make_engine

__all__ = ["RolloutEngine", "SamplingSettings", "make_engine"]
