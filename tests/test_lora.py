"""LoRA (r1jax.models.lora, models.peft_format, train.adapters) against independent references.

References: the base model's own forward and GRPO loss (a fresh adapter has B = 0); the
gradient of a param-space merge W + s A B written here with jnp (another computation of the
same function); transformers + peft's logits of the tiny Qwen3 base with a random PEFT
adapter and after peft's merge_and_unload, and the adapter file peft wrote
(tools/qwen3_lora_reference.py, tests/data); peft itself loading our export (slow, needs
torch); an uninterrupted run for resume.
"""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

import reward_fixtures  # noqa: F401  registers the test_length reward
from r1jax import models, sharding
from r1jax.losses import grpo as G
from r1jax.models import lora, peft_format
from r1jax.models.config import LoraConfig
from r1jax.stages import grpo as stage
from r1jax.train import adapters as adapters_lib

DATA = pathlib.Path(__file__).parent / "data"
REF = np.load(DATA / "qwen3_lora_ref.npz")
CFG = models.tiny_config()
LCFG = CFG.replace(lora=LoraConfig(rank=4, alpha=8.0))
KERNEL = dict(chunk_size=4)
FORWARD = jax.jit(models.forward, static_argnums=1)


def logits(params, cfg, tokens):
  return np.asarray(models.logits(params, cfg, FORWARD(params, cfg, jnp.asarray(tokens))))


@pytest.fixture(scope="module")
def base():
  return models.init_params(CFG, jax.random.key(0))


def random_adapters(cfg, seed, std=0.05):
  """Adapters with A from init_adapters and a random (non-zero) B."""
  ad = lora.init_adapters(cfg, jax.random.key(seed))
  leaves, tree = jax.tree_util.tree_flatten_with_path(ad)
  rng = np.random.default_rng(seed)
  out = [x if jax.tree_util.keystr(p).endswith("['lora_a']")
         else jnp.asarray(std * rng.standard_normal(x.shape), x.dtype) for p, x in leaves]
  return jax.tree_util.tree_unflatten(tree, out)


def grpo_batch(seed, B=8, Gn=2, P=8, N=6):
  rng = np.random.RandomState(seed)
  prompts = rng.randint(3, CFG.vocab_size, (B, P)).astype(np.int32)
  lengths = rng.randint(2, P + 1, B).astype(np.int32)
  for b in range(B):
    prompts[b, lengths[b]:] = 0
  comp = rng.randint(3, CFG.vocab_size, (B, Gn, N)).astype(np.int32)
  clen = rng.randint(1, N + 1, (B, Gn))
  mask = (np.arange(N) < clen[..., None]).astype(np.float32)
  w, denom = G.loss_weights(mask.reshape(B * Gn, -1), "sequence_mean_token_mean", N)
  batch = {"prompt_tokens": prompts, "prompt_lengths": lengths, "completion": comp,
           "weights": w.reshape(mask.shape),
           "advantages": rng.normal(size=(B, Gn)).astype(np.float32),
           "ref_logp": -rng.uniform(0.5, 6, comp.shape).astype(np.float32)}
  return batch, denom


def grpo_loss_fn(cfg):
  return stage.make_loss_fn(cfg, G.GRPOConfig(beta=0.04), temperature=1.0, kernel=KERNEL,
                            remat=False, num_iterations=1)


# ---------------------------------------------------------------------- the model
def test_zero_b_equals_the_base(base):
  ad = lora.init_adapters(LCFG, jax.random.key(1))
  a, b = ad["layers"]["attn"]["q_proj"]["lora_a"], ad["layers"]["attn"]["q_proj"]["lora_b"]
  assert float(jnp.abs(a).max()) > 0.05 and float(jnp.abs(b).max()) == 0
  assert a.shape == (2, 64, 4) and b.shape == (2, 4, 4, 16)
  full = lora.combine(base, ad)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 11)))
  np.testing.assert_array_equal(logits(full, LCFG, tokens), logits(base, CFG, tokens))
  batch, denom = grpo_batch(0)
  mb = jax.tree.map(jnp.asarray, batch)
  want, wm = jax.jit(grpo_loss_fn(CFG))(base, mb, denom)
  got, gm = jax.jit(lora.adapter_loss(grpo_loss_fn(LCFG)))(ad, mb, denom, base)
  assert float(want) != 0
  np.testing.assert_array_equal(got, want)
  for k in wm:
    np.testing.assert_array_equal(gm[k], wm[k])


