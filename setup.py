from setuptools import find_packages, setup

setup(
    name="lead_fast",
    version="0.1.0",
    description="GRPO-LEAD training with a fused Triton loss head",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lead_fast", "lead_fast.*"]),
    install_requires=[
        # Loose on purpose: GPU users keep their own CUDA build (CI installs the CPU build 2.13.0 first).
        "torch>=2.6",
        "triton>=3.2; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "transformers>=4.51",
        "datasets>=3.0",
        "tokenizers>=0.21",
        "math-verify[antlr4_13_2]>=0.7",
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "matplotlib>=3.8",
    ],
    entry_points={"console_scripts": ["lead-fast = lead_fast.launch:main"]},
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "liger-kernel>=0.6", "tensorboard>=2.14", "wandb>=0.17", "gguf>=0.10", "accelerate>=0.26",
                 # the peers the tests compare with (TRL's GRPOTrainer and reward functions, PEFT's LoRA)
                 "trl==1.16.0", "peft==0.21.2"],
        # python -m lead_fast.pretrained (a real model from a GGUF file on the package index)
        "pretrained": ["gguf>=0.10", "accelerate>=0.26"],
        "tracking": ["tensorboard>=2.14", "wandb>=0.17"],
        "gpu": ["flash-attn", "vllm>=0.32,<0.34", "liger-kernel>=0.6"],
    },
)
