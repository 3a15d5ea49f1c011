"""Pure-functional Flax decoder for the Llama, Qwen2 and Qwen3 families.

One `ModelConfig` covers them: RMSNorm, rotary position embeddings (with optional
Llama-3 frequency scaling), grouped-query attention, SwiGLU MLP, optional q/k/v bias
(Qwen2), optional per-head q/k RMSNorm before RoPE (Qwen3), optional LoRA adapters on the
projections (r1jax.models.lora) and a tied or separate LM head. The layer stack is an `nn.scan` over stacked
params, so compile time does not grow with depth.

Params are a plain nested dict (no Flax boxes); `param_logical_axes(cfg)` returns the
same tree with a tuple of logical axis names per leaf, which `r1jax.sharding` maps to
mesh axes. The model returns *final hidden states* (after the last RMSNorm); the LM head
is applied separately by `logits()` (sampler) or by the fused log-prob kernel (losses),
so training never materialises [batch, seq, vocab] logits.

Shapes: B batch, T query length, S key length, D hidden, H query heads, K kv heads,
R = H // K, Dh head dim, F MLP width, V vocab, L layers, P prompt length,
G samples per prompt, N completion-cache length.

Reference: Touvron et al. 2023 (Llama), Qwen2 technical report 2024, Qwen3 technical report
2025; numerics follow `transformers`' LlamaModel / Qwen2Model / Qwen3Model (float32 RMSNorm,
rotate-half RoPE).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import sharding as shd
from r1jax.models.config import ModelConfig
from r1jax.models.lora import LoraDense, lora_targeted

Params = dict[str, Any]

_NEG_INF = -0.7 * float(np.finfo(np.float32).max)


# --------------------------------------------------------------------------- RoPE
def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies [Dh/2] float32, with Llama-3 scaling when configured."""
  dim = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  rs = cfg.rope_scaling
  if rs is not None:
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * np.pi / inv_freq
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor)
    scaled = np.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
    mid = (1 - smooth) * scaled / rs.factor + smooth * scaled
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = np.where(is_mid, mid, scaled)
  return inv_freq.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotate-half RoPE. x: [..., T, heads, Dh]; positions: [..., T] int32."""
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [..., T, Dh/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[..., None, :]  # [..., T, 1, Dh]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


# --------------------------------------------------------------------------- layers
def constrain_hidden(x):
  """Hidden states at a layer boundary ([B, T, D], [B, G, N, D], [B, G, D] or a tuple of
  them) pinned by logical name: batch over the batch axes, the rest by the rules
  (`r1jax.sharding.constrain`; the identity outside an activation_sharding context)."""
  if isinstance(x, tuple):
    return tuple(constrain_hidden(u) for u in x)
  axes = ("batch",) + (None,) * (x.ndim - 3) + ("length", "activation_embed")
  return shd.constrain(x, axes)


def _init(axes, std=0.02):
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class RMSNorm(nn.Module):
  """RMSNorm computed in float32, scaled in the compute dtype (as transformers does)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), self.cfg.jnp_param_dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.cfg.rms_norm_eps)).astype(self.cfg.jnp_dtype)
    return y * scale.astype(self.cfg.jnp_dtype)


def _dense(cfg, features, axis, kernel_axes, bias_axes=None, name=None):
  if lora_targeted(cfg, name):  # same kernel/bias params and numerics, plus the adapter
    return LoraDense(cfg, features, axis, kernel_axes, bias_axes, _init(kernel_axes), name=name)
  return nn.DenseGeneral(
      features=features, axis=axis, use_bias=bias_axes is not None, dtype=cfg.jnp_dtype,
      param_dtype=cfg.jnp_param_dtype, kernel_init=_init(kernel_axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, bias_axes or ()), name=name)


class DecodeInputs(NamedTuple):
  """Per-step attention context for the cached decode path (see `decode_step`)."""
  prompt_mask: jax.Array  # [B, P] bool, True at real prompt tokens
  step: jax.Array  # int32 scalar: number of completion tokens already in the cache