def test_split_combine_and_axes(base):
  full = lora.combine(base, lora.init_adapters(LCFG, jax.random.key(1)))
  b, a = lora.split(full)
  assert jax.tree.structure(b) == jax.tree.structure(base)
  assert jax.tree.structure(models.param_shapes(LCFG)) == jax.tree.structure(full)
  base_axes, ad_axes = lora.logical_axes(LCFG)
  assert base_axes == models.param_logical_axes(CFG)
  assert ad_axes["layers"]["attn"]["o_proj"] == {
      "lora_a": ("layers", "q_heads", "head_dim", "lora_rank"),
      "lora_b": ("layers", "lora_rank", "embed")}
  assert set(ad_axes["layers"]["mlp"]) == {"gate_proj", "up_proj", "down_proj"}
  only_qv = CFG.replace(lora=LoraConfig(rank=2, targets=("v", "q")))
  assert only_qv.lora.targets == ("q", "v")
  assert set(lora.split(models.param_shapes(only_qv))[1]["layers"]["attn"]) == {"q_proj", "v_proj"}
  with pytest.raises(ValueError, match="both a base param and an adapter"):
    lora.combine({"x": {"lora_a": 1}}, {"x": {"lora_a": 2}})


def _merged_forward_loss(cfg_base, loss_fn):
  """The same function computed through a param-space merge W + s A B (jnp, differentiable)."""
  s = LCFG.lora.scale

  def fn(adapters, mb, denom, base):
    params = jax.tree.map(lambda x: x, base)
    for path in lora.adapter_paths(LCFG):
      node, ad = params, adapters
      for k in path:
        node, ad = node[k], ad[k]
      w, a, b = node["kernel"], ad["lora_a"], ad["lora_b"]
      L, r = a.shape[0], a.shape[-1]
      node["kernel"] = w + s * jnp.matmul(a.reshape(L, -1, r), b.reshape(L, r, -1)).reshape(w.shape)
    return loss_fn(params, mb, denom)
  return fn


def test_adapter_gradients_match_a_param_space_merge(base):
  ad = random_adapters(LCFG, 3)
  batch, denom = grpo_batch(1)
  mb = jax.tree.map(jnp.asarray, batch)
  got = jax.jit(jax.grad(lambda a: lora.adapter_loss(grpo_loss_fn(LCFG))(a, mb, denom, base)[0]))(ad)
  want = jax.jit(jax.grad(
      lambda a: _merged_forward_loss(CFG, grpo_loss_fn(CFG))(a, mb, denom, base)[0]))(ad)
  assert float(optax.global_norm(want)) > 1e-3
  for (p, x), y in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(p))


def test_dropout_only_with_a_key(base):
  cfg = CFG.replace(lora=LoraConfig(rank=4, alpha=8.0, dropout=0.5))
  full = lora.combine(base, random_adapters(cfg, 4))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 7)))
  h = lambda **kw: np.asarray(FORWARD(full, cfg, tokens, **kw))
  no_drop = np.asarray(FORWARD(full, LCFG, tokens))
  np.testing.assert_array_equal(h(), no_drop)  # sampler / reference path: no dropout
  k1, k2 = jax.random.key(1), jax.random.key(2)
  np.testing.assert_array_equal(h(dropout_rng=k1), h(dropout_rng=k1))
  assert np.abs(h(dropout_rng=k1) - no_drop).max() > 1e-3
  assert np.abs(h(dropout_rng=k1) - h(dropout_rng=k2)).max() > 1e-3


