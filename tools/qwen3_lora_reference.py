"""Regenerate the Qwen3 and LoRA reference data of tests/test_qwen3.py and tests/test_lora.py
with transformers and peft (the default test suite then needs neither torch nor peft).

  pip install -e .[reference]     # transformers, torch, peft
  python tools/qwen3_lora_reference.py [--out tests/data]

Writes, all float32 and written by the libraries themselves (no hub access):
  qwen3_tiny/            a random `Qwen3ForCausalLM(Qwen3Config(...))` with an untied LM
                         head, head_dim != hidden / heads, rope_theta 1e6 (save_pretrained);
  qwen3_tiny_tied/       the same architecture with tied embeddings;
  qwen3_tiny_lora/       a PEFT LoRA adapter (r=4, alpha=8, all seven projections, A and B
                         random: init_lora_weights=False) on qwen3_tiny (PeftModel.save_pretrained);
  qwen3_lora_ref.npz     token ids, the float32 logits of each model and of the base with the
                         adapter (PeftModel forward) and after merge_and_unload, and greedy
                         continuations (argmax loop, no generate() processors).
Norm weights are perturbed from 1 so that a loader that skipped them would fail the tests.
Prints a JSON object on its last line.
"""
import argparse
import json
import os
import pathlib
import shutil

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6,
             rms_norm_eps=1e-6, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
             pad_token_id=0)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GREEDY = 8


def make_model(tied: bool, seed: int):
  import torch
  import transformers
  torch.manual_seed(seed)
  cfg = transformers.Qwen3Config(tie_word_embeddings=tied, initializer_range=0.1, **SIZES)
  model = transformers.Qwen3ForCausalLM(cfg).float().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1 + 0.2 * torch.randn_like(p))
  return model


def logits_and_greedy(model, ids: np.ndarray):
  import torch
  x = torch.from_numpy(ids.astype(np.int64))
  with torch.no_grad():
    lg = model(x).logits.float().numpy()
    seq = x[:1]
    for _ in range(GREEDY):
      nxt = model(seq).logits[0, -1].argmax()
      seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
  return lg.astype(np.float32), seq[0, ids.shape[1]:].numpy().astype(np.int32)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", default=str(ROOT / "tests" / "data"))
  args = ap.parse_args()
  import peft
  import torch
  out = pathlib.Path(args.out)
  ids = np.random.default_rng(0).integers(3, SIZES["vocab_size"], (2, 10)).astype(np.int32)
  ref = {"ids": ids}
  for name, tied, seed in (("qwen3_tiny", False, 0), ("qwen3_tiny_tied", True, 1)):
    model = make_model(tied, seed)
    d = out / name
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)
    ref[f"{name}_logits"], ref[f"{name}_greedy"] = logits_and_greedy(model, ids)

  base = transformers_load(out / "qwen3_tiny")
  lcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS,
                         init_lora_weights=False, task_type="CAUSAL_LM")
  torch.manual_seed(2)
  pm = peft.get_peft_model(base, lcfg).eval()
  d = out / "qwen3_tiny_lora"
  shutil.rmtree(d, ignore_errors=True)
  pm.save_pretrained(d)
  (d / "README.md").unlink(missing_ok=True)
  # The adapter config names the base by path: keep it relative to the data directory.
  conf = json.loads((d / "adapter_config.json").read_text())
  conf["base_model_name_or_path"] = "qwen3_tiny"
  (d / "adapter_config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
  ref["lora_logits"], ref["lora_greedy"] = logits_and_greedy(pm, ids)
  merged = pm.merge_and_unload()
  ref["lora_merged_logits"], _ = logits_and_greedy(merged, ids)
  np.savez_compressed(out / "qwen3_lora_ref.npz", **ref)
  sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir()
           else p.stat().st_size for p in [out / "qwen3_tiny", out / "qwen3_tiny_tied",
                                           out / "qwen3_tiny_lora", out / "qwen3_lora_ref.npz"]}
  print(json.dumps({"bytes": sizes, "peft": peft.__version__,
                    "lora_vs_base_max_abs": float(np.abs(ref["lora_logits"] -
                                                         ref["qwen3_tiny_logits"]).max()),
                    "merged_vs_adapter_max_abs": float(np.abs(ref["lora_logits"] -
                                                              ref["lora_merged_logits"]).max())}))


def transformers_load(path):
  import torch
  import transformers
  return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


if __name__ == "__main__":
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  main()
