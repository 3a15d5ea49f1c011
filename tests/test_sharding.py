"""Sharding rules (r1jax.sharding): indivisible dimensions are an error or a logged,
configured replication, never a silent one; activation constraints by logical name; meshes
from jax.make_mesh and hybrid (ICI x DCN) device grids."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from r1jax import models
from r1jax import sharding as shd
from r1jax.models.config import ModelConfig, tiny_config

# SmolLM2-135M's shapes (9 query heads, 3 KV heads); no weights needed.
SMOLLM2 = ModelConfig(architecture="llama", vocab_size=49152, hidden_size=576,
                      intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
                      head_dim=64, tie_word_embeddings=True)


def _shardings(cfg, mesh, rules):
  return shd.tree_shardings(models.param_logical_axes(cfg), models.param_shapes(cfg), mesh,
                            rules)


def test_indivisible_rule_is_an_error_naming_the_param():
  mesh = shd.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  with pytest.raises(ValueError, match=r"kv_heads=tensor: mesh axis 'tensor' \(size 2\) does "
                                       r"not divide dim 2 \(size 3\) of .*k_proj.*kernel.*"
                                       r"on_indivisible"):
    _shardings(SMOLLM2, mesh, shd.rules_for("fsdp_tp"))
  with pytest.raises(ValueError, match=r"q_heads=tensor.*size 9.*o_proj"):
    _shardings(SMOLLM2, mesh, shd.rules_for("fsdp_tp", "kv_heads="))
  # The fix the message suggests: no tensor parallelism for the attention heads.
  sh = _shardings(SMOLLM2, mesh, shd.rules_for("fsdp_tp", "q_heads=;kv_heads="))
  assert sh["layers"]["attn"]["q_proj"]["kernel"].spec == P(None, "fsdp", None, None)
  assert sh["layers"]["mlp"]["up_proj"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert sh["embedding"].spec == P("tensor", "fsdp")


def test_replicate_policy_is_explicit_and_logged(caplog):
  mesh = shd.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  rules = shd.with_policy(shd.rules_for("fsdp_tp"), "replicate")
  with caplog.at_level(logging.WARNING):
    sh = _shardings(SMOLLM2, mesh, dict(rules))  # the policy survives a dict() copy
  assert sh["layers"]["attn"]["q_proj"]["kernel"].spec == P(None, "fsdp", None, None)
  assert sh["layers"]["attn"]["k_proj"]["kernel"].spec == P(None, "fsdp", None, None)
  assert sh["layers"]["mlp"]["up_proj"]["kernel"].spec == P(None, "fsdp", "tensor")
  text = caplog.text
  assert "q_heads=tensor" in text and "kv_heads=tensor" in text and "replicated" in text
  with pytest.raises(ValueError, match="on_indivisible must be one of"):
    shd.with_policy(rules, "ignore")


def test_divisible_rules_and_each_mesh_axis_once():
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = shd.rules_for("fsdp_tp")
  assert shd.logical_to_spec(("batch", "length", "embed"), (8, 16, 64), mesh, rules) == \
      P(("data", "fsdp"), None, None)  # fsdp taken by batch: embed stays whole
  assert shd.logical_to_spec(("embed", "mlp"), (64, 128), mesh, rules) == P("fsdp", "tensor")
  with pytest.raises(ValueError, match=r"batch=data\+fsdp: mesh axis 'fsdp'"):
    shd.logical_to_spec(("batch",), (6,), mesh, rules)  # 6 = 2 x 3: data fits, fsdp not
  assert shd.logical_to_spec(("batch",), (6,), mesh, rules, on_indivisible="unconstrained") \
      == P(P.UNCONSTRAINED)


def test_config_policy_key():
  base = dict(preset="fsdp_tp", rules="", sampler_preset="", sampler_rules="")
  rules = shd.config_rules(ConfigDict({"sharding": base}))
  assert rules[shd.ON_INDIVISIBLE] == ("error",)  # the default when the key is absent
  rules = shd.config_rules(ConfigDict({"sharding": {**base, "on_indivisible": "replicate"}}))
  assert rules[shd.ON_INDIVISIBLE] == ("replicate",)
  with pytest.raises(ValueError, match="on_indivisible"):
    shd.config_rules(ConfigDict({"sharding": {**base, "on_indivisible": "maybe"}}))


def test_make_mesh_is_jax_make_mesh_with_auto_axes():
  mesh = shd.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  want = jax.make_mesh((2, 2, 2), shd.MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  assert [d.id for d in mesh.devices.flat] == [d.id for d in want.devices.flat]
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  one = shd.make_mesh({"data": 1}, jax.devices()[:1])
  assert one.devices.size == 1
  with pytest.raises(ValueError, match="needs 6 devices"):
    shd.make_mesh({"data": 3, "fsdp": 2, "tensor": 1})
  with pytest.raises(ValueError, match="unknown mesh axes"):
    shd.make_mesh({"pipeline": 2})


class _SliceDevice:
  """A stand-in for a multi-slice TPU device: what create_hybrid_device_mesh reads."""

  def __init__(self, i, slice_index):
    self.id, self.slice_index, self.process_index = i, slice_index, slice_index
    self.platform, self.device_kind = "cpu", "cpu"

  def __repr__(self):
    return f"D{self.id}@s{self.slice_index}"


def test_hybrid_mesh_puts_dcn_axes_across_slices():
  # 2 slices of 8 chips: data = 2 x 2 (2 across DCN), fsdp = 4 inside a slice.
  devices = [_SliceDevice(i, i // 8) for i in range(16)]
  grid = shd.hybrid_device_grid([4, 4, 1], {"data": 2}, devices)
  assert grid.shape == (4, 4, 1)
  slices = np.vectorize(lambda d: d.slice_index)(grid)
  assert (slices[:2] == 0).all() and (slices[2:] == 1).all()  # DCN = the outer data blocks
  assert sorted(d.id for d in grid.flat) == list(range(16))
  with pytest.raises(ValueError, match="must divide"):
    shd.hybrid_device_grid([4, 4, 1], {"fsdp": 3}, devices)
  with pytest.raises(ValueError, match="slices"):
    shd.hybrid_device_grid([4, 4, 1], {"data": 4}, devices)  # 4 slices asked, 2 present
  # Real devices without slice_index: processes are the granules (one here).
  mesh = shd.make_mesh({"data": 8, "fsdp": 1, "tensor": 1, "dcn": {"data": 1}})
  assert dict(mesh.shape)["data"] == 8
  with pytest.raises(ValueError, match="slices"):
    shd.make_mesh({"data": 8, "fsdp": 1, "tensor": 1, "dcn": {"data": 2}})


def test_activations_constrained_by_logical_name():
  """Within activation_sharding, the decoder pins its layer-boundary hidden states to the
  batch layout (here despite params sharded on embed, whose layout XLA would otherwise
  be free to copy onto the activations); outside it the forward is unconstrained."""
  cfg = tiny_config()
  params = models.init_params(cfg, jax.random.key(0))
  mesh = shd.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  rules = shd.rules_for("fsdp")
  p_sh = _shardings(cfg, mesh, rules)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 12)), jnp.int32)
  fwd = lambda p, t: models.forward(p, cfg, t)
  f = jax.jit(shd.with_activation_sharding(fwd, mesh, rules),
              in_shardings=(p_sh, shd.batch_sharding(mesh, 2, rules)))
  # One constraint per boundary: embedding, block input / output (scanned once), final norm.
  assert f.lower(params, tokens).as_text().count("sharding_constraint") == 4
  assert jax.jit(fwd).lower(params, tokens).as_text().count("sharding_constraint") == 0
  out = f(params, tokens)
  assert out.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None, None)), 3)
  np.testing.assert_allclose(out, jax.jit(fwd)(params, tokens), atol=1e-5)
  # An indivisible batch (5 rows) is left to XLA, not an error, not forced replication.
  with shd.activation_sharding(mesh, rules):
    x = jax.jit(lambda x: shd.constrain(x, ("batch", "length", "activation_embed")))(
        jnp.ones((5, 3, 64)))
  assert x.shape == (5, 3, 64)
  assert shd.constrain(jnp.ones(3), ("batch",)) is not None  # no context: identity
