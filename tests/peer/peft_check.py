#!/usr/bin/env python3
"""PEFT itself (with transformers and torch) as the peer of automaldesc's LoRA adapters.

  make --out DIR      writes DIR/base (a tiny random Llama as a Hugging Face directory),
                      DIR/peft_adapter (a LoRA adapter made by PEFT with random A and B,
                      rank 4, alpha 8, on all seven projections) and DIR/peft_logits.json
                      (the adapted model's logits for DIR/tokens.json); and the same for an
                      adapter on block 1 only (`layers_to_transform`): DIR/peft_adapter_top,
                      DIR/peft_logits_top.json
  logits --base B --adapter A --tokens 1,2,3
                      prints the logits of the base model with the adapter A (any PEFT
                      LoRA directory, e.g. one automaldesc wrote), loaded by PEFT

Logits are printed as {"tokens": [...], "vocab": V, "logits": [row-major floats]}.
"""

import argparse
import json
import os

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

TOKENS = [5, 17, 42, 8, 91, 33, 60, 2, 77, 12, 50, 3]


def base_config():
    return LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        hidden_act="silu",
    )


def logits_of(model, tokens):
    with torch.no_grad():
        out = model(torch.tensor([tokens])).logits[0]
    return {"tokens": tokens, "vocab": out.shape[-1], "logits": out.reshape(-1).tolist()}


def make(out):
    torch.manual_seed(0)
    base = LlamaForCausalLM(base_config()).eval()
    base.save_pretrained(os.path.join(out, "base"), safe_serialization=True)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,  # random B too, so the adapter changes the output
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, cfg).eval()
    peft_model.save_pretrained(os.path.join(out, "peft_adapter"))
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump(TOKENS, f)
    with open(os.path.join(out, "peft_logits.json"), "w") as f:
        json.dump(logits_of(peft_model, TOKENS), f)
    # An adapter on a subset of the blocks.
    torch.manual_seed(1)
    base = LlamaForCausalLM.from_pretrained(os.path.join(out, "base")).eval()
    cfg.layers_to_transform = [1]
    top = get_peft_model(base, cfg).eval()
    top.save_pretrained(os.path.join(out, "peft_adapter_top"))
    with open(os.path.join(out, "peft_logits_top.json"), "w") as f:
        json.dump(logits_of(top, TOKENS), f)


def logits(base_dir, adapter_dir, tokens):
    base = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    print(json.dumps(logits_of(model, tokens)))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    l = sub.add_parser("logits")
    l.add_argument("--base", required=True)
    l.add_argument("--adapter", required=True)
    l.add_argument("--tokens", required=True)
    args = ap.parse_args()
    if args.cmd == "make":
        make(args.out)
    else:
        logits(args.base, args.adapter, [int(t) for t in args.tokens.split(",")])


if __name__ == "__main__":
    main()
