"""
Zero-shot HellaSwag for ideaprune models, scored as lm-eval (lm-evaluation-harness 0.4) scores its `hellaswag` task,
so that the numbers compare with published ones: the context is lm-eval's query (activity label, ctx_a, ctx_b
capitalized, WikiHow's [title] artifacts cleaned), each of the four endings its continuation (" " + ending), and
each ending's log-likelihood is summed over its tokens. Three accuracies, under lm-eval's names:
  acc            the ending with the highest summed log-likelihood
  acc_norm       ... divided by the ending's length in characters: the number papers and leaderboards quote
  acc_per_token  ... divided by its number of tokens (build-nanogpt's choice; not lm-eval's, not comparable)

    python data/hellaswag/prepare.py                  # once: writes data/hellaswag/val.jsonl
    python data/hellaswag/eval.py --out_dir out       # score the checkpoint out/ckpt.pt (any step of a run)

ideaprune.py calls accuracy() at every evaluation of a run on GPT-2 BPE data once val.jsonl exists.
"""
import argparse
import functools
import json
import os
import re
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F

VAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "val.jsonl")


def is_example(ex):
    """A HellaSwag example: its context (ctx, or activity_label, ctx_a, ctx_b), 2+ endings, the right one's index."""
    if not (isinstance(ex, dict) and isinstance(ex.get("endings"), list) and len(ex["endings"]) >= 2):
        return False
    context = ("activity_label", "ctx_a", "ctx_b") if "ctx_a" in ex else ("ctx",)
    return all(isinstance(t, str) for t in [ex.get(k) for k in context] + ex["endings"]) and \
        type(ex.get("label")) is int and 0 <= ex["label"] < len(ex["endings"])


@functools.cache
def read(path=VAL):
    """The examples prepare.py wrote, one per line (read once per process). A file with none, or a line that is not
    an example (a torn or edited file), is a ValueError that names it."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                ex = json.loads(line) if line.strip() else None
            except ValueError:
                ex = False
            if ex is not None and not is_example(ex):
                raise ValueError(f"{path}, line {i}, is not a HellaSwag example")
            examples += [ex] if ex else []
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def preprocess(text):  # lm-eval's hellaswag utils.preprocess
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def query_and_choices(ex):
    """lm-eval's hellaswag doc (utils.process_docs) of an example; examples with only "ctx" keep it as it is."""
    if "ctx_a" not in ex:
        return ex["ctx"], ex["endings"]
    ctx = ex["ctx_a"] + " " + ex["ctx_b"].capitalize()
    return preprocess(ex["activity_label"] + ": " + ctx), [preprocess(ending) for ending in ex["endings"]]


@torch.no_grad()
def loglikelihoods(model, examples, encode, device, ctx, block_size):
    """Per example, per ending: (summed log-likelihood of the ending's tokens, its tokens, its characters). The
    ending's tokens are lm-eval's: encode(query + " " + ending) minus encode(query)'s; a row longer than the context
    window keeps its last block_size + 1 tokens, as lm-eval does."""
    model.eval()
    out = []
    for ex in examples:
        query, choices = query_and_choices(ex)
        context = encode(query)
        wholes = [encode(query + " " + choice) for choice in choices]
        rows, n_ending = [w[-block_size - 1:] for w in wholes], [len(w) - len(context) for w in wholes]
        T = max(len(r) for r in rows)
        tokens = torch.zeros(len(rows), T, dtype=torch.long)
        is_ending = torch.zeros(len(rows), T - 1)  # over the predicted positions 1..T-1
        for i, (row, n) in enumerate(zip(rows, n_ending)):
            tokens[i, :len(row)] = torch.tensor(row)
            is_ending[i, len(row) - 1 - min(n, len(row) - 1):len(row) - 1] = 1
        tokens, is_ending = tokens.to(device), is_ending.to(device)
        with ctx:
            logits = model(tokens[:, :-1])[0]
        logp = -F.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="none")  # (4, T - 1)
        out.append([((logp * is_ending)[i].sum().item(), n, len(c)) for i, (n, c) in enumerate(zip(n_ending, choices))])
    model.train()
    return out


def scores(model, examples, encode, device, ctx, block_size):
    """{"acc", "acc_norm", "acc_per_token"} over the examples (see the top of this file)."""
    lls = loglikelihoods(model, examples, encode, device, ctx, block_size)

    def accuracy(score):  # the fraction of examples whose best-scored ending is the right one (first of a tie)
        best = [max(range(len(per)), key=lambda i: score(*per[i])) for per in lls]
        return sum(b == ex["label"] for b, ex in zip(best, examples)) / len(examples)
    return {"acc": accuracy(lambda ll, n_tokens, n_chars: ll),
            "acc_norm": accuracy(lambda ll, n_tokens, n_chars: ll / n_chars),
            "acc_per_token": accuracy(lambda ll, n_tokens, n_chars: ll / n_tokens)}


def main(argv=None):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    import ideaprune as ip
    p = ip.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out", help="the run whose ckpt.pt to score")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--file", default=VAL, help="the examples (default: the validation split prepare.py writes)")

    def body():  # bad input: one line, exit 2 (ideaprune's run_command)
        args = p.parse_args(argv)
        try:
            examples = read(args.file)
        except OSError as e:
            raise ip.ConfigError(f"--file {args.file}: {e.strerror}: run python data/hellaswag/prepare.py") from None
        except ValueError as e:
            raise ip.ConfigError(f"{e}: run python data/hellaswag/prepare.py again") from None
        model, cfg = ip.load_model(ip.ckpt_path(args.out_dir))
        cfg = replace(cfg, device=args.device)
        ip.check_device(cfg)
        device, ctx = ip.setup_device(cfg)
        got = scores(model.to(device), examples, ip.tokenizer(cfg)[0], device, ctx, cfg.block_size)
        print(f"hellaswag acc {got['acc']:.4f} | acc_norm {got['acc_norm']:.4f} | acc_per_token "
              f"{got['acc_per_token']:.4f} ({len(examples):,} examples) | {ip.ckpt_path(args.out_dir)}")
    ip.run_command(body)


if __name__ == "__main__":
    main()
