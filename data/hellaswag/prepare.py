"""
Prepare HellaSwag's validation split (Zellers et al. 2019, MIT licence), the zero-shot task the paper and
build-nanogpt report, for ideaprune.py's evaluation of GPT-2 BPE runs.

    python data/hellaswag/prepare.py                   # download hellaswag_val.jsonl from the authors' repository
    python data/hellaswag/prepare.py --input FILE      # a copy you already have

Writes val.jsonl next to this file: one example per line, {"activity_label", "ctx_a", "ctx_b", "ctx", "endings" (4),
"label"} (what lm-eval's query is made of, see eval.py), after checking
every line (10,042 examples in the official split). Written as val.jsonl.tmp and renamed when complete.
"""
import argparse
import json
import os
import urllib.request

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
N_VAL = 10042  # examples in the official validation split
FIELDS = ("activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label")


def read_examples(lines):
    """The fields eval.py uses, from HellaSwag's jsonl, checked: the context's parts, four endings, a label 0..3."""
    examples = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = json.loads(line)
        ok = all(isinstance(row.get(k), str) for k in FIELDS[:4]) and len(row.get("endings", [])) == 4 and \
            row.get("label") in (0, 1, 2, 3)
        if not ok:
            raise SystemExit(f"line {n} is not a HellaSwag example ({', '.join(FIELDS[:4])}, 4 endings, label 0-3): "
                             f"{line[:120]!r}")
        examples.append({k: row[k] for k in FIELDS})
    return examples


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="a local hellaswag_val.jsonl instead of the download")
    p.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
    args = p.parse_args(argv)
    if args.input:
        text = open(args.input, encoding="utf-8").read()
    else:
        print(f"downloading {URL}")
        with urllib.request.urlopen(URL, timeout=60) as response:
            text = response.read().decode("utf-8")
    examples = read_examples(text.splitlines())
    if not args.input and len(examples) != N_VAL:
        raise SystemExit(f"expected {N_VAL} validation examples, got {len(examples)}: the download is incomplete")
    path = os.path.join(args.out_dir, "val.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e) + "\n" for e in examples)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}: {len(examples):,} examples")


if __name__ == "__main__":
    main()
