#!/usr/bin/env python3
"""Reference token ids from llama.cpp (via llama-cpp-python) for a GGUF model.

usage: tokenize_reference.py MODEL.gguf STRINGS.json OUT.json

STRINGS.json is a JSON list of strings; OUT.json receives a list of id lists,
tokenized with add_bos=False and special=True (control tokens written in the
text are parsed). Exit code 3 if llama_cpp is not importable.
"""
import json
import sys

try:
    from llama_cpp import Llama
except ImportError as e:
    print(f"llama_cpp unavailable: {e}", file=sys.stderr)
    sys.exit(3)


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    model, strings_path, out = sys.argv[1:]
    with open(strings_path, encoding="utf-8") as f:
        strings = json.load(f)
    llm = Llama(model_path=model, vocab_only=True, verbose=False)
    ids = [llm.tokenize(s.encode("utf-8"), add_bos=False, special=True) for s in strings]
    with open(out, "w") as f:
        json.dump(ids, f)


if __name__ == "__main__":
    main()
