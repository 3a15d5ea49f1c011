"""Decoder models (Llama / Qwen2 family), KV cache, checkpoint import and export."""
from r1jax.models.config import ModelConfig, RopeScaling, tiny_config
from r1jax.models.decoder import (KVCache, attention_mask, completion_predictors, decode_step,
                                  forward, forward_grouped, init_params,
                                  lm_head_weight, logits, param_logical_axes, param_shapes,
                                  prefill)
from r1jax.models.loading import default_model_path, from_pretrained, load_config, save_pretrained
