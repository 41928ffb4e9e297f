"""
Prepare OpenWebText with the GPT-2 BPE tokenizer (the nanoGPT recipe): the paper's evaluation corpus and the
data of the `300m` preset.

    pip install datasets          # only this script needs it
    python data/openwebtext/prepare.py [--num_proc 8]

Needs the internet (Hugging Face hub for the data, tiktoken's GPT-2 vocabulary file) and ~55 GB of disk for
the download and cache. Writes train.bin (~9B tokens, ~17 GB) and val.bin (~4M tokens) as uint16 next to this
file, plus meta.json. Each document is encoded with `encode_ordinary` and followed by the <|endoftext|> token.
"""
import argparse
import json
import os

import numpy as np

EOT = 50256  # GPT-2's <|endoftext|>


def tokenize(texts, enc):
    """GPT-2 token ids for a list of documents, each followed by <|endoftext|>, as one uint16 array."""
    ids = []
    for doc in enc.encode_ordinary_batch(texts):
        ids.extend(doc)
        ids.append(EOT)
    return np.array(ids, dtype=np.uint16)  # GPT-2's vocab (50257) fits in uint16


def write_tokens(path, chunks, total):
    """Stream uint16 chunks into a memmap of known length; rename at the end so a partial file never looks done."""
    tmp = path + ".tmp"
    arr = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=(total,))
    i = 0
    for chunk in chunks:
        arr[i:i + len(chunk)] = chunk
        i += len(chunk)
    assert i == total, f"wrote {i} tokens, expected {total}"
    arr.flush()
    del arr
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
    args = p.parse_args()
    try:
        from datasets import load_dataset
    except ImportError:
        raise SystemExit("this script needs Hugging Face datasets: pip install datasets")
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")

    ds = load_dataset("openwebtext", num_proc=args.num_proc, trust_remote_code=True)
    split = ds["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)  # nanoGPT's split
    split["val"] = split.pop("test")
    tokenized = split.map(lambda b: {"ids": [tokenize([t], enc) for t in b["text"]]}, batched=True,
                          remove_columns=["text"], num_proc=args.num_proc, desc="tokenizing")
    tokenized = tokenized.map(lambda ex: {"len": len(ex["ids"])}, num_proc=args.num_proc)
    meta = {"vocab_size": 50304, "tokenizer": "gpt2", "source": "openwebtext"}
    for name, dset in tokenized.items():
        total = int(np.sum(dset["len"], dtype=np.uint64))
        shards = 1024 if len(dset) > 1024 else 1
        chunks = (np.concatenate(dset.shard(shards, i, contiguous=True).with_format("numpy")["ids"])
                  for i in range(shards))
        write_tokens(os.path.join(args.out_dir, f"{name}.bin"), chunks, total)
        meta[f"{name}_tokens"] = total
        print(f"{name}: {total:,} tokens")
    with open(os.path.join(args.out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