class ExtendInputs(NamedTuple):
  """Attention context of `extend`: T new tokens per sample after its own cached ones."""
  prompt_mask: jax.Array  # [B, P] bool, True at real prompt tokens
  cached: jax.Array  # [B, G] int32: completion slots already in the cache, per sample


class GroupedInputs(NamedTuple):
  """Attention context of the shared-prompt training forward (see `forward_grouped`)."""
  prompt_mask: jax.Array  # [B, 1, P, P] bool causal + valid mask of the prompts
  prompt_valid: jax.Array  # [B, P] bool, True at real prompt tokens


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE.

  Two modes: full-sequence (training / prefill: `mask` is [B, 1, T, S] bool) and
  cached decode (`decode` is a DecodeInputs and `cache` holds this layer's
  prompt and completion keys/values); `decode` an ExtendInputs runs a chunk of new tokens
  per sample against a ragged cache (`extend`). Both return (output, (k, v)) where k, v are the
  keys/values of the *input* tokens, so callers can write them into a cache.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask=None, decode: Optional[DecodeInputs] = None, cache=None):
    cfg = self.cfg
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    bias = ("q_heads", "head_dim") if cfg.attention_bias else None
    kv_bias = ("kv_heads", "head_dim") if cfg.attention_bias else None
    q_proj = _dense(cfg, (H, Dh), -1, ("embed", "q_heads", "head_dim"), bias, "q_proj")
    k_proj = _dense(cfg, (K, Dh), -1, ("embed", "kv_heads", "head_dim"), kv_bias, "k_proj")
    v_proj = _dense(cfg, (K, Dh), -1, ("embed", "kv_heads", "head_dim"), kv_bias, "v_proj")
    o_proj = _dense(cfg, cfg.hidden_size, (-2, -1), ("q_heads", "head_dim", "embed"), None,
                    "o_proj")
    if cfg.qk_norm:  # Qwen3: RMSNorm over head_dim of each q / k head, before RoPE
      q_norm, k_norm, q_dense, k_dense = (RMSNorm(cfg, name="q_norm"), RMSNorm(cfg, name="k_norm"),
                                          q_proj, k_proj)
      q_proj, k_proj = (lambda u: q_norm(q_dense(u))), (lambda u: k_norm(k_dense(u)))
    inv_freq = rope_inv_freq(cfg)
    scale = Dh ** -0.5
    R = H // K
    f32 = jnp.float32

    if isinstance(mask, GroupedInputs):
      return self._grouped(x, positions, mask, q_proj, k_proj, v_proj, o_proj, inv_freq)

    q = apply_rope(q_proj(x), positions, inv_freq)
    k = apply_rope(k_proj(x), positions, inv_freq)
    v = v_proj(x)

    if isinstance(decode, ExtendInputs):  # ragged chunks (tool rollouts, r1jax.tool_rollout)
      o = self._extend(q, k, v, decode, cache)
    elif decode is None:
      # x: [B, T, D]; q: [B, T, H, Dh]; k, v: [B, S=T, K, Dh]
      B, T = q.shape[:2]
      qg = q.reshape(B, T, K, R, Dh)
      s = jnp.einsum("btkrd,bskd->bkrts", qg, k, preferred_element_type=f32) * scale
      s = jnp.where(mask[:, :, None], s, _NEG_INF)  # mask [B,1,T,S] -> [B,1,1,T,S]
      p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
      o = jnp.einsum("bkrts,bskd->btkrd", p, v, preferred_element_type=f32)
      o = o.reshape(B, T, H, Dh).astype(cfg.jnp_dtype)
    else:
      # x: [B, G, D] (one new token per sample); q: [B, G, H, Dh]; k, v: [B, G, K, Dh]
      # cache: prompt_k/v [B, P, K, Dh] shared by the G samples of a prompt,
      #        gen_k/v [B, G, N, K, Dh] per sample (slots >= step are not yet written).
      B, G = q.shape[:2]
      qg = q.reshape(B, G, K, R, Dh)
      s_p = jnp.einsum("bgkrd,bpkd->bgkrp", qg, cache["prompt_k"], preferred_element_type=f32)
      s_g = jnp.einsum("bgkrd,bgnkd->bgkrn", qg, cache["gen_k"], preferred_element_type=f32)
      s_s = jnp.einsum("bgkrd,bgkd->bgkr", qg, k, preferred_element_type=f32)[..., None]
      N = s_g.shape[-1]
      s_p = jnp.where(decode.prompt_mask[:, None, None, None, :], s_p, _NEG_INF)
      s_g = jnp.where(jnp.arange(N) < decode.step, s_g, _NEG_INF)
      s = jnp.concatenate([s_p, s_g, s_s], axis=-1) * scale
      p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
      P = s_p.shape[-1]
      p_p, p_g, p_s = p[..., :P], p[..., P:P + N], p[..., P + N]
      o = (jnp.einsum("bgkrp,bpkd->bgkrd", p_p, cache["prompt_v"], preferred_element_type=f32)
           + jnp.einsum("bgkrn,bgnkd->bgkrd", p_g, cache["gen_v"], preferred_element_type=f32)
           + p_s[..., None].astype(f32) * v[:, :, :, None, :].astype(f32))
      o = o.reshape(B, G, H, Dh).astype(cfg.jnp_dtype)

    return o_proj(o), (k, v)

  def _extend(self, q, k, v, ctx: ExtendInputs, cache):
    """Chunk attention: q [B, G, T, H, Dh], k, v [B, G, T, K, Dh] of T new tokens per sample
    attend to the shared prompt, to the sample's first `ctx.cached` completion slots and,
    causally, to the chunk itself. Returns [B, G, T, H, Dh]."""
    cfg = self.cfg
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    R, f32, scale = H // K, jnp.float32, Dh ** -0.5
    B, G, T = q.shape[:3]
    qg = q.reshape(B, G, T, K, R, Dh)
    s_p = jnp.einsum("bgtkrd,bpkd->bgkrtp", qg, cache["prompt_k"], preferred_element_type=f32)
    s_g = jnp.einsum("bgtkrd,bgnkd->bgkrtn", qg, cache["gen_k"], preferred_element_type=f32)
    s_c = jnp.einsum("bgtkrd,bgskd->bgkrts", qg, k, preferred_element_type=f32)
    P, N = s_p.shape[-1], s_g.shape[-1]
    s_p = jnp.where(ctx.prompt_mask[:, None, None, None, None, :], s_p, _NEG_INF)
    s_g = jnp.where((jnp.arange(N) < ctx.cached[..., None])[:, :, None, None, None, :], s_g,
                    _NEG_INF)
    s_c = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s_c, _NEG_INF)
    p = jax.nn.softmax(jnp.concatenate([s_p, s_g, s_c], axis=-1) * scale, axis=-1).astype(v.dtype)
    o = (jnp.einsum("bgkrtp,bpkd->bgtkrd", p[..., :P], cache["prompt_v"], preferred_element_type=f32)
         + jnp.einsum("bgkrtn,bgnkd->bgtkrd", p[..., P:P + N], cache["gen_v"],
                      preferred_element_type=f32)
         + jnp.einsum("bgkrts,bgskd->bgtkrd", p[..., P + N:], v, preferred_element_type=f32))
    return o.reshape(B, G, T, H, Dh).astype(cfg.jnp_dtype)

  def _grouped(self, x, positions, ctx: GroupedInputs, q_proj, k_proj, v_proj, o_proj, inv_freq):
    """Prompts [B, P, D] once, their G completions [B, G, N, D] attending to them."""
    cfg = self.cfg
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    R, f32, scale = H // K, jnp.float32, Dh ** -0.5
    xp, xc = x
    pp, pc = positions
    qp, kp, vp = apply_rope(q_proj(xp), pp, inv_freq), apply_rope(k_proj(xp), pp, inv_freq), v_proj(xp)
    qc, kc, vc = apply_rope(q_proj(xc), pc, inv_freq), apply_rope(k_proj(xc), pc, inv_freq), v_proj(xc)
    B, P = xp.shape[:2]
    G, N = xc.shape[1:3]
    # Prompt queries: causal self-attention within the prompt.
    q = qp.reshape(B, P, K, R, Dh)
    s = jnp.einsum("btkrd,bskd->bkrts", q, kp, preferred_element_type=f32) * scale
    s = jnp.where(ctx.prompt_mask[:, :, None], s, _NEG_INF)
    p = jax.nn.softmax(s, axis=-1).astype(vp.dtype)
    op = jnp.einsum("bkrts,bskd->btkrd", p, vp, preferred_element_type=f32)
    op = op.reshape(B, P, H, Dh).astype(cfg.jnp_dtype)
    # Completion queries: the shared prompt (real tokens) + causal within the completion.
    # Completion padding sits after the real tokens, so causality alone keeps it unseen.
    q = qc.reshape(B, G, N, K, R, Dh)
    s_p = jnp.einsum("bgnkrd,bpkd->bgkrnp", q, kp, preferred_element_type=f32)
    s_c = jnp.einsum("bgnkrd,bgmkd->bgkrnm", q, kc, preferred_element_type=f32)
    s_p = jnp.where(ctx.prompt_valid[:, None, None, None, None, :], s_p, _NEG_INF)
    s_c = jnp.where(jnp.tril(jnp.ones((N, N), bool)), s_c, _NEG_INF)
    p = jax.nn.softmax(jnp.concatenate([s_p, s_c], axis=-1) * scale, axis=-1).astype(vc.dtype)
    oc = (jnp.einsum("bgkrnp,bpkd->bgnkrd", p[..., :P], vp, preferred_element_type=f32)
          + jnp.einsum("bgkrnm,bgmkd->bgnkrd", p[..., P:], vc, preferred_element_type=f32))
    oc = oc.reshape(B, G, N, H, Dh).astype(cfg.jnp_dtype)
    return (o_proj(op), o_proj(oc)), None


