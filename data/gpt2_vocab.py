"""
GPT-2's vocabulary for tiktoken on a machine without the internet, from a package registry. tiktoken downloads
GPT-2's vocab.bpe and encoder.json on first use; the openai-whisper source distribution on PyPI (MIT licence,
0.8 MB) ships whisper/assets/gpt2.tiktoken, byte-identical to tiktoken's r50k_base ranks (GPT-2's). From those
ranks this script rebuilds vocab.bpe and encoder.json byte for byte (it checks the sha256 tiktoken pins for them)
and writes them into a tiktoken cache under tiktoken's names for them:

    pip download --no-deps --no-binary :all: openai-whisper==20250625 -d /tmp/whisper   # where PyPI is reachable
    python data/gpt2_vocab.py /tmp/whisper/openai_whisper-20250625.tar.gz --cache_dir ~/tiktoken_cache
    export TIKTOKEN_CACHE_DIR=~/tiktoken_cache    # then tiktoken.get_encoding("gpt2") needs no network
"""
import argparse
import base64
import hashlib
import json
import os
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_export import bpe_merges, spelling  # noqa: E402

URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"  # what tiktoken fetches, and names by
SHA256 = {"vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",  # what tiktoken checks
          "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"}
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # whisper's gpt2.tiktoken


def read_ranks(sdist):
    """{token bytes: rank} from the sdist's whisper/assets/gpt2.tiktoken (one 'base64 rank' line per token)."""
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken")), None)
        if member is None:
            raise SystemExit(f"{sdist} holds no whisper/assets/gpt2.tiktoken: use the openai-whisper sdist")
        data = tar.extractfile(member).read()
    if hashlib.sha256(data).hexdigest() != RANKS_SHA256:
        raise SystemExit(f"{sdist}: its gpt2.tiktoken is not GPT-2's (sha256 differs): use openai-whisper==20250625")
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}


def gpt2_files(ranks):
    """GPT-2's vocab.bpe (the merges) and encoder.json (token -> id, <|endoftext|> 50256), as OpenAI wrote them."""
    spell = spelling()
    encoder = {spell(token): rank for token, rank in sorted(ranks.items(), key=lambda item: item[1])}
    return {"vocab.bpe": ("#version: 0.2\n" + "\n".join(bpe_merges(ranks)) + "\n").encode(),
            "encoder.json": json.dumps({**encoder, "<|endoftext|>": 50256}).encode()}


def write_cache(sdist, cache_dir):
    """Both files into cache_dir under tiktoken's cache names (the sha1 of their URL); returns cache_dir."""
    os.makedirs(cache_dir, exist_ok=True)
    for name, data in gpt2_files(read_ranks(sdist)).items():
        if hashlib.sha256(data).hexdigest() != SHA256[name]:
            raise SystemExit(f"rebuilt {name} differs from GPT-2's (sha256): not written")
        path = os.path.join(cache_dir, hashlib.sha1((URL + name).encode()).hexdigest())
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    return cache_dir


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sdist", help="openai_whisper-20250625.tar.gz (pip download --no-deps --no-binary :all: ...)")
    p.add_argument("--cache_dir", default=os.path.expanduser("~/tiktoken_cache"), help="where tiktoken will look")
    args = p.parse_args()
    print(f"wrote GPT-2's vocab.bpe and encoder.json to {write_cache(args.sdist, args.cache_dir)}; now: "
          f"export TIKTOKEN_CACHE_DIR={args.cache_dir}")
