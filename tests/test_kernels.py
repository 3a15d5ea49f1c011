"""Fused log-prob / entropy / KL (kernels/): every implementation against a naive
log_softmax reference written here, values and gradients; Pallas kernels in interpret mode;
their TPU (Mosaic) and GPU (Triton) lowerings; the memory bound of forward + backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.kernels import logprob as K
from r1jax.kernels import logprob_bwd_gpu, logprob_bwd_tpu, logprob_gpu, logprob_tpu

N, D, V = 96, 128, 1031  # divides no block: 1031 = 8 * 128 + 7 (partial last vocab tile)
IMPLS = ["chunked", "pallas_tpu", "pallas_gpu"]


def _inputs(seed=0, n=N, d=D, v=V, scale=1.0, dtype=jnp.float32):
  k = jax.random.split(jax.random.key(seed), 6)
  h = (jax.random.normal(k[0], (n, d)) * scale).astype(dtype)
  w = (jax.random.normal(k[1], (d, v)) / np.sqrt(d)).astype(dtype)
  y = jax.random.randint(k[2], (n,), 0, v)
  y = y.at[: n // 4].set(jax.random.randint(k[3], (n // 4,), (v // 128) * 128, v))  # last tile
  ref = jax.random.normal(k[4], (n,)) - 7.0
  mask = jax.random.bernoulli(k[5], 0.8, (n,)).astype(jnp.float32)
  return h, w, y, ref, mask


def naive(h, w, y, temperature, ref=None, mask=None):
  """Reference: full float32 logits, log_softmax, explicit entropy and k3 KL."""
  logits = jnp.dot(h.astype(jnp.float32), w.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST) / temperature
  logsm = jax.nn.log_softmax(logits, axis=-1)
  logp = logsm[jnp.arange(h.shape[0]), y]
  ent = -jnp.sum(jnp.exp(logsm) * logsm, axis=-1)
  kl = None if ref is None else jnp.exp(ref - logp) - (ref - logp) - 1.0
  if mask is not None:
    logp, ent = logp * mask, ent * mask
    kl = None if kl is None else kl * mask
  return logp, ent, kl


def _objective(outs, coefs):
  return sum(jnp.sum(c * o) for c, o in zip(coefs, outs) if o is not None)


def _fused_fn(impl, temperature, *, entropy, kl, mask, **kw):
  def f(h, w, y, ref, m):
    o = K.fused_logprob(h, w, y, temperature=temperature, return_entropy=entropy,
                        ref_logprob=ref if kl else None, mask=m if mask else None,
                        impl=impl, **kw)
    return o.logprob, o.entropy, o.kl
  return f


def _naive_fn(temperature, *, entropy, kl, mask):
  def f(h, w, y, ref, m):
    lp, ent, k = naive(h, w, y, temperature, ref if kl else None, m if mask else None)
    return lp, ent if entropy else None, k
  return f


def _check(impl, temperature, *, entropy, kl, mask, inputs, atol, grad_atol, **kw):
  h, w, y, ref, m = inputs
  fused = _fused_fn(impl, temperature, entropy=entropy, kl=kl, mask=mask, **kw)
  ref_fn = _naive_fn(temperature, entropy=entropy, kl=kl, mask=mask)
  got, want = fused(h, w, y, ref, m), ref_fn(h, w, y, ref, m)
  for g, r in zip(got, want):
    assert (g is None) == (r is None)
    if g is not None:
      assert g.dtype == jnp.float32 and g.shape == (h.shape[0],)
      np.testing.assert_allclose(g, r, atol=atol, rtol=atol)
  coefs = [jax.random.normal(jax.random.key(i + 10), (h.shape[0],)) for i in range(3)]
  gf = jax.grad(lambda h, w: _objective(fused(h, w, y, ref, m), coefs), argnums=(0, 1))(h, w)
  gr = jax.grad(lambda h, w: _objective(ref_fn(h, w, y, ref, m), coefs), argnums=(0, 1))(
      h.astype(jnp.float32), w.astype(jnp.float32))
  for a, b in zip(gf, gr):
    assert a.dtype == h.dtype
    # Absolute error relative to the gradient's scale (x100 logits give entries in the
    # hundreds next to entries near 0).
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=grad_atol * scale,
                               rtol=grad_atol)
  return got


@pytest.mark.parametrize("impl", IMPLS)
def test_logprob_only_matches_naive(impl):
  _check(impl, 1.0, entropy=False, kl=False, mask=False, inputs=_inputs(), atol=2e-5,
         grad_atol=2e-5, chunk_size=40, block_tokens=32 if impl == "pallas_gpu" else 0,
         block_vocab=128)


@pytest.mark.parametrize("impl", IMPLS)
def test_entropy_kl_mask_temperature_match_naive(impl):
  got = _check(impl, 0.7, entropy=True, kl=True, mask=True, inputs=_inputs(1), atol=2e-5,
               grad_atol=2e-5, chunk_size=1000, block_tokens=16, block_vocab=256)
  _, _, _, _, m = _inputs(1)
  assert np.all(np.asarray(got[0])[np.asarray(m) == 0] == 0)  # masked: exactly 0
  assert np.all(np.asarray(got[2]) >= -1e-6)  # k3 >= 0


@pytest.mark.parametrize("impl", IMPLS)
def test_large_logits_do_not_overflow(impl):
  inputs = _inputs(2, scale=100.0)  # |logits| in the hundreds: exp() would overflow
  # (No KL here: pi_ref / pi_theta itself is e^hundreds for these log-probs.)
  # fp32 logits in the hundreds carry ~1e-4 absolute rounding (summation order differs
  # between the kernel and XLA's dot): tolerances scale with that.
  got = _check(impl, 1.0, entropy=True, kl=False, mask=False, inputs=inputs, atol=1e-3,
               grad_atol=5e-4, chunk_size=32)
  assert np.abs(np.asarray(got[0])).max() > 50  # the logits really are huge
  assert all(np.isfinite(np.asarray(g)).all() for g in got if g is not None)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_inputs(impl):
  inputs = _inputs(3, dtype=jnp.bfloat16)
  # Forward: bf16 products are exact in f32 accumulation (tight); backward casts d logits
  # to bf16 for the matmuls (as all bf16 training does): looser.
  _check(impl, 1.0, entropy=True, kl=False, mask=False, inputs=inputs, atol=1e-4,
         grad_atol=3e-2, chunk_size=64)


# ---------------------------------------------------------------------- data parallel
# Layouts of the presets on 8 devices: mesh, the batch (token) axes, the LM head's layout.
LAYOUTS = {"dp": ({"data": 8, "fsdp": 1, "tensor": 1}, "data", P()),
           "fsdp": ({"data": 1, "fsdp": 8, "tensor": 1}, "fsdp", P("fsdp", None)),
           "fsdp_tp": ({"data": 1, "fsdp": 4, "tensor": 2}, "fsdp", P("fsdp", "tensor")),
           "2d": ({"data": 2, "fsdp": 2, "tensor": 2}, ("data", "fsdp"), P("fsdp", "tensor"))}
SN, SV = 96, 1040  # V = 8 x 128 + 16: a partial last tile; divisible by tensor = 2


def _sharded_case(layout, impl, temperature=0.8, **kw):
  from r1jax import sharding as shd
  from r1jax import compiled as compiled_lib
  shape, axes, w_spec = LAYOUTS[layout]
  mesh = shd.make_mesh(shape)
  h, w, y, ref, m = _inputs(6, n=SN, v=SV)
  f = _fused_fn(impl, temperature, entropy=True, kl=True, mask=True, mesh=mesh,
                token_axes=axes, weight_spec=w_spec, chunk_size=12, **kw)
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  args = (put(h, P(axes, None)), put(w, w_spec), put(y, P(axes)), put(ref, P(axes)),
          put(m, P(axes)))
  got = jax.jit(f)(*args)
  want = _naive_fn(temperature, entropy=True, kl=True, mask=True)(h, w, y, ref, m)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, atol=2e-5, rtol=2e-5)
  coefs = [jax.random.normal(jax.random.key(i + 20), (SN,)) for i in range(3)]
  obj = lambda f_: (lambda h, w, *a: _objective(f_(h, w, *a), coefs))
  grad = jax.jit(jax.grad(obj(f), argnums=(0, 1)))
  gh, gw = grad(*args)
  rh, rw = jax.grad(obj(_naive_fn(temperature, entropy=True, kl=True, mask=True)),
                    argnums=(0, 1))(h, w, y, ref, m)
  np.testing.assert_allclose(gh, rh, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(gw, rw, atol=2e-5, rtol=2e-5)
  hlo = grad.lower(*args).compile().as_text()
  return mesh, compiled_lib.collectives(hlo)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_data_parallel_equals_unsharded_and_never_gathers_tokens(layout, impl):
  """Forward and backward per device on its own tokens: same values and gradients as the
  unsharded reference, and the compiled forward + backward gathers no hidden states or
  logits (only the LM head [D, V] and [tokens] statistics)."""
  mesh, colls = _sharded_case(layout, impl)
  batch_shards = 8 // mesh.shape["tensor"]
  for c in colls:
    if c.op == "all-gather":
      # The LM head or a slice of it ([D / k, V / t]; no token count divides D here,
      # chunks are 12 tokens), or at most this device's batch rows.
      head = len(c.shape) == 2 and D % c.shape[0] == 0 and SV % c.shape[1] == 0
      assert head or c.elements <= SN * D // batch_shards, c
      if impl == "chunked" and mesh.shape["tensor"] > 1:  # vocabulary-parallel
        assert c.elements <= D * SV // mesh.shape["tensor"], c
  if impl == "chunked" and layout != "dp":
    # d W is reduce-scattered into the head's FSDP layout, not all-reduced whole.
    assert any(c.op == "reduce-scatter" for c in colls), colls


def test_data_parallel_pallas_forward_and_backward():
  """The Pallas forward (TPU kernel, interpret mode) under the same shard_map."""
  _sharded_case("2d", "pallas_tpu", block_vocab=256)


def test_token_split_axes():
  from r1jax import sharding as shd
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert K.split_axes(mesh, ("data", "fsdp"), 96) == ("data", "fsdp", "tensor")
  assert K.split_axes(mesh, "data", 96) == ("data", "fsdp", "tensor")
  assert K.split_axes(mesh, ("data", "fsdp"), 4) == ("data", "fsdp")  # 4 / 4 = 1 left
  with pytest.raises(ValueError, match="do not split"):
    K.split_axes(mesh, ("data", "fsdp"), 6)
  with pytest.raises(ValueError, match="not axes of the mesh"):
    K.split_axes(mesh, "batch", 8)
  h, w, y, _, _ = _inputs(7, n=4)
  out = K.fused_logprob(h, w, y, impl="chunked", mesh=mesh, token_axes=("data", "fsdp"))
  np.testing.assert_allclose(out.logprob, naive(h, w, y, 1.0)[0], atol=2e-5)


def test_mixed_precision_computes_in_the_hidden_dtype():
  """bf16 hidden states with an f32 head: products in bf16 (the head rounded to bf16),
  f32 accumulation; d hidden in bf16, d head in f32."""
  h, w, y, _, _ = _inputs(8, dtype=jnp.float32)
  h = h.astype(jnp.bfloat16)
  w_bf = w.astype(jnp.bfloat16).astype(jnp.float32)
  for impl in ("chunked", "naive", "pallas_tpu"):
    lp = K.fused_logprob(h, w, y, impl=impl).logprob
    np.testing.assert_allclose(lp, naive(h, w_bf, y, 1.0)[0], atol=1e-4)
    assert np.abs(np.asarray(lp) - np.asarray(naive(h, w, y, 1.0)[0])).max() > 1e-3
  gh, gw = jax.grad(lambda h, w: jnp.sum(K.fused_logprob(h, w, y, impl="chunked").logprob),
                    argnums=(0, 1))(h, w)
  assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.float32
  rh, rw = jax.grad(lambda h, w: jnp.sum(naive(h, w, y, 1.0)[0]), argnums=(0, 1))(
      h.astype(jnp.float32), w_bf)
  np.testing.assert_allclose(np.asarray(gw), rw, atol=2e-2 * float(np.abs(rw).max()))


def test_token_logprobs_batched_form():
  h, w, y, _, _ = _inputs(5)
  lp, ent = K.token_logprobs(h.reshape(8, 12, D), w, y.reshape(8, 12), temperature=0.9,
                             chunk_size=7)
  want = naive(h, w, y, 0.9)
  np.testing.assert_allclose(lp.reshape(-1), want[0], atol=2e-5)
  np.testing.assert_allclose(ent.reshape(-1), want[1], atol=2e-5)


def accelerator_target(platform):
  """Context naming the accelerator that a cross-platform lowering targets: a 1-device
  abstract mesh whose AbstractDevice is an H100 / a TPU v5p. JAX >= 0.11's Triton lowering
  reads the GPU's compute capability from it (without one, on a machine with no GPU, it
  raises "No supported GPU devices found"); JAX 0.10 lowers without it."""
  kind, plat = {"tpu": ("TPU v5p", "tpu"), "cuda": ("NVIDIA H100", "gpu")}[platform]
  device = jax.sharding.AbstractDevice(device_kind=kind, num_cores=None, platform=plat)
  mesh = jax.sharding.AbstractMesh((1,), ("target",), (jax.sharding.AxisType.Auto,),
                                   abstract_device=device)
  return jax.sharding.use_abstract_mesh(mesh)


def _export(f, platform, call, *args):
  with accelerator_target(platform):
    exp = export.export(jax.jit(f), platforms=[platform],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call(call)])(*args)
  return exp.mlir_module()


@pytest.mark.parametrize("fwd,bwd,platform,call", [
    (logprob_tpu, logprob_bwd_tpu, "tpu", "tpu_custom_call"),
    (logprob_gpu, logprob_bwd_gpu, "cuda", "__gpu$xla.gpu.triton"),
])
def test_pallas_kernels_lower_for_tpu_and_gpu(fwd, bwd, platform, call):
  """Mosaic / Triton lowering of the forward and backward kernels on this CPU machine
  (cross-platform export): block shapes, tiling rules and every op in the kernel bodies
  must be accepted by the backend's Pallas lowering. (Compiling the emitted kernel needs
  the accelerator.)"""
  S = jax.ShapeDtypeStruct
  for n, d, v, dt in [(96, 100, 1031, jnp.float32), (16384, 1536, 151936, jnp.bfloat16)]:
    args = (S((n, d), dt), S((d, v), dt), S((n,), jnp.int32))
    stats = (S((n,), jnp.float32),) * 4
    assert call in _export(lambda h, w, y: fwd.forward(h, w, y, temperature=0.7), platform,
                           call, *args)
    filt = 1e-4 if n == 96 else 0.0
    mlir = _export(lambda h, w, y, *st: bwd.backward(h, w, y, *st, temperature=0.7,
                                                     grad_filter=filt),
                   platform, call, *args, *stats)
    assert call in mlir


def test_tpu_tiles_per_chip_generation():
  assert logprob_tpu.chip_generation("TPU v5 lite") == "v5e"
  assert logprob_tpu.chip_generation("TPU v5p") == "v5p"
  assert logprob_tpu.chip_generation("TPU v6 lite") == "v6e"
  assert logprob_tpu.chip_generation("cpu") == ""
  with accelerator_target("tpu"):  # a v5p
    assert logprob_tpu.tiles(16384, 151936) == logprob_tpu.CHIP_TILES["v5p"]
  assert logprob_tpu.tiles(20, 300) == (24, 384)  # shrunk to the problem


@pytest.mark.parametrize("impl", ["pallas_tpu", "pallas_gpu"])
def test_pallas_backward_hidden_size_not_a_multiple_of_64(impl):
  """D = 72 (padded once to 128 / 64 lanes outside the kernels), 40 tokens in tiles of
  16 (a partial last token tile), masked tokens, temperature."""
  inputs = _inputs(11, n=40, d=72, v=300)
  _check(impl, 0.8, entropy=True, kl=True, mask=True, inputs=inputs, atol=2e-5,
         grad_atol=2e-5, block_tokens=16, block_vocab=128)


@pytest.mark.parametrize("impl", ["pallas_tpu", "pallas_gpu"])
def test_gradient_filtering(impl):
  """grad_filter (off by default): a threshold above every |d logit| zeroes both
  gradients, and a small one (2**-12) stays within threshold-sized error of the exact
  gradient."""
  h, w, y, _, _ = _inputs(12, n=32, d=64, v=400)
  w = w.at[:, 256:384].add(-6.0)  # a tile with almost no probability mass

  def grads(thr):
    loss = lambda h, w: jnp.sum(K.fused_logprob(h, w, y, impl=impl, block_tokens=16,
                                                block_vocab=128, grad_filter=thr).logprob)
    return jax.grad(loss, argnums=(0, 1))(h, w)

  exact = jax.grad(lambda h, w: jnp.sum(naive(h, w, y, 1.0)[0]), argnums=(0, 1))(h, w)
  assert all(float(jnp.abs(g).max()) == 0 for g in grads(1e3))
  for a, b in zip(grads(2.0 ** -12), exact):
    err = float(jnp.abs(a - b).max())
    assert err <= 2.0 ** -12 * 32 * 8, err  # |d l| < thr on the skipped tiles, |h| < 8
  with pytest.raises(ValueError, match="grad_filter"):
    K.fused_logprob(h, w, y, impl="chunked", grad_filter=1e-3)


def test_fwd_bwd_memory_far_below_naive():
  """XLA's buffer assignment of the compiled forward + backward (nothing is run)."""
  n, d, v = 4096, 64, 32768
  args = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
          jax.ShapeDtypeStruct((n,), jnp.int32))

  def temp_bytes(impl):
    loss = lambda h, w, y: jnp.sum(K.fused_logprob(h, w, y, impl=impl, chunk_size=256,
                                                   return_entropy=True).logprob)
    c = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
    return c.memory_analysis().temp_size_in_bytes

  naive_b, chunked_b = temp_bytes("naive"), temp_bytes("chunked")
  assert naive_b >= n * v * 4  # at least one [N, V] float32 buffer
  assert chunked_b * 10 <= naive_b, (chunked_b, naive_b)


