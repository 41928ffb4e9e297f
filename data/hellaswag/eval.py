"""
Zero-shot HellaSwag for ideaprune models, the build-nanogpt way: each example's context followed by each of its four
endings; the guess is the ending with the lowest mean loss over its own tokens (length-normalized, so a long
ending is not penalized for its length).

    python data/hellaswag/prepare.py                  # once: writes data/hellaswag/val.jsonl
    python data/hellaswag/eval.py --out_dir out       # score the checkpoint out/ckpt.pt (any step of a run)

ideaprune.py calls accuracy() at every evaluation of a run on GPT-2 BPE data once val.jsonl exists.
"""
import argparse
import functools
import json
import os
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F

VAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "val.jsonl")


@functools.cache
def read(path=VAL):
    """The examples prepare.py wrote: {"ctx", "endings" (4), "label"} per line (read once per process)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@torch.no_grad()
def accuracy(model, examples, encode, device, ctx, block_size):
    """The fraction of examples whose right ending has the lowest mean loss over the ending's tokens."""
    model.eval()
    right = 0
    for ex in examples:
        context = encode(ex["ctx"])
        rows = [(context + encode(" " + ending))[-block_size - 1:] for ending in ex["endings"]]
        ending_lens = [len(encode(" " + ending)) for ending in ex["endings"]]
        T = max(len(r) for r in rows)
        tokens = torch.zeros(4, T, dtype=torch.long)
        is_ending = torch.zeros(4, T - 1)  # over the predicted positions 1..T-1
        for i, (row, n) in enumerate(zip(rows, ending_lens)):
            tokens[i, :len(row)] = torch.tensor(row)
            is_ending[i, len(row) - 1 - min(n, len(row) - 1):len(row) - 1] = 1
        tokens, is_ending = tokens.to(device), is_ending.to(device)
        with ctx:
            logits = model(tokens[:, :-1])[0]
        losses = F.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="none")  # (4, T - 1)
        mean = (losses * is_ending).sum(1) / is_ending.sum(1)
        right += int(mean.argmin()) == ex["label"]
    model.train()
    return right / len(examples)


def main(argv=None):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    import ideaprune as ip
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out", help="the run whose ckpt.pt to score")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--data_dir", default="", help="the run's token folder, if it moved (for its meta.json)")
    p.add_argument("--file", default=VAL, help="the examples (default: the validation split prepare.py writes)")
    args = p.parse_args(argv)
    if not os.path.exists(args.file):
        raise SystemExit(f"no {args.file}: run python data/hellaswag/prepare.py first")
    model, cfg = ip.load_model(ip.ckpt_path(args.out_dir))
    cfg = replace(cfg, device=args.device, data_dir=args.data_dir or cfg.data_dir)
    ip.check_device(cfg)
    device, ctx = ip.setup_device(cfg)
    examples = read(args.file)
    acc = accuracy(model.to(device), examples, ip.tokenizer(cfg)[0], device, ctx, cfg.block_size)
    print(f"hellaswag {acc:.4f} (length-normalized, {len(examples):,} examples) | {ip.ckpt_path(args.out_dir)}")


if __name__ == "__main__":
    main()
