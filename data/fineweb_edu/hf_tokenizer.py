"""
GPT-2's tokenizer as Hugging Face tokenizer files (vocab.json, merges.txt), converted from tiktoken's ranks, so
that a model trained on this folder's GPT-2 BPE tokens and exported with `ideaprune.py --export_hf DIR` loads
with transformers.AutoTokenizer.from_pretrained(DIR) as well as AutoModelForCausalLM. ideaprune.py imports this
file only when it exports such a model.
"""
import json
import math
import os


def bytes_to_unicode():
    """GPT-2's map from bytes to printable characters, as its vocab.json and merges.txt spell tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {b: chr(c) for b, c in zip(printable + rest, printable + [256 + i for i in range(len(rest))])}


def write_hf_tokenizer(enc, out_dir, max_len):
    """A tiktoken byte-level BPE (GPT-2's) as Hugging Face GPT-2 tokenizer files: vocab.json, merges.txt. tiktoken
    keeps only ranks; the merge that made each token is found by running BPE on it with the lower ranks."""
    ranks, show = enc._mergeable_ranks, bytes_to_unicode()
    spell = lambda token: "".join(show[b] for b in token)
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            i = min(range(len(parts) - 1), key=lambda j: ranks.get(parts[j] + parts[j + 1], math.inf))
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    vocab = {spell(token): rank for token, rank in ranks.items()} | enc._special_tokens
    eot = "<|endoftext|>"
    files = {"vocab.json": json.dumps(vocab, ensure_ascii=False), "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
             "tokenizer_config.json": json.dumps({"tokenizer_class": "GPT2Tokenizer", "bos_token": eot, "eos_token": eot,
                                                  "unk_token": eot, "model_max_length": max_len,
                                                  "add_prefix_space": False}),
             "special_tokens_map.json": json.dumps({"bos_token": eot, "eos_token": eot, "unk_token": eot})}
    for name, text in files.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write(text)


def write_gpt2_tokenizer(out_dir, max_len):
    """The real GPT-2 vocabulary (tiktoken's "gpt2" encoding) as Hugging Face files in out_dir."""
    import tiktoken
    write_hf_tokenizer(tiktoken.get_encoding("gpt2"), out_dir, max_len)