def test_dispatch_and_errors():
  assert K.resolve_impl("auto", "cpu") == "chunked"
  assert K.resolve_impl("auto", "tpu") == "pallas_tpu"
  assert K.resolve_impl("auto", "gpu") == "pallas_gpu"
  assert K.resolve_impl("pallas", "cpu") == "pallas_tpu"
  assert K.resolve_impl("naive", "gpu") == "naive"
  assert K.resolve_backward("auto", "pallas_gpu") == "pallas_gpu"
  assert K.resolve_backward("auto", "chunked") == "chunked"
  assert K.resolve_backward("chunked", "pallas_tpu") == "chunked"
  assert K.resolve_backward("pallas", "chunked", "gpu") == "pallas_gpu"
  with pytest.raises(ValueError, match="logprob_backward"):
    K.resolve_backward("fast", "chunked")
  h, w, y, _, _ = _inputs()
  with pytest.raises(ValueError, match="logprob_impl"):
    K.fused_logprob(h, w, y, impl="fast")
  with pytest.raises(ValueError, match="do not match"):
    K.fused_logprob(h, w.T, y)
  with pytest.raises(ValueError, match="temperature"):
    K.fused_logprob(h, w, y, temperature=0.0)
  with pytest.raises(ValueError, match="mask"):
    K.fused_logprob(h, w, y, mask=jnp.ones(3))
  with pytest.raises(ValueError, match="multiples of"):
    logprob_tpu.forward(h, w, y, block_vocab=100)
  with pytest.raises(ValueError, match="powers of two"):
    logprob_gpu.forward(h, w, y, block_vocab=96)


