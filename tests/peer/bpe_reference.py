#!/usr/bin/env python3
"""Independent byte-level BPE reference for GGUF "gpt2"/"smollm" tokenizers.

usage: bpe_reference.py MODEL.gguf STRINGS.json OUT.json

Reads vocabulary, merges and token types with the `gguf` package and applies
a plain textbook BPE (lowest-rank merge first) after splitting out control
tokens, every digit, and the GPT-2 pre-tokenizer regex. It shares no code
with the Rust tokenizer (which uses the `tokenizers` crate). Exit code 3 if
the `gguf` or `regex` packages are missing.
"""
import json
import sys

try:
    import regex
    import gguf
except ImportError as e:
    print(f"reference dependencies unavailable: {e}", file=sys.stderr)
    sys.exit(3)

GPT2 = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def byte_table():
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def main():
    model, strings_path, out = sys.argv[1:]
    r = gguf.GGUFReader(model)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    pre = r.fields["tokenizer.ggml.pre"].contents()
    assert pre == "smollm", pre
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}
    control = sorted((t for t, ty in zip(tokens, types) if ty == 3), key=len, reverse=True)
    ctrl_re = regex.compile("(" + "|".join(regex.escape(c) for c in control) + ")")
    table = byte_table()

    def bpe(word):
        parts = [table[b] for b in word.encode("utf-8")]
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get((parts[i], parts[i + 1]), 1 << 62))
            if (parts[best], parts[best + 1]) not in ranks:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return [vocab[p] for p in parts]

    def encode(text):
        ids = []
        for seg in ctrl_re.split(text):
            if seg == "":
                continue
            if seg in control:
                ids.append(vocab[seg])
                continue
            for piece in regex.split(r"(\p{N})", seg):
                for word in GPT2.findall(piece):
                    ids.extend(bpe(word))
        return ids

    with open(strings_path, encoding="utf-8") as f:
        strings = json.load(f)
    with open(out, "w") as f:
        json.dump([encode(s) for s in strings], f)


if __name__ == "__main__":
    main()