def test_config_block():
  block = lambda **kw: ConfigDict(dict(dict(rank=0, alpha=32.0, dropout=0.0,
                                            targets="q,k,v,o,gate,up,down", base_dtype=""), **kw))
  assert lora.from_config(block()) is None and lora.from_config(None) is None
  lc = lora.from_config(block(rank=16, targets="up, q"))
  assert lc == LoraConfig(rank=16, alpha=32.0, dropout=0.0, targets=("q", "up"))
  assert lc.scale == 2.0
  with pytest.raises(ValueError, match="lora.targets"):
    lora.from_config(block(rank=4, targets="q,qkv"))
  with pytest.raises(ValueError, match="lora.dropout"):
    lora.from_config(block(rank=4, dropout=1.0))
  with pytest.raises(ValueError, match="lora.rank"):
    lora.from_config(block(rank=-1))
  assert lora.base_dtype(block(), "float32") == "float32"
  assert lora.base_dtype(block(base_dtype="bfloat16"), "float32") == "bfloat16"
  with pytest.raises(ValueError, match="lora.base_dtype"):
    lora.base_dtype(block(base_dtype="int8"), "float32")


# ---------------------------------------------------------------------- training
def test_only_adapters_train_sharded_fsdp(base):
  """8 devices under fsdp vs 1 device: adapters sharded like their projections, the frozen
  base bit-identical after the update, optimizer state over the adapters only, the reference
  the base itself (no copy)."""
  assert len(jax.devices()) == 8
  batch, denom = grpo_batch(2)
  results = []
  for shape, devices, preset in (({"data": 1}, jax.devices()[:1], "dp"),
                                 ({"data": 1, "fsdp": 8, "tensor": 1}, None, "fsdp")):
    mesh = sharding.make_mesh(shape, devices)
    policy = adapters_lib.TrainedPolicy.create(CFG, LCFG.lora, "float32")
    tr = policy.trainer(mesh, grpo_loss_fn(LCFG), optax.adam(1e-2), 1, sharding.PRESETS[preset])
    state, ref = policy.init(tr, jax.tree.map(np.asarray, base), 0, reference=True)
    assert ref is policy.frozen and policy.base_cfg == CFG
    ad0 = jax.device_get(state.params)
    state, m = tr.update(state, batch, denom, policy.frozen)
    ad1 = jax.device_get(state.params)
    # First update: B leaves from 0; A gets no gradient while B = 0 (dL/dA = s x^T dy B^T).
    for p, x in jax.tree_util.tree_leaves_with_path(ad1):
      moved = float(np.abs(x - _get(ad0, p)).max())
      assert (moved > 1e-3) if p[-1].key == "lora_b" else moved == 0, jax.tree_util.keystr(p)
    state, m = tr.update(state, batch, denom, policy.frozen)
    assert jax.tree.structure(state.params) == jax.tree.structure(lora.split(
        models.param_shapes(LCFG))[1])
    n_ad = sum(x.size for x in jax.tree.leaves(state.params))
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
    assert n_opt == 2 * n_ad  # Adam's two moments of the adapters, nothing of the base
    for x, y in zip(jax.tree.leaves(policy.frozen), jax.tree.leaves(base)):
      np.testing.assert_array_equal(x, y)
    moved = [float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(jax.device_get(
        state.params)), jax.tree.leaves(ad1))]
    assert min(moved) > 1e-3  # second update: every adapter leaf, A included
    if devices is None:
      a = state.params["layers"]["attn"]["q_proj"]["lora_a"]  # [L, D, r], D over fsdp
      assert len(a.sharding.device_set) == 8 and a.sharding.spec[1] == "fsdp"
      assert policy.frozen["layers"]["attn"]["q_proj"]["kernel"].sharding.spec[1] == "fsdp"
    results.append((jax.device_get(state.params), jax.device_get(m)))
  (p1, m1), (p8, m8) = results
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)