def test_grpo_log_probs_same_with_every_impl():
  """The GRPO stage's completion log-probs (tiny model) through each implementation."""
  from r1jax import models
  from r1jax.models.config import tiny_config
  from r1jax.stages.grpo import completion_logprobs
  cfg = tiny_config(vocab_size=300)
  params = models.init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  mb = {"prompt_tokens": jnp.asarray(rng.integers(0, 300, (2, 8)), jnp.int32),
        "prompt_lengths": jnp.asarray([8, 5], jnp.int32),
        "completion": jnp.asarray(rng.integers(0, 300, (2, 3, 6)), jnp.int32)}

  def run(impl):
    # The Pallas backward is tested above; here the stage path with the XLA one (fast).
    kern = dict(impl=impl, backward="chunked", chunk_size=16, block_tokens=0, block_vocab=0)
    f = lambda p: completion_logprobs(p, cfg, mb, temperature=0.8, kernel=kern, remat=False)

    @jax.jit  # one compile instead of op-by-op dispatch of the whole model
    def value_and_vjp(p):
      (lp, ent), vjp = jax.vjp(f, p)
      return lp, ent, vjp((jnp.ones_like(lp), jnp.ones_like(ent)))[0]
    return value_and_vjp(params)

  want = run("naive")
  for impl in ("chunked", "pallas_tpu"):
    got = run(impl)
    np.testing.assert_allclose(got[0], want[0], atol=2e-5)
    np.testing.assert_allclose(got[1], want[1], atol=2e-5)
    for a, b in zip(jax.tree.leaves(got[2]), jax.tree.leaves(want[2])):
      np.testing.assert_allclose(a, b, atol=2e-5)


