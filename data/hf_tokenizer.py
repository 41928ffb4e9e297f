"""
The tokenizer of an exported model as Hugging Face tokenizer files, so that `ideaprune.py --export_hf DIR` gives a
complete model: transformers.AutoTokenizer.from_pretrained(DIR), pipeline("text-generation") and lm_eval's hf
model work as well as AutoModelForCausalLM. Byte-level runs get a 256-token byte tokenizer (id = byte value);
GPT-2 runs GPT-2's files (vocab.json, merges.txt), converted from tiktoken's ranks. ideaprune.py imports this file
only when it exports.
"""
import json
import math
import os


def bytes_to_unicode():
    """GPT-2's map from bytes to printable characters, as its vocab.json and merges.txt spell tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {b: chr(c) for b, c in zip(printable + rest, printable + [256 + i for i in range(len(rest))])}


def spelling():
    """token bytes -> the string GPT-2's files spell it with."""
    show = bytes_to_unicode()
    return lambda token: "".join(show[b] for b in token)


def bpe_merges(ranks):
    """The merges of a byte-level BPE, in rank order, as GPT-2's merges.txt / vocab.bpe write them ("Ġ t"). tiktoken
    keeps only ranks; the merge that made each token is found by running BPE on it with the lower ranks."""
    spell, merges = spelling(), []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            i = min(range(len(parts) - 1), key=lambda j: ranks.get(parts[j] + parts[j + 1], math.inf))
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    return merges


def write_hf_tokenizer(enc, out_dir, max_len):
    """A tiktoken byte-level BPE (GPT-2's) as Hugging Face GPT-2 tokenizer files: vocab.json, merges.txt."""
    ranks, spell = enc._mergeable_ranks, spelling()
    merges = bpe_merges(ranks)
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


def write_byte_tokenizer(out_dir, max_len):
    """tokenizer.json for byte-level runs: every byte is the token whose id is its value (ByteLevel's printable
    spelling of the 256 bytes, no merges), so any text round-trips. The vocabulary has no id to spare, so the eos
    token is byte 0 (NUL, absent from text data); split_special_tokens keeps a literal "Ā" (byte 0's spelling) in
    text as its own two bytes."""
    show, byte_level = bytes_to_unicode(), {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                                            "use_regex": False}
    tokenizer = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
                 "pre_tokenizer": byte_level, "post_processor": None, "decoder": byte_level,
                 "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                           "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                           "ignore_merges": False, "vocab": {show[b]: b for b in range(256)}, "merges": []}}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": show[0], "model_max_length": max_len,
              "split_special_tokens": True, "clean_up_tokenization_spaces": False}
    for name, content in (("tokenizer.json", tokenizer), ("tokenizer_config.json", config)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False)