class MLP(nn.Module):
  """SwiGLU MLP: down(silu(gate(x)) * up(x))."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    g = _dense(cfg, cfg.intermediate_size, -1, ("embed", "mlp"), None, "gate_proj")(x)
    u = _dense(cfg, cfg.intermediate_size, -1, ("embed", "mlp"), None, "up_proj")(x)
    return _dense(cfg, cfg.hidden_size, -1, ("mlp", "embed"), None, "down_proj")(nn.silu(g) * u)


class Block(nn.Module):
  """Pre-norm decoder block; scanned over layers (carry = hidden states)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, decode, cache):
    # x is an array, or a (prompt, completion) pair in the grouped training forward.
    each = lambda f, v: tuple(f(u) for u in v) if isinstance(v, tuple) else f(v)
    add = lambda a, b: tuple(u + w for u, w in zip(a, b)) if isinstance(a, tuple) else a + b
    x = constrain_hidden(x)
    attn_norm = RMSNorm(self.cfg, name="attn_norm")
    h, kv = Attention(self.cfg, name="attn")(each(attn_norm, x), positions, mask, decode, cache)
    x = add(x, h)
    mlp_norm, mlp = RMSNorm(self.cfg, name="mlp_norm"), MLP(self.cfg, name="mlp")
    x = add(x, each(lambda u: mlp(mlp_norm(u)), x))
    return constrain_hidden(x), kv