# ---------------------------------------------------------------------- PEFT and export
def test_peft_reference_merged_export_and_adapter_files(tmp_path):
  cfg, params = models.from_pretrained(DATA / "qwen3_tiny")
  lcfg, ad = peft_format.load_adapters(DATA / "qwen3_tiny_lora", cfg)
  assert lcfg.lora == LoraConfig(rank=4, alpha=8.0, dropout=0.0,
                                 targets=("q", "k", "v", "o", "gate", "up", "down"))
  lg = lambda p, c: logits(p, c, REF["ids"])
  full = lora.combine(params, jax.tree.map(jnp.asarray, ad))
  adapter_logits = lg(full, lcfg)
  assert np.abs(REF["lora_logits"] - REF["qwen3_tiny_logits"]).max() > 0.5  # adapter matters
  assert np.abs(adapter_logits - REF["lora_logits"]).max() < 2e-5  # transformers + peft
  # Merged HF export: loads back as a plain Qwen3 equal to the adapter forward.
  mcfg, merged = lora.merge(lcfg, full)
  assert mcfg == cfg
  out = models.save_pretrained(mcfg, merged, tmp_path / "merged")
  cfg2, p2 = models.from_pretrained(out)
  np.testing.assert_allclose(lg(p2, cfg2), REF["lora_merged_logits"], atol=2e-5, rtol=0)
  np.testing.assert_allclose(lg(p2, cfg2), adapter_logits, atol=2e-5, rtol=0)
  with pytest.raises(ValueError, match="merge them first"):
    models.save_pretrained(lcfg, full, tmp_path / "nope")
  # Our PEFT files: the tensors peft wrote, and a config that reads back the same.
  from safetensors.numpy import load_file
  d = peft_format.save_adapters(lcfg, ad, tmp_path / "peft", base_model="qwen3_tiny")
  ours = load_file(str(d / peft_format.WEIGHTS_FILE))
  theirs = load_file(str(DATA / "qwen3_tiny_lora" / peft_format.WEIGHTS_FILE))
  assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in ours
  assert set(ours) == set(theirs)
  for k in theirs:
    np.testing.assert_array_equal(ours[k], theirs[k])
  assert peft_format.read_config(d) == lcfg.lora
  conf = json.loads((d / peft_format.CONFIG_FILE).read_text())
  assert conf["peft_type"] == "LORA" and conf["r"] == 4 and conf["lora_alpha"] == 8.0


def test_peft_adapter_errors(tmp_path):
  cfg = models.load_config(DATA / "qwen3_tiny")
  src = json.loads((DATA / "qwen3_tiny_lora" / "adapter_config.json").read_text())
  for change, match in (({"use_dora": True}, "use_dora"), ({"use_rslora": True}, "use_rslora"),
                        ({"target_modules": ["lm_head"]}, "lm_head"),
                        ({"target_modules": "all-linear"}, "target_modules")):
    d = tmp_path / str(len(list(tmp_path.iterdir())))
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(dict(src, **change)))
    with pytest.raises(ValueError, match=match):
      peft_format.load_adapters(d, cfg)
  d = tmp_path / "wrong_base"
  d.mkdir()
  (d / "adapter_config.json").write_text(json.dumps(src))
  os.symlink(DATA / "qwen3_tiny_lora" / "adapter_model.safetensors",
             d / "adapter_model.safetensors")
  with pytest.raises(ValueError, match="has shape"):
    peft_format.load_adapters(d, cfg.replace(intermediate_size=64))


