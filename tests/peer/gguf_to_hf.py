#!/usr/bin/env python3
"""Writes a Llama GGUF as a Hugging Face model directory, independently of the Rust code.

    python3 tests/peer/gguf_to_hf.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf --out DIR

DIR receives what `transformers` would save for the model:
  config.json            hyper-parameters from the `llama.*` metadata
  model.safetensors      HF tensor names; Q/K rows restored from llama.cpp's interleaved
                         rotary layout to halves; weights as --dtype (F32 by default);
                         with --shards N, N files plus model.safetensors.index.json
  tokenizer.json         byte-level BPE built with the `tokenizers` package from the GGUF
                         vocabulary and merges (digits split one by one, as SmolLM2's own
                         tokenizer.json does), control tokens as special added tokens
  tokenizer_config.json  the chat template and the BOS/EOS tokens

Dequantisation is the `gguf` package's (llama.cpp's reference Python), so the Rust
safetensors path and the Rust GGUF path load the same numbers from different code.
Needs: gguf, numpy, safetensors, tokenizers (pip).
"""

import argparse
import json
import os

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

CONTROL = 3


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def tensors(reader):
    out = {}
    for t in reader.tensors:
        # GGUF lists dimensions innermost first; numpy wants them outermost first.
        shape = tuple(int(d) for d in reversed(t.shape))
        out[t.name] = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
    return out


def unpermute(w, heads):
    """llama.cpp's converter stores each head's rows as interleaved pairs; undo it."""
    rows, cols = w.shape
    hd = rows // heads
    return w.reshape(heads, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def hf_names(t, layers, heads, kv_heads):
    out = {
        "model.embed_tokens.weight": t["token_embd.weight"],
        "model.norm.weight": t["output_norm.weight"],
    }
    if "output.weight" in t:
        out["lm_head.weight"] = t["output.weight"]
    parts = {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(layers):
        for g, h in parts.items():
            out[f"model.layers.{i}.{h}.weight"] = t[f"blk.{i}.{g}.weight"]
        out[f"model.layers.{i}.self_attn.q_proj.weight"] = unpermute(t[f"blk.{i}.attn_q.weight"], heads)
        out[f"model.layers.{i}.self_attn.k_proj.weight"] = unpermute(t[f"blk.{i}.attn_k.weight"], kv_heads)
    return out


def config(reader, has_output):
    a = field(reader, "general.architecture")
    g = lambda k, d=None: field(reader, f"{a}.{k}") if field(reader, f"{a}.{k}") is not None else d
    heads = int(g("attention.head_count"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(g("vocab_size", len(field(reader, "tokenizer.ggml.tokens")))),
        "hidden_size": int(g("embedding_length")),
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g("attention.head_count_kv", heads)),
        "rms_norm_eps": float(np.float32(g("attention.layer_norm_rms_epsilon"))),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(g("context_length", 2048)),
        "tie_word_embeddings": not has_output,
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }


def tokenizer(reader):
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    pre = field(reader, "tokenizer.ggml.pre")
    if field(reader, "tokenizer.ggml.model") != "gpt2" or pre not in ("smollm", "gpt2", "default"):
        raise SystemExit(f"unsupported tokenizer {field(reader, 'tokenizer.ggml.model')}/{pre}")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tk = Tokenizer(models.BPE(vocab, merges))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre == "smollm":
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tk.decoder = decoders.ByteLevel()
    special = [AddedToken(tokens[i], special=True, normalized=False) for i, ty in enumerate(types) if ty == CONTROL]
    tk.add_special_tokens(special)
    return tk, tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["F32", "F16"], default="F32")
    ap.add_argument("--shards", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    reader = GGUFReader(a.gguf)
    cfg = config(reader, any(t.name == "output.weight" for t in reader.tensors))
    t = tensors(reader)
    hf = hf_names(t, cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"])
    if a.dtype == "F16":
        hf = {k: v.astype(np.float16) for k, v in hf.items()}
    hf = {k: np.ascontiguousarray(v) for k, v in hf.items()}
    names = sorted(hf)
    if a.shards <= 1:
        save_file(hf, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for s in range(a.shards):
            part = names[s :: a.shards]
            fname = f"model-{s + 1:05d}-of-{a.shards:05d}.safetensors"
            save_file({k: hf[k] for k in part}, os.path.join(a.out, fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        total = sum(v.nbytes for v in hf.values())
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    tk, tokens = tokenizer(reader)
    tk.save(os.path.join(a.out, "tokenizer.json"))
    tc = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": tokens[cfg["bos_token_id"]] if cfg["bos_token_id"] is not None else None,
        "eos_token": tokens[cfg["eos_token_id"]] if cfg["eos_token_id"] is not None else None,
        "chat_template": field(reader, "tokenizer.chat_template"),
    }
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)
    print(f"wrote {len(hf)} tensors ({a.dtype}, {a.shards} file(s)) to {a.out}")


if __name__ == "__main__":
    main()
