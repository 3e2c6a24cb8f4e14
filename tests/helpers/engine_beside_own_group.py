"""A vLLM engine built in a process whose world of one was made in-process (``setup_distributed`` without
torchrun, as a caller from Python or the test suite does): vLLM runs its own executor beside that group,
leaves it standing at close, and writes no rank variables that child processes would inherit.
Usage: python engine_beside_own_group.py MODEL_DIR ENGINE (vllm or hf)."""

import os
import sys

import torch
import torch.distributed as dist

from lead_fast.config import RolloutConfig
from lead_fast.distributed import setup_distributed
from lead_fast.model import load_tokenizer
from lead_fast.rollout import EngineMemory, SamplingSettings
from lead_fast.rollout.factory import make_engine

model_dir, engine = sys.argv[1:3]
setup_distributed("cpu")
tok = load_tokenizer(model_dir)
eng = make_engine(RolloutConfig(engine=engine), model_dir, device=torch.device("cpu"), dtype=torch.float32,
                  tokenizer=tok, seed=3, max_model_len=256, memory=EngineMemory(batch_tokens=64 * 256))
prompt = tok("What is 2 + 3? Put the final answer within \\boxed{}.\n", add_special_tokens=False)["input_ids"]
out = eng.generate([prompt], SamplingSettings(n=2, temperature=0.7, max_new_tokens=8, seed=5))
eng.close()
assert [len(g) for g in out] == [2], out
assert dist.is_initialized() and dist.get_world_size() == 1, "the caller's group was taken down"
leaked = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v in os.environ]
assert not leaked, f"rank variables written: {leaked}"
dist.all_reduce(torch.ones(1))
dist.destroy_process_group()
print("ok")