class Decoder(nn.Module):
  """Token embedding -> L blocks (nn.scan) -> final RMSNorm. Returns hidden states."""
  cfg: ModelConfig
  remat: bool = False

  @nn.compact
  def __call__(self, tokens, positions, mask=None, decode=None, cache=None):
    cfg = self.cfg
    embedding = self.param("embedding", _init(("vocab", "embed")),
                           (cfg.vocab_size, cfg.hidden_size), cfg.jnp_param_dtype)
    embed = lambda t: jnp.take(embedding, t, axis=0).astype(cfg.jnp_dtype)
    x = tuple(embed(t) for t in tokens) if isinstance(tokens, tuple) else embed(tokens)
    x = constrain_hidden(x)
    block = Block
    if self.remat:
      block = nn.remat(Block, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
    stack = nn.scan(block, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0), out_axes=0,
                    length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    x, kv = stack(cfg, name="layers")(x, positions, mask, decode, cache)
    final_norm = RMSNorm(cfg, name="final_norm")
    x = constrain_hidden(tuple(final_norm(u) for u in x) if isinstance(x, tuple)
                         else final_norm(x))
    if not cfg.tie_word_embeddings:
      # Created here so init() builds it; applied by `logits()`.
      self.param("lm_head", _init(("embed", "vocab")), (cfg.hidden_size, cfg.vocab_size),
                 cfg.jnp_param_dtype)
    return x, kv


# --------------------------------------------------------------------------- functional API
def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
  """Random params (normal std 0.02, norms = 1) as a plain nested dict of arrays."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  variables = Decoder(cfg).init(key, tokens, tokens, jnp.ones((1, 1, 1, 1), bool))
  return nn.meta.unbox(variables["params"])


def param_logical_axes(cfg: ModelConfig) -> Params:
  """Tree like the params whose leaves are tuples of logical axis names.

  Axis names: vocab, embed, q_heads, kv_heads, head_dim, mlp, norm, layers, and lora_rank
  (LoRA adapters; no sharding rule maps it, so it stays replicated).
  """
  tokens = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(
      lambda: Decoder(cfg).init(jax.random.key(0), tokens, tokens, jnp.ones((1, 1, 1, 1), bool)))
  return jax.tree.map(lambda b: tuple(b.names), abstract["params"],
                      is_leaf=lambda b: isinstance(b, nn.LogicallyPartitioned))


def param_shapes(cfg: ModelConfig) -> Params:
  """Tree of jax.ShapeDtypeStruct of the params (no allocation)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(
      lambda: Decoder(cfg).init(jax.random.key(0), tokens, tokens, jnp.ones((1, 1, 1, 1), bool)))
  return nn.meta.unbox(abstract["params"])


def attention_mask(segment_ids: jax.Array) -> jax.Array:
  """Causal, same-segment attention mask [B, 1, T, T] bool from segment ids [B, T].

  Segment id 0 marks padding (attends nowhere, is attended by nobody); positive ids
  separate packed sequences.
  """
  T = segment_ids.shape[-1]
  causal = jnp.tril(jnp.ones((T, T), bool))
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  valid = (segment_ids != 0)[:, None, :]
  return (causal[None] & same & valid)[:, None]


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array,
            positions: Optional[jax.Array] = None, segment_ids: Optional[jax.Array] = None,
            *, remat: bool = False, return_kv: bool = False,
            dropout_rng: Optional[jax.Array] = None):
  """Training / prefill forward pass.

  Args:
    params: the param tree.
    cfg: model config.
    tokens: [B, T] int32 token ids.
    positions: [B, T] int32 RoPE positions (default: 0..T-1 within each row).
    segment_ids: [B, T] int32; 0 = padding, >0 = sequence id (default: all ones).
    remat: recompute each block in the backward pass (saves activation memory).
    return_kv: also return the per-layer keys/values ([L, B, T, K, Dh] each).
    dropout_rng: key of the LoRA dropout (cfg.lora.dropout > 0; None = no dropout).

  Returns:
    hidden: [B, T, D] final hidden states in cfg.dtype (after the last RMSNorm);
    with return_kv, (hidden, (k, v)).
  """
  B, T = tokens.shape
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  if segment_ids is None:
    segment_ids = jnp.ones((B, T), jnp.int32)
  hidden, kv = Decoder(cfg, remat=remat).apply({"params": params}, tokens, positions,
                                               attention_mask(segment_ids),
                                               rngs=_dropout_rngs(dropout_rng))
  return (hidden, kv) if return_kv else hidden


