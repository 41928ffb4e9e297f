"""
--export_hf: a run's model as a Hugging Face LlamaForCausalLM folder (weights, config, tokenizer), so that
transformers.AutoModelForCausalLM and AutoTokenizer, pipeline("text-generation") and lm_eval's hf model all load it.
Byte-level runs get a 256-token byte tokenizer (id = byte value); GPT-2 runs GPT-2's files (vocab.json, merges.txt),
converted from tiktoken's ranks. ideaprune.py imports this file only when it exports.

The folder is written whole or not at all, and --overwrite replaces only an earlier export: never a run's folder,
the current folder or a parent of either, a mount point, or a folder holding files an export does not write.
"""
import json
import math
import os
import re
import shutil


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


EXPORT_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                "merges.txt", "special_tokens_map.json"}  # all an export writes (byte-level or GPT-2)


def check_folder(path, overwrite, reading):
    """Why path cannot take an export, or None: a new or empty folder, or with overwrite an earlier export. reading:
    the folder of the checkpoint being exported."""
    real, here = os.path.realpath(path), os.getcwd()
    inside = lambda child, folder: os.path.commonpath([child, folder]) == folder
    if os.path.islink(path):
        return "is a link: name the folder itself"
    if inside(here, real) or inside(os.path.realpath(reading), real):
        return "is the current folder, the run being read, or a folder above one of them: export into a new folder"
    if os.path.ismount(real):
        return "is a mount point: export into a new folder inside it"
    if os.path.exists(path) and not os.path.isdir(path):
        return "is a file: name a new folder"
    files = set(os.listdir(path)) if os.path.isdir(path) else set()
    if files and not overwrite:
        return "is not empty: choose a new or empty folder" + (", or --overwrite to replace this earlier export"
                                                               if files <= EXPORT_FILES else "")
    if files - EXPORT_FILES:
        return (f"holds files an export does not write ({', '.join(sorted(files - EXPORT_FILES)[:3])}): --overwrite "
                f"replaces only an earlier export; choose a new folder")
    return None


def clear_stale(path):
    """What exports to path killed midway left beside it: PATH.tmp<PID> (unfinished) is removed; PATH.old<PID> (the
    export that was being replaced) is put back when path is missing, else removed. Only of dead processes."""
    parent, name = os.path.split(os.path.abspath(path))
    for entry in os.listdir(parent):
        match = re.fullmatch(re.escape(name) + r"\.(tmp|old)(\d+)", entry)
        if match and not alive(int(match[2])):
            if match[1] == "old" and not os.path.exists(path):
                os.rename(os.path.join(parent, entry), path)
            else:
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def export(model, cfg, path, overwrite=False, reading="."):
    """path as a Hugging Face LlamaForCausalLM with our logits: our model IS a Llama (RMSNorm, RoPE on halves as HF's
    rotate_half, SwiGLU, no biases, tied embeddings). Llama has one intermediate_size and one head count, so narrower
    layers (global, adaptive ranking) get zero neurons (zero gate and up rows: silu(0) * 0 = 0) and zero heads (zero
    q, k, v rows and o columns: a uniform attention over zero values), exactly; and so many heads that they divide
    hidden_size, which transformers' LlamaConfig demands even with head_dim set. Raises ValueError for a path it
    must not write (check_folder), OSError when writing fails (a full disk): nothing half-written is left."""
    import torch.nn.functional as F
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    why = check_folder(path, overwrite, reading)
    if why:
        raise ValueError(f"--export_hf {path} {why}")
    d, width, hd = cfg.n_embd, max(model.ffn_widths), cfg.n_embd // cfg.n_head
    H = next(h for h in range(max(model.heads), d + 1) if d % h == 0)
    for what, sizes, top in (("FFN widths", model.ffn_widths, width), ("head counts", model.heads, H)):
        if set(sizes) != {top}:
            print(f"export: {what} {sizes} padded with zero units to {top} (output unchanged)")
    weights = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight}
    for i, block in enumerate(model.blocks):  # ours -> HF's names, one to one; rows (F, d) and (H hd, d) padded
        pre, pad, pad_h = f"model.layers.{i}.", width - block.ffn.n_units, (H - block.attn.n_units) * hd
        weights.update({pre + "input_layernorm.weight": block.attn_norm.weight,
                        pre + "post_attention_layernorm.weight": block.ffn_norm.weight,
                        pre + "self_attn.o_proj.weight": F.pad(block.attn.o.weight, (0, pad_h)),  # (d, H hd)
                        pre + "mlp.down_proj.weight": F.pad(block.ffn.down.weight, (0, pad)),  # (d, F)
                        **{pre + f"self_attn.{n}_proj.weight": F.pad(getattr(block.attn, n).weight, (0, 0, 0, pad_h))
                           for n in "qkv"},
                        **{pre + f"mlp.{n}_proj.weight": F.pad(getattr(block.ffn, n).weight, (0, 0, 0, pad))
                           for n in ("gate", "up")}})
    gpt2 = cfg.tokenizer == "gpt2"
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
              "hidden_size": d, "intermediate_size": width, "num_hidden_layers": cfg.n_layer,
              "num_attention_heads": H, "num_key_value_heads": H, "head_dim": hd,  # H hd may differ from d
              "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
              "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
              "bos_token_id": 50256 if gpt2 else 0, "eos_token_id": 50256 if gpt2 else 0}  # (bytes: NUL)
    clear_stale(path)
    tmp, aside = (f"{os.path.abspath(path)}.{what}{os.getpid()}" for what in ("tmp", "old"))
    try:  # every file into tmp; then the old export aside, tmp in its place (or the old one back), the old removed
        os.makedirs(tmp)
        save_file({k: w.detach().float().contiguous().cpu() for k, w in weights.items()},
                  os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
        (write_gpt2_tokenizer if gpt2 else write_byte_tokenizer)(tmp, cfg.block_size)
        if os.path.exists(path):
            os.rename(path, aside)
        try:
            os.rename(tmp, path)
        except OSError:
            if os.path.exists(aside):
                os.rename(aside, path)
            raise
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"--export_hf {path}: writing failed ({e}); nothing was left half-written") from None
    shutil.rmtree(aside, ignore_errors=True)
    return path