@pytest.mark.slow  # imports torch, transformers and peft (about 20 s)
def test_peft_loads_our_adapters_onto_the_hf_base(tmp_path):
  torch = pytest.importorskip("torch")
  peft = pytest.importorskip("peft")
  transformers = pytest.importorskip("transformers")
  cfg, params = models.from_pretrained(DATA / "qwen3_tiny")
  lcfg = cfg.replace(lora=LoraConfig(rank=2, alpha=6.0, targets=("q", "v", "o", "down")))
  ad = random_adapters(lcfg, 5, std=0.2)
  d = peft_format.save_adapters(lcfg, ad, tmp_path / "peft", base_model=str(DATA / "qwen3_tiny"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(DATA / "qwen3_tiny"),
                                                         dtype=torch.float32)
  pm = peft.PeftModel.from_pretrained(hf, str(d)).eval()
  with torch.no_grad():
    want = pm(torch.from_numpy(REF["ids"].astype(np.int64))).logits.numpy()
  full = lora.combine(params, ad)
  got = logits(full, lcfg, REF["ids"])
  assert np.abs(want - REF["qwen3_tiny_logits"]).max() > 0.1  # the adapter was applied
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def _get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


# ---------------------------------------------------------------------- the GRPO stage
def _stage_config(run_dir, **overrides):
  from r1jax import configs
  c = configs.load("grpo:tiny")
  c.run_dir = str(run_dir)
  c.rewards.spec = "test_length:1.0,format:0.5"
  c.eval.at_start = False
  c.data.eval_size = 0  # no held-out evaluation: three short runs
  c.checkpoint.every_steps = 1
  c.lora.rank = 4
  c.lora.dropout = 0.1
  c.optim.learning_rate = 1e-2
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def _checkpoint_params(run_dir):
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"), item_names=("state", "extra"))
  out = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), extra=ocp.args.JsonRestore()))
  mngr.close()
  return out["state"][0] if isinstance(out["state"], (list, tuple)) else out["state"]["params"]


def _rows(c):
  return [json.loads(l) for l in open(os.path.join(c.run_dir, "metrics.jsonl")) if '"loss"' in l]


def test_grpo_with_lora_trains_adapters_and_exports(tmp_path):
  """One 2-step run: the reference is the base (KL 0 while B = 0), checkpoints hold the
  adapters only, the run directory loads as the merged model, the PEFT export holds the
  checkpoint's adapters."""
  a = _stage_config(tmp_path / "a", steps=2)
  stage.run(a)
  ra = _rows(a)
  # Step 1: B = 0, so the policy is the base (the reference): KL 0. Step 2: adapters moved.
  assert ra[0]["kl"] == 0 and ra[1]["kl"] > 0 and ra[0]["grad_norm"] > 0
  pa = _checkpoint_params(a.run_dir)
  assert {k for p, _ in jax.tree_util.tree_leaves_with_path(pa) for k in [p[-1].key]} == {
      "lora_a", "lora_b"}  # checkpoints hold the adapters only
  loaded = models.load(a.run_dir)
  assert loaded.config.lora is None
  base = models.load("tiny-random", tiny=a.tiny_model.to_dict(), seed=a.seed).params
  lcfg = loaded.config.replace(lora=lora.from_config(a.lora))
  _, want = lora.merge(lcfg, lora.combine(base, pa))
  for x, y in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(x, y)
  _, ad = peft_format.load_adapters(os.path.join(a.run_dir, adapters_lib.PEFT_DIR),
                                    loaded.config)
  for x, y in zip(jax.tree.leaves(ad), jax.tree.leaves(pa)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # three short stage runs
def test_grpo_with_lora_resumes_exactly(tmp_path):
  """2 steps uninterrupted == 1 step, then resume to 2 (adapters, metrics, dropout masks)."""
  a = _stage_config(tmp_path / "a", steps=2)
  stage.run(a)
  b = _stage_config(tmp_path / "b", steps=1)
  stage.run(b)
  b.steps, b.resume = 2, True
  stage.run(b)
  ra, rb = _rows(a), _rows(b)
  assert [r["step"] for r in rb] == [1, 2]
  for key in ("loss", "kl", "grad_norm", "reward"):
    assert ra[-1][key] == rb[-1][key], key
  for x, y in zip(jax.tree.leaves(_checkpoint_params(a.run_dir)),
                  jax.tree.leaves(_checkpoint_params(b.run_dir))):
    np.testing.assert_array_equal(x, y)