def forward_grouped(params: Params, cfg: ModelConfig, prompt_tokens: jax.Array,
                    prompt_lengths: jax.Array, completion_tokens: jax.Array, *,
                    remat: bool = False, dropout_rng: Optional[jax.Array] = None):
  """Training forward of G completions per prompt with each prompt computed once.

  Equivalent to `forward` on the B*G sequences prompt_b + completion_bg (same hidden
  states, same gradients), but the prompt positions are run, and back-propagated, once
  per group instead of G times: the cost is B*P + B*G*N tokens instead of B*G*(P+N).

  Args:
    prompt_tokens: [B, P] int32, right-padded prompts.
    prompt_lengths: [B] int32 real prompt tokens (>= 1).
    completion_tokens: [B, G, N] int32 (padding after each completion's end is fine).
    remat: recompute each block in the backward pass.
    dropout_rng: key of the LoRA dropout (cfg.lora.dropout > 0; None = no dropout).

  Returns:
    prompt_hidden [B, P, D] and completion_hidden [B, G, N, D] (after the final norm).
    The hidden state that predicts completion token j is prompt_hidden[b, len_b - 1] for
    j = 0 and completion_hidden[b, g, j - 1] for j > 0 (see `completion_predictors`).
  """
  B, P = prompt_tokens.shape
  G, N = completion_tokens.shape[1:]
  valid = jnp.arange(P)[None, :] < prompt_lengths[:, None]
  pp = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
  pc = (prompt_lengths[:, None, None] + jnp.arange(N, dtype=jnp.int32)[None, None, :])
  pc = jnp.broadcast_to(pc, (B, G, N))
  ctx = GroupedInputs(attention_mask(valid.astype(jnp.int32)), valid)
  (hp, hc), _ = Decoder(cfg, remat=remat).apply({"params": params},
                                                (prompt_tokens, completion_tokens), (pp, pc), ctx,
                                                rngs=_dropout_rngs(dropout_rng))
  return hp, hc


