"""Decoder models (Llama / Qwen2 / Qwen3 family, optional LoRA adapters), KV cache,
checkpoint import and export.

`models.load(source)` is the one way to get a model: (config, params, tokenizer, info) from a
default model name, a .gguf file, an HF directory, a training run directory or "tiny-random".
"""
from r1jax.models.config import LoraConfig, ModelConfig, RopeScaling, tiny_config
from r1jax.models.decoder import (KVCache, attention_mask, completion_predictors, decode_step,
                                  forward, forward_grouped, init_params,
                                  lm_head_weight, logits, param_logical_axes, param_shapes,
                                  prefill)
from r1jax.models.hub import (TINY, Loaded, check_dtype, is_run_dir, latest_run_step, load,
                              load_run_params)
from r1jax.models.loading import default_model_path, from_pretrained, load_config, save_pretrained

__all__ = [
    "LoraConfig", "ModelConfig", "RopeScaling", "tiny_config", "KVCache", "attention_mask",
    "completion_predictors", "decode_step", "forward", "forward_grouped", "init_params",
    "lm_head_weight", "logits", "param_logical_axes", "param_shapes", "prefill", "TINY",
    "Loaded", "check_dtype", "is_run_dir", "latest_run_step", "load", "load_run_params",
    "default_model_path", "from_pretrained", "load_config", "save_pretrained",
]
