#!/usr/bin/env python3
"""Training throughput of PyTorch + PEFT on the CPU, the reference point for
`automaldesc bench train`: LoRA on all seven projections of a Hugging Face Llama directory
(made from the GGUF by tests/peer/gguf_to_hf.py), base frozen, AdamW, loss on the answer
tokens only, one sequence per step.

Sequences are random tokens with the given prompt and answer lengths (throughput does not
depend on the values). Prints one JSON object:
  {"torch", "peft", "threads", "steps", "prompt", "answer", "answer_tokens_per_s",
   "sequence_tokens_per_s"}

Usage: peft_train_bench.py --model HF_DIR --prompt 512 --answer 314 --steps 4 --threads 2
"""

import argparse
import json
import resource
import time

import peft
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--answer", type=int, default=300)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--layers", default="all", help="all, top:K or a comma-separated list")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    n_layers = base.config.num_hidden_layers
    layers = None
    if args.layers.startswith("top:"):
        layers = list(range(n_layers - int(args.layers[4:]), n_layers))
    elif args.layers != "all":
        layers = [int(x) for x in args.layers.split(",")]
    cfg = LoraConfig(
        layers_to_transform=layers,
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.001)
    vocab = base.config.vocab_size
    n = args.prompt + args.answer
    times = []
    for step in range(args.steps + 1):
        ids = torch.randint(0, vocab, (1, n))
        labels = ids.clone()
        labels[:, : args.prompt] = -100  # loss on the answer only
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step > 0:  # the first step warms up
            times.append(time.perf_counter() - started)
    secs = sum(times)
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "peft": peft.__version__,
                "threads": args.threads,
                "steps": len(times),
                "prompt": args.prompt,
                "answer": args.answer,
                "answer_tokens_per_s": args.answer * len(times) / secs,
                "sequence_tokens_per_s": n * len(times) / secs,
                "layers": args.layers,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