def _dropout_rngs(key):
  return None if key is None else {"dropout": key}


def completion_predictors(prompt_hidden: jax.Array, prompt_lengths: jax.Array,
                          completion_hidden: jax.Array) -> jax.Array:
  """[B, G, N, D] hidden states whose next-token distribution gives completion token j."""
  last = jnp.take_along_axis(prompt_hidden, (prompt_lengths - 1)[:, None, None], axis=1)
  B, G, N, D = completion_hidden.shape
  first = jnp.broadcast_to(last[:, None], (B, G, 1, D))
  return jnp.concatenate([first, completion_hidden[:, :, :-1]], axis=2)


def lm_head_weight(params: Params, cfg: ModelConfig) -> jax.Array:
  """LM head matrix [D, V] (the transposed embedding when tied)."""
  return params["embedding"].T if cfg.tie_word_embeddings else params["lm_head"]


def logits(params: Params, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
  """Float32 logits [..., V] from hidden states [..., D]. Use only where a few positions
  are needed (sampling); losses use the fused log-prob path instead."""
  w = lm_head_weight(params, cfg)
  return jnp.einsum("...d,dv->...v", hidden, w.astype(hidden.dtype),
                    preferred_element_type=jnp.float32)


# --------------------------------------------------------------------------- KV cache
class KVCache(NamedTuple):
  """KV cache for group decoding, a pytree.

  prompt_k, prompt_v: [L, B, P, K, Dh]; written once by `prefill`, shared by the G samples.
  gen_k, gen_v: [L, B, G, N, K, Dh]; slot n holds completion token n of each sample.
  prompt_mask: [B, P] bool, True at real (non-padding) prompt tokens.

  The decode step attends to all N completion slots (masking those not yet written), so its
  cost follows N, not the completion budget: the sampler starts with a small N and doubles
  it with `grow_cache` only when the samples reach the end of the cache.
  """
  prompt_k: jax.Array
  prompt_v: jax.Array
  gen_k: jax.Array
  gen_v: jax.Array
  prompt_mask: jax.Array


def prefill(params: Params, cfg: ModelConfig, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
            num_samples: int, max_new_tokens: int) -> tuple[jax.Array, KVCache]:
  """Run the prompts once and build a cache for `num_samples` continuations each.

  Args:
    prompt_tokens: [B, P] int32, right-padded.
    prompt_lengths: [B] int32, number of real tokens per row (>= 1).
    num_samples: G, continuations per prompt (they share the prompt cache).
    max_new_tokens: N, completion slots in the cache.

  Returns:
    last_hidden: [B, D] hidden state at each prompt's last real token;
    cache: a KVCache with empty completion slots.
  """
  B, P = prompt_tokens.shape
  seg = (jnp.arange(P)[None, :] < prompt_lengths[:, None]).astype(jnp.int32)
  hidden, (k, v) = forward(params, cfg, prompt_tokens, segment_ids=seg, return_kv=True)
  last = jnp.take_along_axis(hidden, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]
  L, K, Dh = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
  gen = jnp.zeros((L, B, num_samples, max_new_tokens, K, Dh), k.dtype)
  return last, KVCache(k, v, gen, gen, seg.astype(bool))


def grow_cache(cache: KVCache, slots: int) -> KVCache:
  """The same cache with `slots` completion slots: slots [0, N) kept, the new ones zeros.

  A power-of-two growth schedule (the sampler's) copies each filled slot at most
  log2(budget / first size) times, O(generated tokens) in all, and keeps the cache and the
  per-step attention within 2x of the longest sample so far instead of the budget.

  Raises:
    ValueError: `slots` is smaller than the cache's N.
  """
  n = cache.gen_k.shape[3]
  if slots < n:
    raise ValueError(f"grow_cache: slots={slots} is smaller than the cache's {n} slots")
  pad = ((0, 0),) * 3 + ((0, slots - n),) + ((0, 0),) * 2
  return cache._replace(gen_k=jnp.pad(cache.gen_k, pad), gen_v=jnp.pad(cache.gen_v, pad))


def decode_step(params: Params, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array,
                cache: KVCache, step: jax.Array) -> tuple[jax.Array, KVCache]:
  """One decode step for every sample: attend to prompt + completion cache, append k/v.

  Args:
    tokens: [B, G] int32, the token each sample emitted at completion index `step`.
    positions: [B, G] int32 RoPE positions of those tokens (prompt length + step).
    cache: KVCache whose completion slots [0, step) are filled.
    step: int32 scalar, completion index of `tokens` (slot they are written to).

  Returns:
    hidden: [B, G, D] final hidden states of `tokens`;
    cache: the cache with slot `step` written.
  """
  layer_cache = {"prompt_k": cache.prompt_k, "prompt_v": cache.prompt_v,
                 "gen_k": cache.gen_k, "gen_v": cache.gen_v}
  hidden, (k, v) = Decoder(cfg).apply({"params": params}, tokens, positions, None,
                                      DecodeInputs(cache.prompt_mask, step), layer_cache)
  # k, v: [L, B, G, K, Dh] -> slot `step` of [L, B, G, N, K, Dh] (in place inside a loop).
  idx = (0, 0, 0, step, 0, 0)
  gen_k = jax.lax.dynamic_update_slice(cache.gen_k, k[:, :, :, None], idx)
  gen_v = jax.lax.dynamic_update_slice(cache.gen_v, v[:, :, :, None], idx)
  return hidden, cache._replace(gen_k=gen_k, gen_v=gen_v)


def extend(params: Params, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array,
           cache: KVCache, cached: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Forward of a chunk of T new tokens per sample against a ragged completion cache.

  Sample (b, g) has its own number of cached completion slots `cached[b, g]` (tool
  rollouts append tool outputs of different lengths, r1jax.tool_rollout); its chunk attends
  to the shared prompt, to its slots [0, cached) and causally within the chunk. T = 1 is a
  decode step with per-sample cache lengths. Nothing is written: the caller scatters k, v
  into the slots it chooses.

  Args:
    tokens: [B, G, T] int32 chunk tokens.
    positions: [B, G, T] int32 RoPE positions (prompt length + completion slot).
    cache: KVCache (prompt part [L, B, P, K, Dh], completion part [L, B, G, N, K, Dh]).
    cached: [B, G] int32 completion slots already filled per sample (<= N).

  Returns:
    hidden [B, G, T, D] (after the final norm) and the chunk's keys and values,
    k, v [L, B, G, T, K, Dh].
  """
  layer_cache = {"prompt_k": cache.prompt_k, "prompt_v": cache.prompt_v,
                 "gen_k": cache.gen_k, "gen_v": cache.gen_v}
  hidden, (k, v) = Decoder(cfg).apply({"params": params}, tokens, positions, None,
                                      ExtendInputs(cache.prompt_mask, cached), layer_cache)
  return hidden, k, v