def test_vocabulary_chunks_with_a_partial_last_chunk():
  """The chunked forward / backward over vocabulary chunks (3 x 300 + 131 columns): the
  partial statistics merge exactly and each d W slice is written once."""
  _check("chunked", 0.9, entropy=True, kl=True, mask=True, inputs=_inputs(9), atol=2e-5,
         grad_atol=2e-5, chunk_size=40, vocab_chunk=300)


def test_vocabulary_parallel_with_vocabulary_chunks():
  """fsdp_tp: each tensor shard owns 520 columns, streamed in chunks of 256 + 8."""
  _sharded_case("fsdp_tp", "chunked", vocab_chunk=256)


def test_merge_partials_equals_whole_vocabulary():
  from r1jax.kernels import logprob_layout as lay
  from r1jax.kernels import logprob_xla as xla
  lg = jax.random.normal(jax.random.key(3), (5, 40)) * 4
  y = jnp.array([0, 7, 39, 20, 21])
  parts = [xla.tile_stats(lg[:, a:b], y - a) for a, b in ((0, 8), (8, 21), (21, 40))]
  got = lay.merge_partials(*(jnp.stack(x) for x in zip(*parts)))
  want = xla.tile_stats(lg, y)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_gpu_forward_vocabulary_splits_merge_exactly():
  """The (token tile, vocabulary split) grid: 3 and 7 splits of 16 tiles (7 leaves an
  empty last split) give the statistics of the whole vocabulary."""
  from r1jax.kernels import logprob_xla as xla
  h, w, y, _, _ = _inputs(13, n=24, d=72, v=500)
  want = xla.tile_stats(naive_logits(h, w), y)
  for splits in (3, 7):
    got = logprob_gpu.forward(h, w, y, block_tokens=16, block_vocab=32, splits=splits,
                              interpret=True)
    for g, r in zip(got, want):
      np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)
  assert logprob_gpu.vocab_splits(32, 1187) == 9  # 2,048 tokens / 64: 32 x 9 >= 2 x 132
  assert logprob_gpu.vocab_splits(256, 1187) == 2


def naive_logits(h, w):
  return jnp.dot(h.astype(jnp.float32), w.astype(jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("kernel", [logprob_tpu, logprob_gpu])
def test_targets_outside_the_slice_give_no_target_logit(kernel):
  """A head slice (vocabulary-parallel shard or chunk) whose partial last tile does not
  hold the target: target logit 0, lse and entropy of the slice unchanged."""
  from r1jax.kernels import logprob_xla as xla
  h, w, _, _, _ = _inputs(14, n=16, d=64, v=200)
  y = jnp.array([-5, 199, 200, 255, 300, 0] + [7] * 10)  # 200..255: the last tile's padding
  lse, ent, tgt = kernel.forward(h, w, y, block_tokens=16, block_vocab=128, interpret=True)
  want = xla.tile_stats(naive_logits(h, w), y)
  np.testing.assert_allclose(lse, want[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(ent, want[1], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(tgt, want[2], atol=1e-5, rtol=1e-5)
  assert np.all(np.asarray(tgt)[[0, 2, 3, 4]] == 0)
