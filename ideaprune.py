"""
ideaprune.py: IDEA Prune (Li et al., arXiv 2503.05920) in one readable file.

Train an ENLARGED decoder LM (wider FFN), and inside the same run, under ONE cosine learning-rate schedule and
ONE AdamW, iteratively prune its FFN width down to the target size: neurons are ranked by an EMA of their
sensitivity |W * dW|, removed on a cubic schedule, then physically sliced out of the weights and the AdamW
state, and the now target-size model finishes training ("recovery"). The point of the paper: this beats
training the target model from scratch on the same tokens, and beats enlarge-and-prune pipelines whose stages
each restart their LR (the LR rises again after pruning and the model forgets).

Run manual
  python ideaprune.py --preset cpu                     # 2-core CPU, ~5 min: Shakespeare bytes, ~1.9M -> ~0.9M
  python ideaprune.py --preset cpu --pipeline scratch  # the same tokens and schedule, target size from step 0
  python ideaprune.py --preset cpu --compare           # scratch, integrated, minitron, sheared + figures, table
  python ideaprune.py --preset cpu --ablation          # one-shot prune, then LR resumed vs rewarmed
  python ideaprune.py --preset cpu --compare --replot  # figures and table again from the logs, no training
  python ideaprune.py --preset demo --compare          # an FFN-starved target: where enlarging pays (README)
  python ideaprune.py --preset demo --sweep enlarge=1.5,2.5,4,6   # integrated once per value, and scratch:
                                                       # final loss against the knob (f1/f2=mean/max,max/max too)
  python ideaprune.py --preset 300m --compile          # one GPU: ~588M -> ~308M on FineWeb-Edu (prepare first)
  torchrun --standalone --nproc_per_node 8 ideaprune.py --preset 300m --compile   # 8 GPUs, DDP, same tokens/step
  python ideaprune.py --out_dir out --resume           # continue exactly where out/ckpt.pt left off (also after
                                                       # SIGTERM / Ctrl-C, which checkpoint at the step's end)
  python ideaprune.py --out_dir out --evaluate --sample --prompt "ROMEO."   # use a checkpoint (any step of a run)
  python ideaprune.py --out_dir out --export_hf out/hf # a Hugging Face LlamaForCausalLM directory
  python ideaprune.py --preset cpu --bench             # step time: importance tracking off/on, compacted/built
  python ideaprune.py --help                           # every knob and its default; any knob overrides a preset
  python -m pytest -q                                  # the tests, on CPU

Sections, in the order a run executes them (the README's tutorial follows the numbers):
  1 config and presets   2 data   3 model   4 LR schedule   5 importance   6 keep-schedule and masks
  7 compaction   8 evaluation, sampling, export   9 checkpoints   10 training loop   11 plots   12 main
"""
import argparse
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

ROOT = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------------------------
# ---- 1. Config and presets ----
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Config:
    # what to run
    preset: str = "cpu"              # cpu | demo | tiny | 300m: base values; any flag below overrides them
    pipeline: str = "integrated"     # integrated (IDEA Prune) | scratch | minitron | sheared | resumed | rewarmed
    pruning: str = ""                # iterative | oneshot | none; empty = what --pipeline implies
    lr_schedule: str = ""            # unified | restarted | rewarm; empty = what --pipeline implies
    seed: int = 1337                 # model init and data order; every pipeline sees the same batches
    # data
    dataset: str = "shakespeare"     # folder under data/ holding train.bin, val.bin (uint16) and meta.json
    data_dir: str = ""               # read the data from here instead of data/<dataset>
    batch_size: int = 32             # sequences per micro-step
    grad_accum: int = 1              # micro-steps per optimizer step
    block_size: int = 128            # context length in tokens
    # model: Llama-style decoder; the enlarged and the target model differ only in FFN width
    vocab_size: int = 256            # 256 = bytes; 50304 = GPT-2's 50257 padded to a multiple of 64
    n_layer: int = 4                 # transformer blocks
    n_head: int = 4                  # attention heads per block
    n_embd: int = 128                # d_model
    ffn_hidden: int = 384            # F_t: the target (deployed) FFN width of every layer
    enlarge: float = 2.6             # e: the enlarged width F_e = e * F_t, rounded up to a multiple of ffn_multiple
    ffn_multiple: int = 64           # F_e is rounded up to a multiple of this (GPU-friendly shapes)
    # optimizer and the LR schedule
    max_steps: int = 800             # T: optimizer steps of the whole run, all phases together
    lr: float = 3e-3                 # eta_p: peak LR, reached after the warmup
    min_lr: float = 3e-5             # eta_e: LR at the end of the run (and of every stage when restarted)
    warmup_steps: int = 40           # linear warmup (of every stage when restarted)
    weight_decay: float = 0.1        # AdamW, on matrices and embeddings only
    beta1: float = 0.9               # AdamW beta1
    beta2: float = 0.95              # AdamW beta2
    grad_clip: float = 1.0           # clip the global gradient norm to this (0 = off)
    # pruning
    prune_start: float = 0.5         # t_p / T: pruning starts at this fraction of the run
    prune_len: float = 0.2           # T_p / T: length of the cubic pruning window (one-shot pruning ignores it)
    prune_every: int = 1             # update the masks every this many steps inside the window
    ema_beta: float = 0.5            # lambda in  I_bar <- lambda * I_bar + (1 - lambda) * I
    ema_warmup: int = 30             # steps of importance tracking before t_p (lambda^30 ~ 1e-9: enough history)
    f1: str = "mean"                 # reduce |W * dW| within one matrix, per neuron: mean | max | sum
    f2: str = "max"                  # combine the up/gate/down scores of a neuron: mean | max | sum
    ranking: str = "layer"           # layer: every layer ends at F_t | global: one ranking, layer-adaptive widths
    compact_frac: float = 0.1        # compact once this fraction of a layer's width is masked (1 = only at the end)
    # evaluation, logging, checkpoints
    eval_every: int = 100            # steps between validation estimates
    eval_iters: int = 20             # batches per estimate (the final evaluation reads the whole val split)
    log_every: int = 20              # steps between printed log lines (log.jsonl gets every step)
    ckpt_every: int = 200            # steps between checkpoints (one is always written at the end)
    sample_tokens: int = 300         # length of the sample generated at the end (0 = none)
    out_dir: str = "out"             # ckpt.pt and log.jsonl (--compare: one sub-folder per pipeline)
    plot_dir: str = "plots"          # figures
    # system
    device: str = "auto"             # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"              # auto (bfloat16 on CUDA, else float32) | float32 | bfloat16
    compile: bool = False            # torch.compile the model (recompiled for each new width after a compaction)
    compile_backend: str = "inductor"  # inductor: fused kernels | aot_eager: no code generation (debugging, tests)
    peak_flops: float = 0.0          # peak bf16 FLOP/s of one accelerator, for MFU (0 = look the GPU up in a table)

    def __post_init__(self):
        # A pipeline is a choice of the two knobs pruning and lr_schedule (PIPELINES below). Fill the ones left
        # empty here, when the Config is built, so that no function can ever see an unresolved config. To switch
        # the pipeline of an existing config, clear them too: replace(cfg, pipeline=p, pruning="", lr_schedule="").
        implied = PIPELINES.get(self.pipeline, ("", ""))
        self.pruning = self.pruning or implied[0]
        self.lr_schedule = self.lr_schedule or implied[1]


PRESETS = {
    # the defaults above: the whole integrated run in ~5 minutes on 2 CPU cores
    "cpu": {},
    # the cpu preset with an FFN-starved target (F_t = d_model, enlarged 4x to 512): here FFN width is the
    # bottleneck, so enlarging pays and the paper's ordering shows (README, Results); ~2.5 minutes a run
    "demo": dict(ffn_hidden=128, enlarge=4.0),
    # seconds on a CPU: what the tests run
    "tiny": dict(batch_size=8, block_size=32, n_layer=2, n_head=2, n_embd=32, ffn_hidden=64, enlarge=2.0,
                 ffn_multiple=16, max_steps=40, lr=3e-3, warmup_steps=4, ema_warmup=5, eval_every=20,
                 eval_iters=2, log_every=10, ckpt_every=20, sample_tokens=32),
    # the paper's 600M -> 300M setting on one GPU: ~0.5M tokens per step (16 x 1024 x 32), 10k steps = 5.2B tokens
    "300m": dict(dataset="fineweb_edu", vocab_size=50304, n_layer=20, n_head=16, n_embd=1024, block_size=1024,
                 ffn_hidden=2816, batch_size=16, grad_accum=32, max_steps=10_000, lr=6e-4, min_lr=6e-5,
                 warmup_steps=200, eval_every=500, eval_iters=50, log_every=10, ckpt_every=500,
                 sample_tokens=200),
}

# A pipeline is a choice of two orthogonal knobs, not a copy of the training loop (see section 4 and 6).
PIPELINES = {                          # (pruning, lr_schedule)
    "integrated": ("iterative", "unified"),   # IDEA Prune: one cosine, cubic iterative pruning
    "scratch": ("none", "unified"),           # the target-size model, same tokens, same schedule
    "minitron": ("oneshot", "restarted"),     # enlarged stage to its end LR, one-shot prune, fresh warmup + cosine
    "sheared": ("iterative", "restarted"),    # enlarged, pruning and recovery stages, each with its own schedule
    "resumed": ("oneshot", "unified"),        # ablation: one-shot prune at t_p, the schedule simply continues
    "rewarmed": ("oneshot", "rewarm"),        # ablation: the same pruned start, recovery with a fresh warmup + cosine
}
COMPARE = ("scratch", "integrated", "minitron", "sheared")
ABLATION = ("resumed", "rewarmed")
# The values a text knob may take: argparse offers them as choices, and validate checks them.
CHOICES = {"preset": PRESETS, "pipeline": PIPELINES, "pruning": ("iterative", "oneshot", "none"),
           "lr_schedule": ("unified", "restarted", "rewarm"), "f1": ("mean", "max", "sum"),
           "f2": ("mean", "max", "sum"), "ranking": ("layer", "global"), "dtype": ("auto", "float32", "bfloat16"),
           "compile_backend": ("inductor", "aot_eager", "eager")}


class ConfigError(ValueError):
    """Bad input, caught before any training; the message says which knob and what to do."""


def make_config(preset="cpu", **overrides):
    """A Config from a preset and overrides, built in one go (so the pipeline's knobs resolve from the overrides)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return Config(**{**PRESETS[preset], **overrides, "preset": preset})


def ffn_sizes(cfg):
    """(F_t, F_e): the target width and the enlarged width, F_e = e * F_t rounded up to a multiple.
    The round(..., 6) drops float noise first: 1.1 * 3200 / 64 is 55.00000000000001, which would ceil to 56."""
    m = cfg.ffn_multiple
    return cfg.ffn_hidden, m * math.ceil(round(cfg.enlarge * cfg.ffn_hidden / m, 6))


def phase_steps(cfg):
    """(t_p, t_end): pruning runs over steps t_p .. t_end; one-shot pruning is a window of length 0."""
    t_p = round(cfg.prune_start * cfg.max_steps)
    return t_p, t_p + (0 if cfg.pruning == "oneshot" else round(cfg.prune_len * cfg.max_steps))


def tokens_per_step(cfg):
    return cfg.batch_size * cfg.block_size * cfg.grad_accum


def flops_per_token(n_params, cfg):
    """Training FLOPs per token, forward + backward, of a model with n_params parameters: 6 per parameter (a
    multiply-add forward, two backward) plus attention's QK^T and AV, 12 * n_layer * d * T, not halved for the
    causal mask (the PaLM count that nanoGPT and nanochat use). The run's totals, the summary, the --compare
    table and MFU all come from here."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def validate(cfg):
    """Refuse impossible settings with a message that says which knob and why. Checks only: returns cfg as it was."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    for knob, allowed in CHOICES.items():
        value = getattr(cfg, knob)
        need(value in allowed, f"unknown --{knob} {value!r}; choose one of {', '.join(allowed)}")
    for f in fields(cfg):  # no knob is negative, and none is NaN or infinite
        value = getattr(cfg, f.name)
        if f.type in (int, float):
            need(math.isfinite(value) and value >= 0, f"--{f.name} must be a finite number >= 0, got {value}")
    for knob in ("batch_size", "grad_accum", "block_size", "vocab_size", "n_layer", "n_head", "n_embd", "ffn_hidden",
                 "ffn_multiple", "max_steps", "prune_every", "eval_every", "eval_iters", "log_every", "ckpt_every"):
        need(getattr(cfg, knob) >= 1, f"--{knob} must be at least 1, got {getattr(cfg, knob)}")
    for knob in ("beta1", "beta2"):
        need(getattr(cfg, knob) < 1, f"--{knob} must be in [0, 1), got {getattr(cfg, knob)}")
    need(cfg.n_embd % cfg.n_head == 0 and (cfg.n_embd // cfg.n_head) % 2 == 0,
         f"--n_embd {cfg.n_embd} must split into --n_head {cfg.n_head} heads of even size (RoPE rotates pairs)")
    need(0 < cfg.min_lr <= cfg.lr, f"need 0 < --min_lr ({cfg.min_lr}) <= --lr ({cfg.lr})")
    need(0 <= cfg.ema_beta < 1, f"--ema_beta (lambda) must be in [0, 1), got {cfg.ema_beta}: "
                                "at 1 the EMA never takes in a new score")
    need(0 <= cfg.compact_frac <= 1, f"--compact_frac must be in [0, 1], got {cfg.compact_frac}")
    if cfg.pruning != "none":
        F_t, F_e = ffn_sizes(cfg)
        need(cfg.enlarge > 1 and F_e > F_t, f"the target FFN width (--ffn_hidden {F_t}) must be smaller than the "
             f"enlarged width (--enlarge {cfg.enlarge} gives {F_e}): raise --enlarge above 1, or use --pipeline scratch")
        need(0 < cfg.prune_start < 1, f"--prune_start must be a fraction of the run in (0, 1), got {cfg.prune_start}")
        t_p, t_end = phase_steps(cfg)
        need(t_end <= cfg.max_steps, f"the pruning window ends at step {t_end}, past the end of the run "
                                     f"(--max_steps {cfg.max_steps}): make --prune_start + --prune_len <= 1")
        need(t_p >= 1, f"pruning would start at step 0: raise --prune_start or --max_steps")
    return cfg


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other bad input here (argparse would print its usage first)
        raise ConfigError(f"{message} (python ideaprune.py --help lists every flag)")


def parse_args(argv=None):
    """Argparse built from the Config fields: each field's type, default and trailing comment become a flag."""
    # the "# heading" lines of Config become argument groups, and each field's trailing comment its help
    source = inspect.getsource(Config).split("def __post_init__")[0]
    p = ArgumentParser(description="IDEA Prune: integrated enlarge -> prune -> recover, one LR schedule.")
    group, types = p, {f.name: f.type for f in fields(Config)}
    for heading, name, default, help_ in re.findall(r"^    (?:# (.+)|(\w+): \w+ = (.+?)\s+# (.+))$", source, re.M):
        if heading:
            group = p.add_argument_group(heading)
        elif types[name] is bool:
            group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            group.add_argument(f"--{name}", type=types[name], default=None, choices=CHOICES.get(name),
                               help=f"{help_} (default {default})")
    assert len(p.parse_args([]).__dict__) == len(types), "every Config field needs a trailing # comment (its help)"
    p.add_argument("--resume", action="store_true", help="continue the run in --out_dir from its ckpt.pt")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out_dir that holds a checkpoint")
    p.add_argument("--compare", action="store_true", help=f"run {', '.join(COMPARE)}; then figures and a table")
    p.add_argument("--ablation", action="store_true",
                   help=f"run {', '.join(ABLATION)}: one-shot prune, then the LR resumed vs rewarmed")
    p.add_argument("--sweep", metavar="KNOB=V1,V2,...", help="run --pipeline once per value of a knob, and scratch; "
                   "plot the final loss against it (knobs swept together: f1/f2=mean/max,max/max)")
    p.add_argument("--ceiling", action="store_true", help="with --sweep: also train the enlarged width throughout")
    p.add_argument("--replot", action="store_true", help="with --compare/--ablation/--sweep: only redraw from the logs")
    p.add_argument("--bench", action="store_true", help="time a step: importance tracking off/on, compacted/built")
    use = p.add_argument_group("use a trained model: --out_dir's ckpt.pt, from the end of a run or its middle")
    use.add_argument("--sample", action="store_true", help="write text after --prompt (nanoGPT's sample.py)")
    use.add_argument("--prompt", default="\n", help="the text to continue (default a newline)")
    use.add_argument("--prompt_file", help="read the prompt from this file")
    use.add_argument("--num_samples", type=int, default=1, help="how many samples")
    use.add_argument("--max_new_tokens", type=int, default=200, help="tokens per sample")
    use.add_argument("--temperature", type=float, default=0.8, help="softmax temperature")
    use.add_argument("--top_k", type=int, default=40, help="sample among the k likeliest tokens")
    use.add_argument("--evaluate", action="store_true", help="the full validation loss and perplexity")
    use.add_argument("--export_hf", metavar="DIR", help="write a Hugging Face LlamaForCausalLM directory")
    args = p.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name) is not None}
    args.given = given  # the knobs set on the command line (a checkpoint's own config is overridden by these only)
    return make_config(given.pop("preset", Config.preset), **given), args


# ---------------------------------------------------------------------------------------------------------------
# ---- 2. Data: uint16 token files, random windows (nanoGPT) ----
# ---------------------------------------------------------------------------------------------------------------
def dataset_path(cfg):
    return cfg.data_dir or os.path.join(ROOT, "data", cfg.dataset)


TOKENIZER_VOCAB = {"bytes": 256, "gpt2": 50304}  # the --vocab_size each tokenizer's presets use


def ensure_data(cfg, prepare=True):
    """Prepare the embedded Shakespeare data on first use (not under torchrun: ranks would race to write it);
    for anything else, say the command that prepares it. Then check the files against the config, cheaply, so
    that bad data stops here with one line, not in the first forward pass."""
    d = dataset_path(cfg)
    where = f"--data_dir {d}" if cfg.data_dir else f"--dataset {cfg.dataset} ({d})"
    missing = [f for f in ("train.bin", "val.bin") if not os.path.exists(os.path.join(d, f))]
    prepare_py = os.path.join("data", cfg.dataset, "prepare.py")
    if missing and prepare and cfg.dataset == "shakespeare" and not cfg.data_dir:
        print(f"{d} has no {', '.join(missing)}: preparing it with {prepare_py}")
        subprocess.run([sys.executable, os.path.join(ROOT, prepare_py)], check=True)
        missing = []
    if missing:
        how = f"python {prepare_py}" if os.path.exists(os.path.join(ROOT, prepare_py)) else "a prepare.py of your own"
        old = os.path.join(ROOT, "data", "openwebtext", "train.bin")  # the 300m preset's data before FineWeb-Edu
        if cfg.dataset == "fineweb_edu" and not cfg.data_dir and os.path.exists(old):
            how += (" (the data/openwebtext of an earlier version is still there: train on it with "
                    "--dataset openwebtext)")
        raise ConfigError(f"no {', '.join(missing)} in {where}: prepare the data first with: {how}")
    meta_path = os.path.join(d, "meta.json")
    meta = json.load(open(meta_path)) if os.path.isfile(meta_path) else {}
    tok = meta.get("tokenizer")
    if tok in TOKENIZER_VOCAB and cfg.vocab_size in TOKENIZER_VOCAB.values() and cfg.vocab_size != TOKENIZER_VOCAB[tok]:
        raise ConfigError(f"{meta_path} says the tokens are {tok}, but --vocab_size {cfg.vocab_size} is for "
                          f"{next(k for k, v in TOKENIZER_VOCAB.items() if v == cfg.vocab_size)}: use a preset for "
                          f"{tok} data, or pass --vocab_size {TOKENIZER_VOCAB[tok]}")
    if meta.get("vocab_size", 0) > cfg.vocab_size:
        raise ConfigError(f"{meta_path} says the tokens go up to {meta['vocab_size'] - 1}, but --vocab_size is "
                          f"{cfg.vocab_size}: pass --vocab_size {meta['vocab_size']} or more")
    for split in ("train", "val"):
        path = os.path.join(d, f"{split}.bin")
        if not os.path.isfile(path):
            raise ConfigError(f"{path} is not a file: prepare the data again")
        size = os.path.getsize(path)
        if size % 2:
            raise ConfigError(f"{path} has {size} bytes, not a whole number of uint16 tokens: it is truncated or "
                              f"not a token file; prepare the data again")
        n = size // 2
        if n <= cfg.block_size + 1:
            raise ConfigError(f"{path} holds {n} tokens, fewer than one window of --block_size {cfg.block_size} + 1")
        # The largest token id, from 32 slices of 1M tokens spread over the file: ~64 MB read however big the file
        # is (a full scan of 9B tokens would take minutes), and a vocabulary mix-up shows in every slice.
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        top = max(int(tokens[i:i + 2**20].max()) for i in np.linspace(0, max(0, n - 2**20), 32, dtype=np.int64))
        if top >= cfg.vocab_size:
            raise ConfigError(f"{path} has token id {top}, but --vocab_size is {cfg.vocab_size}: these tokens are not "
                              f"for this model (GPT-2 data with a byte-level preset?); use --vocab_size {top + 1} "
                              f"or more, or the matching dataset")
    if cfg.sample_tokens:
        tokenizer(cfg)  # now: an offline machine without the GPT-2 vocabulary stops here, not after the run


def tokenizer_kind(cfg):
    meta_path = os.path.join(dataset_path(cfg), "meta.json")
    return json.load(open(meta_path)).get("tokenizer", "bytes") if os.path.exists(meta_path) else "bytes"


def tokenizer(cfg):
    """(encode, decode) for the dataset: raw bytes, or GPT-2 BPE through tiktoken."""
    if tokenizer_kind(cfg) == "gpt2":
        import tiktoken
        try:  # tiktoken downloads the GPT-2 vocabulary on first use, then reads it from its cache
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:
            raise ConfigError(f"tiktoken could not load the GPT-2 vocabulary ({type(e).__name__}): it is downloaded on "
                              f"first use. Offline, copy a warm tiktoken cache here and set TIKTOKEN_CACHE_DIR to it, "
                              f"or pass --sample_tokens 0 (the vocabulary is only needed to print the sample)") from None
        return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), enc.decode
    return (lambda s: list(s.encode())), (lambda ids: bytes(ids).decode("utf-8", errors="replace"))


class Data:
    """Random windows of block_size + 1 tokens. The generator's state goes into checkpoints (exact resume).
    Under torchrun every rank draws the windows of every rank, in the order one process would draw them, and
    keeps its own: the batches of a step are the same for any number of ranks, and so is the generator's state."""

    def __init__(self, cfg, device, rank=0, world=1):
        self.cfg, self.device, self.rank, self.world = cfg, device, rank, world
        self.tokens = {s: np.memmap(os.path.join(dataset_path(cfg), f"{s}.bin"), dtype=np.uint16, mode="r")
                       for s in ("train", "val")}
        self.gen = torch.Generator().manual_seed(cfg.seed)  # the same seed -> the same batches in every pipeline

    def _to_device(self, buf):
        buf = torch.from_numpy(buf.astype(np.int64))
        if self.device.type == "cuda":
            buf = buf.pin_memory().to(self.device, non_blocking=True)
        else:
            buf = buf.to(self.device)
        return buf[:, :-1], buf[:, 1:]  # x, y: (B, T) each, y = x shifted left by one

    def batch(self, split, gen=None):
        """A training batch of this rank, or (with gen: the fixed evaluation batches) one process's draw."""
        arr, T, B = self.tokens[split], self.cfg.block_size, self.cfg.batch_size
        draws = [torch.randint(len(arr) - T, (B,), generator=gen or self.gen) for _ in range(1 if gen else self.world)]
        ix = draws[0 if gen else self.rank].numpy()
        return self._to_device(arr[ix[:, None] + np.arange(T + 1)])

    def sequential(self, split):
        """Every non-overlapping window of the split, in order: for the final, exact evaluation."""
        arr, T, B = self.tokens[split], self.cfg.block_size, self.cfg.batch_size
        starts = np.arange(0, len(arr) - T, T)  # a window needs T + 1 tokens: start <= len - T - 1
        for i in range(0, len(starts), B):
            yield self._to_device(arr[starts[i:i + B, None] + np.arange(T + 1)])


# ---------------------------------------------------------------------------------------------------------------
# ---- 3. Model: a Llama-style decoder whose FFN widths are a per-layer list ----
# ---------------------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def rope_tables(head_dim, max_len, base=10000.0):
    """cos, sin of the rotation angles pos * base^(-2i/head_dim): (max_len, head_dim/2) each."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(max_len).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate (first half, second half) pairs of x: (B, H, T, hd), by the position's angles (Llama layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, hd)
                   for t in self.qkv(x).split(C, dim=2))
        q, k = apply_rope(q, cos[:T], sin[:T]), apply_rope(k, cos[:T], sin[:T])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class SwiGLU(nn.Module):
    """FFN of width F: down(silu(gate(x)) * up(x)).
    Neuron j is row j of W_gate and W_up (F, d) and column j of W_down (d, F): pruning removes all three."""

    def __init__(self, d, width):
        super().__init__()
        self.gate = nn.Linear(d, width, bias=False)
        self.up = nn.Linear(d, width, bias=False)
        self.down = nn.Linear(width, d, bias=False)

    @property
    def width(self):
        return self.up.weight.shape[0]

    def neuron_linears(self):
        """(linear, the dim of its weight that indexes neurons), for up, gate, down: the one place that says which
        axis is a neuron. The importance, the masks and the compaction all walk over it."""
        return (self.up, 0), (self.gate, 0), (self.down, 1)

    def neuron_weights(self):
        return [(lin.weight, dim) for lin, dim in self.neuron_linears()]

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg, width):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.n_embd), Attention(cfg)
        self.ffn_norm, self.ffn = RMSNorm(cfg.n_embd), SwiGLU(cfg.n_embd, width)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg, widths):
        super().__init__()
        assert len(widths) == cfg.n_layer, f"need one FFN width per layer, got {len(widths)} for {cfg.n_layer}"
        self.block_size = cfg.block_size
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, w) for w in widths)
        self.norm = RMSNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied embeddings
        cos, sin = rope_tables(cfg.n_embd // cfg.n_head, cfg.block_size)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # GPT-2 init: N(0, 0.02), the projections into the residual stream scaled by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith(("proj.weight", "down.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    @property
    def ffn_widths(self):
        return [b.ffn.width for b in self.blocks]

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def forward(self, idx, targets=None):
        x = self.tok_emb(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        logits = self.lm_head(self.norm(x))  # (B, T, vocab)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    @torch.no_grad()
    def compact_ffn(self, survivors):
        """Model surgery: layer l keeps only its neurons survivors[l] (sorted indices), as new, smaller Parameters.
        Returns (layer, old, new, dim) for every replaced weight, so an optimizer can move its state (section 7)."""
        assert len(survivors) == len(self.blocks)
        d, replaced = self.tok_emb.weight.shape[1], []
        for layer, (block, idx) in enumerate(zip(self.blocks, survivors)):
            ffn, n = block.ffn, idx.numel()
            assert idx.dim() == 1 and 0 < n <= ffn.width and int(idx.max()) < ffn.width
            for lin, dim in ffn.neuron_linears():  # up, gate: (F, d), neurons on dim 0; down: (d, F), on dim 1
                new = nn.Parameter(lin.weight.index_select(dim, idx))
                replaced.append((layer, lin.weight, new, dim))
                lin.weight = new
                setattr(lin, "out_features" if dim == 0 else "in_features", n)
            assert ffn.up.weight.shape == ffn.gate.weight.shape == (n, d) and ffn.down.weight.shape == (d, n)
        return replaced

    @torch.no_grad()
    def generate(self, idx, n_new, temperature=0.8, top_k=40, gen=None):
        for _ in range(n_new):
            logits, _ = self(idx[:, -self.block_size:])
            logits = logits[:, -1, :].float() / temperature
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            probs = F.softmax(logits.masked_fill(logits < kth, -float("inf")), dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, 1, generator=gen)), dim=1)
        return idx


# ---------------------------------------------------------------------------------------------------------------
# ---- 4. Learning-rate schedule: one cosine (integrated), or one per stage (restarted) ----
# ---------------------------------------------------------------------------------------------------------------
def warmup_cosine(i, n, cfg):
    """LR at step i of a stage of n steps: linear warmup to eta_p (non-zero at i = 0), cosine down to eta_e at n."""
    if i < cfg.warmup_steps:
        return cfg.lr * (i + 1) / (cfg.warmup_steps + 1)
    progress = min(1.0, (i - cfg.warmup_steps) / max(1, n - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_stages(cfg):
    """The (start, horizon) of each LR stage: a stage warms up from its start and its cosine reaches eta_e at its
    horizon; it is the active stage from its start until the next stage starts.
    unified:   one cosine over the whole run: the LR never rises again after warmup (IDEA Prune).
    restarted: every pipeline stage (enlarged | pruning | recovery) gets its own warmup + cosine to eta_e.
    rewarm:    the unified cosine until t_p, then a fresh warmup + cosine to the end (the ablation's rewarmed arm)."""
    T = cfg.max_steps
    if cfg.pruning == "none" or cfg.lr_schedule == "unified":
        return [(0, T)]
    t_p, t_end = phase_steps(cfg)
    if cfg.lr_schedule == "rewarm":
        return [(0, T), (t_p, T)]
    assert cfg.lr_schedule == "restarted", cfg.lr_schedule
    starts = sorted({0, t_p, t_end} - {T})  # a set: one-shot (t_end = t_p) has two stages, not an empty third
    return list(zip(starts, starts[1:] + [T]))


def lr_at(step, cfg):
    start, horizon = [s for s in lr_stages(cfg) if s[0] <= step][-1]
    return warmup_cosine(step - start, horizon - start, cfg)


# ---------------------------------------------------------------------------------------------------------------
# ---- 5. Importance: sensitivity |W * dW| reduced per neuron (f1), an EMA, combined across matrices (f2) ----
# ---------------------------------------------------------------------------------------------------------------
# f1 reduces each neuron's entries within one matrix; f2 combines a neuron's three matrices. "mean-max" = f1 mean,
# f2 max (the paper's best, its Figure 4b).
REDUCE = {"mean": lambda t, dim: t.mean(dim), "max": lambda t, dim: t.amax(dim), "sum": lambda t, dim: t.sum(dim)}


@torch.no_grad()
def sensitivity(ffn, f1):
    """I = |W * dW| for W_up, W_gate, W_down, reduced by f1 over each neuron's entries: (3, F).
    |W * dW| is the first-order Taylor estimate of the loss change when the weight is zeroed."""
    return torch.stack([REDUCE[f1]((w * w.grad).abs_(), 1 - dim) for w, dim in ffn.neuron_weights()])


@torch.no_grad()
def update_importance(importance, model, cfg):
    """I_bar <- lambda * I_bar + (1 - lambda) * I, on the f1-reduced vectors: importance[l] is (3, F_l), the EMA
    of layer l's up, gate, down scores. For a linear f1 (mean, sum) this is exactly the per-element EMA, reduced
    afterwards; for f1 = max it is the EMA of the per-step max (3 * F floats per layer instead of a weight copy)."""
    for imp, block in zip(importance, model.blocks):
        imp.mul_(cfg.ema_beta).add_(sensitivity(block.ffn, cfg.f1).float(), alpha=1 - cfg.ema_beta)


def neuron_scores(importance, f2):
    """One score per neuron: f2 over its up/gate/down EMAs."""
    return [REDUCE[f2](imp, 0) for imp in importance]


# ---------------------------------------------------------------------------------------------------------------
# ---- 6. Cubic keep-schedule and monotone masks ----
# ---------------------------------------------------------------------------------------------------------------
def keep_at(step, cfg):
    """Neurons kept per layer at a step: F_e before t_p, then r(t) = r_T + (1 - r_T)(1 - (t - t_p)/T_p)^3 of F_e,
    exactly F_t = r_T * F_e from t_end = t_p + T_p on. One-shot pruning is the window of length 0."""
    F_t, F_e = ffn_sizes(cfg)
    if cfg.pruning == "none":
        return F_t
    t_p, t_end = phase_steps(cfg)
    if step < t_p:
        return F_e
    if step >= t_end:
        return F_t
    r_T = F_t / F_e
    r = r_T + (1 - r_T) * (1 - (step - t_p) / (t_end - t_p)) ** 3
    return min(F_e, max(F_t, round(r * F_e)))


# When the masks and the importance change, relative to each other (the contract the loop in section 10 keeps):
#  - the importance is tracked in the steps [t_p - ema_warmup, t_end): after each of those steps' backward pass;
#  - the masks change at the start of a prune step s, before its forward pass, so they use the importance
#    through step s - 1 (the step that is about to run cannot have been scored yet);
#  - r(t_p) = 1, so the first prune step t_p removes nothing: pruning really starts at t_p + 1, with ema_warmup + 1
#    steps of history; at t_end the masks reach F_t and the tracking stops.
def tracks_importance(step, cfg):
    t_p, t_end = phase_steps(cfg)
    return cfg.pruning != "none" and t_p - cfg.ema_warmup <= step < t_end


def is_prune_step(step, cfg):
    t_p, t_end = phase_steps(cfg)
    return cfg.pruning != "none" and t_p <= step <= t_end and ((step - t_p) % cfg.prune_every == 0 or step == t_end)


@torch.no_grad()
def zero_neurons_(model, optimizer, dead):
    """Zero the weights AND the AdamW moments of dead neurons. With a neuron's gate and up rows at zero its
    activation silu(0) * 0 is 0, so all three of its gradients are exactly 0, Adam's update 0 / (0 + eps) is
    0, and decoupled weight decay keeps 0 at 0: a pruned neuron stays pruned with no mask in the forward pass."""
    for block, d in zip(model.blocks, dead):
        idx = d.nonzero().squeeze(1)
        if idx.numel():
            for w, dim in block.ffn.neuron_weights():
                state = optimizer.state.get(w, {})
                for t in [w] + [state[m] for m in ("exp_avg", "exp_avg_sq") if m in state]:
                    t.index_fill_(dim, idx, 0.0)


@torch.no_grad()
def prune_(model, optimizer, importance, alive, k, cfg):
    """Shrink the alive masks to the k best neurons per layer (ranking "layer") or the k * n_layer best overall
    (ranking "global"). Only alive neurons compete, so masks only ever shrink. Returns the neurons removed."""
    n_alive = [int(a.sum()) for a in alive]
    if k * len(alive) >= sum(n_alive):
        return 0  # nothing to remove at this step (always so at t_p, where r(t_p) = 1)
    scores = [s.masked_fill(~a, -float("inf")) for s, a in zip(neuron_scores(importance, cfg.f2), alive)]
    if cfg.ranking == "layer":
        survivors = [s.topk(min(k, n)).indices for s, n in zip(scores, n_alive)]
    else:
        for s in scores:  # each layer keeps at least its best neuron, so no layer can vanish
            s[s.argmax()] = float("inf")
        top = torch.cat(scores).topk(k * len(scores)).indices
        offsets = np.cumsum([0] + [len(s) for s in scores])
        survivors = [top[(top >= lo) & (top < hi)] - lo for lo, hi in zip(offsets[:-1], offsets[1:])]
    new_alive = [torch.zeros_like(a).index_fill_(0, idx, True) for a, idx in zip(alive, survivors)]
    dead = [a & ~n for a, n in zip(alive, new_alive)]
    zero_neurons_(model, optimizer, dead)
    alive[:] = new_alive
    return sum(int(d.sum()) for d in dead)


# ---------------------------------------------------------------------------------------------------------------
# ---- 7. Compaction: slice pruned neurons out of the weights and the AdamW state ----
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def compact_(model, optimizer, importance, alive):
    """Physically remove masked neurons: rows of W_up / W_gate, columns of W_down, the same entries of AdamW's
    exp_avg and exp_avg_sq (its step counter is kept), and of the importance EMA. Afterwards the model is
    exactly a model built at the smaller widths: same outputs as the masked one, same speed as a fresh one."""
    survivors = [a.nonzero().squeeze(1) for a in alive]
    replaced = model.compact_ffn(survivors)
    new_of = {id(old): new for _, old, new, _ in replaced}
    for layer, old, new, dim in replaced:  # AdamW keys its state by Parameter: move it to the new one, sliced
        state = optimizer.state.pop(old, {})
        for m in ("exp_avg", "exp_avg_sq"):
            if m in state:
                state[m] = state[m].index_select(dim, survivors[layer])
        if state:
            optimizer.state[new] = state
    for group in optimizer.param_groups:
        group["params"] = [new_of.get(id(p), p) for p in group["params"]]
    importance[:] = [imp[:, idx] for imp, idx in zip(importance, survivors)]  # the survivors' scores, not a prefix
    alive[:] = [torch.ones(idx.numel(), dtype=torch.bool, device=idx.device) for idx in survivors]


def masked_fraction(alive):
    """The largest fraction of a layer's physical width that is masked but still allocated."""
    return max(1 - int(a.sum()) / a.numel() for a in alive)


# ---------------------------------------------------------------------------------------------------------------
# ---- 8. Evaluation, sampling and export to Hugging Face ----
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def estimate_loss(model, data, cfg, ctx):
    """Mean loss on eval_iters batches per split; the batches are the same at every call and in every pipeline."""
    model.eval()
    out = {}
    for i, split in enumerate(("train", "val")):
        gen = torch.Generator().manual_seed(cfg.seed + 1 + i)
        losses = []
        for _ in range(cfg.eval_iters):
            with ctx:
                losses.append(model(*data.batch(split, gen))[1].item())
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


@torch.no_grad()
def evaluate_full(model, data, ctx, split="val"):
    """Token-weighted mean loss over every non-overlapping window of the split: the number the README reports."""
    model.eval()
    total, count = 0.0, 0
    for x, y in data.sequential(split):
        with ctx:
            total += model(x, y)[1].item() * y.numel()
        count += y.numel()
    model.train()
    return total / count


HELLASWAG = os.path.join(ROOT, "data", "hellaswag", "val.jsonl")  # python data/hellaswag/prepare.py writes it


def read_hellaswag(path=HELLASWAG):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@torch.no_grad()
def hellaswag_accuracy(model, examples, encode, device, ctx, block_size):
    """Zero-shot HellaSwag, the build-nanogpt way: each example's context followed by each of its 4 endings;
    the model's mean loss over the ending's tokens (length-normalized: a long ending is not penalized for its
    length); the guess is the ending with the lowest; returns the fraction guessed right."""
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


def sample(model, cfg, device, ctx, prompt="\n", n_new=None, temperature=0.8, top_k=40, seed=None):
    """Text the model writes after the prompt (the prompt is not repeated)."""
    encode, decode = tokenizer(cfg)
    ids = torch.tensor([encode(prompt)], dtype=torch.long, device=device)
    gen = torch.Generator(device).manual_seed(cfg.seed if seed is None else seed)
    with ctx:
        out = model.generate(ids, cfg.sample_tokens if n_new is None else n_new, temperature, top_k, gen)
    return decode(out[0, ids.size(1):].tolist())


def export_hf(model, cfg, out_dir):
    """Write out_dir as a Hugging Face LlamaForCausalLM: config.json and model.safetensors (and, for GPT-2 BPE
    data, the tokenizer files), so that transformers.AutoModelForCausalLM.from_pretrained(out_dir) gives the
    same logits. Our model IS a Llama: RMSNorm (eps 1e-5), RoPE on (first half, second half) pairs (HF's
    rotate_half), SwiGLU without biases, tied embeddings. Llama has one intermediate_size, so layers narrower
    than the widest (global ranking) get zero neurons: zero gate and up rows give silu(0) * 0 = 0, exactly."""
    from safetensors.torch import save_file  # installed with transformers
    d, L, width = cfg.n_embd, cfg.n_layer, max(model.ffn_widths)
    if len(set(model.ffn_widths)) > 1:
        print(f"export: FFN widths {model.ffn_widths} padded with zero neurons to {width} (output unchanged)")
    weights = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight}
    for i, block in enumerate(model.blocks):
        pre, pad = f"model.layers.{i}.", width - block.ffn.width
        q, k, v = block.attn.qkv.weight.split(d, dim=0)
        weights.update({pre + "self_attn.q_proj.weight": q, pre + "self_attn.k_proj.weight": k,
                        pre + "self_attn.v_proj.weight": v, pre + "self_attn.o_proj.weight": block.attn.proj.weight,
                        pre + "input_layernorm.weight": block.attn_norm.weight,
                        pre + "post_attention_layernorm.weight": block.ffn_norm.weight,
                        pre + "mlp.gate_proj.weight": F.pad(block.ffn.gate.weight, (0, 0, 0, pad)),  # (F, d)
                        pre + "mlp.up_proj.weight": F.pad(block.ffn.up.weight, (0, 0, 0, pad)),
                        pre + "mlp.down_proj.weight": F.pad(block.ffn.down.weight, (0, pad))})  # (d, F)
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: w.detach().float().contiguous().cpu() for k, w in weights.items()},
              os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    gpt2 = tokenizer_kind(cfg) == "gpt2"
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
              "hidden_size": d, "intermediate_size": width, "num_hidden_layers": L,
              "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head, "head_dim": d // cfg.n_head,
              "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
              "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
              "bos_token_id": 50256 if gpt2 else None, "eos_token_id": 50256 if gpt2 else None}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    if gpt2:
        import tiktoken
        write_hf_tokenizer(tiktoken.get_encoding("gpt2"), out_dir, cfg.block_size)
    return out_dir


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


# ---------------------------------------------------------------------------------------------------------------
# ---- 9. Checkpoints: tensors and plain types only, written atomically ----
# ---------------------------------------------------------------------------------------------------------------
CKPT_VERSION = 1  # raise it when the layout below changes: --resume refuses a checkpoint newer than it knows
CKPT_KEYS = ("model", "widths", "optimizer", "importance", "alive", "config", "progress", "rng")


class RunFailed(RuntimeError):
    """The run cannot go on (diverged, or its checkpoint cannot be written); what is on disk is still good."""


class Diverged(RunFailed):
    """The loss, the gradient norm or the weights became NaN or inf; nothing non-finite was written."""


def last_checkpoint(run):
    path = os.path.join(run.cfg.out_dir, "ckpt.pt")
    if run.last_ckpt is None:
        return "No checkpoint was written"
    return f"The last checkpoint, {path} from step {run.last_ckpt}, is intact and finite: --resume continues from it"


def save_checkpoint(run, step):
    """Everything exact resume needs, in out_dir/ckpt.pt. Loadable with torch.load(path, weights_only=True).
    Nothing non-finite is ever written: a checkpoint of a diverged model would replace the last good one."""
    if not all(torch.isfinite(p).all() for p in run.raw_model.parameters()):  # the same on every rank
        raise Diverged(f"the weights are not finite at step {step}; no checkpoint written. {last_checkpoint(run)}. "
                       f"Lower --lr or raise --warmup_steps")
    if run.rank != 0:
        return
    ckpt = {
        "version": CKPT_VERSION,
        "model": run.raw_model.state_dict(),
        "widths": run.raw_model.ffn_widths,          # build GPT(cfg, widths) before load_state_dict
        "optimizer": run.optimizer.state_dict(),
        "importance": [imp.cpu() for imp in run.importance],  # (3, F_l): EMA of the up, gate, down scores
        "alive": [a.cpu() for a in run.alive],       # (F_l,) bool masks
        "config": asdict(run.cfg),
        "progress": {**run.progress, "step": step},  # step: where a resumed run starts; tokens, FLOPs, wall time
        "rng": {"torch": torch.get_rng_state(), "data": run.data.gen.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    path = os.path.join(run.cfg.out_dir, "ckpt.pt")
    try:
        with open(path + ".tmp", "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so that a power cut cannot leave a torn ckpt.pt
    except (OSError, RuntimeError) as e:  # a full disk, a quota, a vanished mount
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        raise RunFailed(f"writing the checkpoint of step {step} failed ({e}); nothing half-written was left. "
                        f"{last_checkpoint(run)}") from None
    os.replace(path + ".tmp", path)  # atomic: the previous ckpt.pt stays whole until the new one is complete
    run.last_ckpt = step


def read_checkpoint(path):
    """torch.load a checkpoint, or a ConfigError that names the file, says why and what to do; the file is left
    as it was (a truncated copy, another file, a checkpoint of another version)."""
    if not os.path.exists(path):
        raise ConfigError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in CKPT_KEYS if k not in ckpt]
        if missing:
            raise ValueError(f"it has no {', '.join(missing)}")
        if ckpt.get("version", 1) > CKPT_VERSION:
            raise ValueError(f"it was written by a newer ideaprune (checkpoint version {ckpt['version']}, "
                             f"this one reads up to {CKPT_VERSION})")
        Config(**ckpt["config"])  # a knob this version does not know: from another version
    except Exception as e:
        raise ConfigError(f"{path} is not a checkpoint this ideaprune can resume ({type(e).__name__}: {e}). It was "
                          f"left as it was: restore it from a copy, or start a new run in another --out_dir") from None
    return ckpt


def restore_checkpoint(run, ckpt):
    """Load a checkpoint's state into a run built at the checkpoint's widths: exactly where it stopped."""
    run.raw_model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.importance = [imp.to(run.device) for imp in ckpt["importance"]]
    run.alive = [a.to(run.device) for a in ckpt["alive"]]
    run.progress = ckpt["progress"]
    torch.set_rng_state(ckpt["rng"]["torch"])
    run.data.gen.set_state(ckpt["rng"]["data"])
    if ckpt["rng"]["cuda"] and run.device.type == "cuda":
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


def load_model(path, device="cpu"):
    """The model of a checkpoint, at the end of a run or from its middle: neurons masked but not yet compacted
    are sliced out (they are zero: the outputs do not change), so it is the deployed model at its widths."""
    ckpt = read_checkpoint(path)
    cfg = Config(**ckpt["config"])
    model = GPT(cfg, ckpt["widths"])
    model.load_state_dict(ckpt["model"])
    if not all(a.all() for a in ckpt["alive"]):
        model.compact_ffn([a.nonzero().squeeze(1) for a in ckpt["alive"]])
    return model.to(device), cfg


# ---------------------------------------------------------------------------------------------------------------
# ---- 10. Training loop: enlarged -> pruning -> recovery, one AdamW, no reset ----
# ---------------------------------------------------------------------------------------------------------------
class Interrupted(Exception):
    """SIGTERM or Ctrl-C: the run finished its step, wrote a checkpoint and stopped; --resume continues it."""

    def __init__(self, signum, step, path, world):
        again = f"torchrun --nproc_per_node {world} ideaprune.py" if world > 1 else "python ideaprune.py"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}, with a checkpoint in {path}; "
                         f"continue with: {again} --out_dir {os.path.dirname(path)} --resume")
        self.signum = signum


def init_distributed(cfg):
    """Under torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK): join the process group, NCCL on GPUs, gloo on CPUs.
    Returns (rank, world size): (0, 1) for a plain `python ideaprune.py`."""
    if "RANK" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        on_gpu = torch.cuda.is_available() and cfg.device.split(":")[0] in ("auto", "cuda")
        dist.init_process_group("nccl" if on_gpu else "gloo")
    return dist.get_rank(), dist.get_world_size()


def setup_device(cfg):
    """The device and the autocast context. Under torchrun each rank takes the GPU of its LOCAL_RANK."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda") and dist.is_initialized():
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device {cfg.device!r}: auto | cpu | cuda | cuda:N | mps") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise ConfigError(f"--device {cfg.device}: this machine has {torch.cuda.device_count()} CUDA GPUs "
                          f"(torch {torch.__version__}); use --device cpu, or a CUDA build of torch on a GPU machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device mps: MPS (Apple GPUs) is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {cfg.device}: not supported; use auto, cpu, cuda, cuda:N or mps")
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--dtype bfloat16: {torch.cuda.get_device_name(device)} cannot compute in bfloat16; "
                          f"use --dtype float32")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device.type, dtype=getattr(torch, dtype))
    return device, ctx


def make_optimizer(model, cfg, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices and the (tied) embedding
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # RMSNorm gains
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr_at(0, cfg), betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def phase_of(step, cfg):
    if cfg.pruning == "none":
        return "target"
    t_p, t_end = phase_steps(cfg)
    return "enlarged" if step < t_p else "pruning" if step < t_end else "recovery"


def fmt_params(n):
    return f"{n / 1e6:.2f}M" if n < 1e9 else f"{n / 1e9:.2f}B"


# Peak dense bf16 FLOP/s per GPU, by a part of torch.cuda.get_device_name (first match wins): for MFU. H100 SXM
# reports itself as "H100 80GB HBM3". Vendor data sheets, without the 2:4-sparsity doubling.
GPU_PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


def peak_flops(cfg, device):
    """--peak_flops, else the GPU's entry in GPU_PEAK_BF16, else None: no MFU (a CPU, or a GPU not in the table)."""
    if cfg.peak_flops:
        return cfg.peak_flops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_PEAK_BF16 if key in name), None)


def mfu(flops, seconds, run):
    """Model FLOPs utilization: the model's FLOPs (flops_per_token, section 1) per second per accelerator, as a
    fraction of its peak. None where the peak is unknown."""
    return flops / seconds / run.world / run.peak if run.peak else None


def fmt_duration(s):
    return f"{s / 3600:.0f}h{s % 3600 / 60:02.0f}m" if s >= 3600 else f"{s / 60:.0f}m{s % 60:02.0f}s"


def describe(cfg):
    """Print the resolved config and the numbers derived from it, once, before anything runs."""
    F_t, F_e = ffn_sizes(cfg)
    t_p, t_end = phase_steps(cfg)
    tps, T = tokens_per_step(cfg), cfg.max_steps
    print("config:", json.dumps(asdict(cfg), indent=1))
    with torch.device("meta"):  # parameter counts without allocating memory (the 300m preset is large)
        sizes = {w: GPT(cfg, [w] * cfg.n_layer).num_params() for w in (F_e, F_t)}
    for name, w in (("enlarged", F_e), ("target", F_t)):
        n, ffn_params = sizes[w], 3 * cfg.n_embd * w * cfg.n_layer
        print(f"{name:8s} model: FFN {w:5d} per layer | {fmt_params(n)} params, FFN {fmt_params(ffn_params)} "
              f"({100 * ffn_params / n:.0f}%) | {flops_per_token(n, cfg) / 1e6:.1f} MFLOP per token")
    print(f"tokens: {tps:,} per step ({cfg.batch_size} seq x {cfg.block_size} ctx x {cfg.grad_accum} accum), "
          f"{tps * T / 1e6:.2f}M in {T} steps")
    if cfg.pruning == "none":
        print(f"phases: target-size model for all {T} steps (scratch)")
    else:
        recovery = f"{t_end}-{T - 1} ({tps * (T - t_end) / 1e6:.2f}M tok)" if T > t_end else "none"
        print(f"phases: enlarged 0-{t_p - 1} ({tps * t_p / 1e6:.2f}M tok) | {cfg.pruning} pruning {t_p}-{t_end} "
              f"({tps * (t_end - t_p) / 1e6:.2f}M tok) | recovery {recovery}")
    stages = ", ".join(f"{a}-{b}" for a, b in lr_stages(cfg))
    print(f"LR: {cfg.lr_schedule} ({stages}): warmup {cfg.warmup_steps} to {cfg.lr:g}, cosine to {cfg.min_lr:g}")


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class RunLog:
    """out_dir/log.jsonl, what the plots read: a header (the config and the phase boundaries), then one record
    per step, per evaluation and per event, and a final record. On resume, the records from the checkpoint's
    step on are dropped: the resumed run writes them again, identically."""

    def __init__(self, cfg, resume_step=None, master=True):
        self.path, self.master, self.file = os.path.join(cfg.out_dir, "log.jsonl"), master, None
        if not master:  # under torchrun only rank 0 logs, prints and plots
            return
        if resume_step is None:
            F_t, F_e = ffn_sizes(cfg)
            t_p, t_end = phase_steps(cfg)
            records = [{"kind": "config", **asdict(cfg), "F_t": F_t, "F_e": F_e, "t_p": t_p, "t_end": t_end,
                        "tokens_per_step": tokens_per_step(cfg), "lr_stages": lr_stages(cfg)}]
        else:  # a final record has no step: it goes too, so a resumed finished run has one final record
            records = [r for r in read_log(self.path) if r["kind"] == "config" or r.get("step", 1e99) < resume_step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        self.file = open(self.path, "a")

    def write(self, kind, **record):
        if self.master:
            self.file.write(json.dumps({"kind": kind, **record}) + "\n")

    def say(self, line):
        if self.master:
            print(line)

    def event(self, step, what):
        self.say(f"step {step:5d} | {what}")
        self.write("event", step=step, what=what)

    def close(self):
        if self.file:
            self.file.close()


@dataclass
class Run:
    """The state of one run: what the loop carries from step to step, and what a checkpoint holds."""
    cfg: Config
    device: torch.device
    ctx: object                       # autocast context (bf16 on CUDA) or a no-op
    data: Data
    raw_model: GPT                    # the plain model: surgery, importance, checkpoints (train's `model` wraps it)
    optimizer: torch.optim.Optimizer  # the one AdamW of the whole run, never reset
    importance: list                  # per layer (3, F_l): EMA of the up, gate, down scores (section 5)
    alive: list                       # per layer (F_l,) bool: monotone masks (section 6)
    progress: dict                    # tokens, FLOPs per phase, wall time; "step": where this run started
    log: RunLog = None
    last_ckpt: int = None             # the step of the newest checkpoint on disk (written or resumed from)
    rank: int = 0                     # this process under torchrun (0 alone), and the number of processes
    world: int = 1
    accum: int = 1                    # this rank's micro-steps per step: grad_accum / world
    n_alive: list = None              # alive neurons per layer, counted on prune steps only (no sync per step)
    t0: float = 0.0                   # wall clock of step 0: a resumed run carries its earlier wall time over
    peak: float = None                # peak FLOP/s of one accelerator, for MFU (None: not known, none printed)
    sec_per_flop: float = None        # a running average of the step time per FLOP, for the ETA
    fresh: bool = True                # the model was (re)wrapped: the next step compiles, keep it out of the ETA
    hellaswag: list = None            # HellaSwag's examples, evaluated with GPT-2 BPE data (section 8)
    signal: int = None                # SIGTERM or SIGINT received by this process
    stopping: bool = False            # some rank received one: all stop together at the next step boundary


WHERE = ("out_dir", "plot_dir", "device", "compile", "compile_backend", "peak_flops")  # not what is trained


def check_dir(flag, path):
    """Refuse a folder that cannot be made (a file in its path, no permission), without making anything yet."""
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not (os.path.isdir(parent) and os.access(parent, os.W_OK)):
        raise ConfigError(f"cannot create {flag} {path}: {parent} is not a folder this process can write to")


def check_out_dir(out_dir, resume, overwrite):
    """A new run never overwrites a checkpoint it did not write."""
    if not resume and not overwrite and os.path.exists(os.path.join(out_dir, "ckpt.pt")):
        raise ConfigError(f"--out_dir {out_dir} already holds a run (ckpt.pt): continue it with --resume, start it "
                          f"over with --overwrite, or choose another --out_dir")


def start_run(cfg, resume, overwrite=False):
    """Build everything a run needs (model, AdamW, importance, masks, data, log) or restore it from
    out_dir/ckpt.pt, after checking the config, the data, the device and the out_dir, and printing what the run
    will do. Every check comes before anything is written."""
    ckpt = None
    if resume:
        ckpt = read_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
        where = {k: getattr(cfg, k) for k in WHERE}
        cfg = replace(Config(**ckpt["config"]), **where)  # the run's own config; only where it runs may change
    validate(cfg)
    rank, world = init_distributed(cfg)
    if cfg.grad_accum % world:
        raise ConfigError(f"--grad_accum {cfg.grad_accum} must be a multiple of the {world} processes: each "
                          f"does grad_accum / {world} micro-steps, so that a step has the same tokens on any number")
    ensure_data(cfg, prepare=world == 1)
    device, ctx = setup_device(cfg)
    check_dir("--out_dir", cfg.out_dir)
    check_dir("--plot_dir", cfg.plot_dir)  # now, not when the run is over and its figure is drawn
    check_out_dir(cfg.out_dir, resume, overwrite)
    if rank == 0:
        describe(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    F_t, F_e = ffn_sizes(cfg)
    widths = ckpt["widths"] if ckpt else [F_t if cfg.pruning == "none" else F_e] * cfg.n_layer
    torch.manual_seed(cfg.seed)  # the same seed on every rank: the same initial model
    raw_model = GPT(cfg, widths).to(device)
    run = Run(cfg, device, ctx, Data(cfg, device, rank, world), raw_model, make_optimizer(raw_model, cfg, device),
              importance=[torch.zeros(3, w, device=device) for w in widths],
              alive=[torch.ones(w, dtype=torch.bool, device=device) for w in widths],
              progress={"step": 0, "tokens": 0, "flops": {}, "wall_s": 0.0, "train_s": 0.0,
                        "params_start": raw_model.num_params()},
              rank=rank, world=world, accum=cfg.grad_accum // world, peak=peak_flops(cfg, device))
    if ckpt:
        restore_checkpoint(run, ckpt)
        run.last_ckpt = run.progress["step"]
    run.n_alive = [int(a.sum()) for a in run.alive]
    run.log = RunLog(cfg, resume_step=run.progress["step"] if ckpt else None, master=rank == 0)
    if world > 1:
        run.log.say(f"DDP: {world} processes, {run.accum} micro-steps each")
    if ckpt:
        run.log.say(f"resumed from {os.path.join(cfg.out_dir, 'ckpt.pt')} at step {run.progress['step']}")
    if tokenizer_kind(cfg) == "gpt2":  # zero-shot accuracy next to the loss, when its data is there
        if os.path.exists(HELLASWAG):
            run.hellaswag = read_hellaswag()
        else:
            run.log.say(f"HellaSwag: no {HELLASWAG}; python data/hellaswag/prepare.py adds it to every evaluation")
    if device.type == "cuda" and not run.peak:
        run.log.say(f"MFU: {torch.cuda.get_device_name(device)} is not in GPU_PEAK_BF16; pass --peak_flops")
    run.t0 = time.time() - run.progress["wall_s"]
    return run


def catch_stop_signals(run):
    """SIGTERM (a scheduler's notice) or Ctrl-C: finish the current step, write a checkpoint, stop. A second Ctrl-C
    stops at once. The handler only sets a flag: the loop saves at the next step boundary, never in the handler.
    Returns the handlers it replaced, to put back."""
    def on_signal(signum, frame):
        if run.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        run.signal = signum
        run.log.say(f"got {signal.Signals(signum).name}: stopping after this step, with a checkpoint")
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set signal handlers (e.g. a run started from a notebook thread)
    return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def wrap(run):
    """The model the step calls: run.raw_model, compiled with --compile, inside DDP under torchrun (nanoGPT's
    order). Built again after every compaction, which replaces Parameters that both hold on to: DDP's gradient
    hooks and its buckets, and the compiled graph's guards."""
    model = run.raw_model
    if run.cfg.compile:
        # The graphs of the old widths can never run again: drop them. Kept, they would count towards dynamo's
        # per-function recompile_limit (8: about 4 widths, training + evaluation), and past it the rest of the run
        # would fall back to eager without a word. Should the limit be hit anyway: fail loudly instead.
        torch._dynamo.reset()
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        model = torch.compile(model, backend=run.cfg.compile_backend)
    if run.world > 1:
        model = DDP(model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.fresh = True
    return model


def unwrap_ddp(model):
    """The model without DDP (compiled if it was): evaluation runs on rank 0 alone, with no collectives."""
    return model.module if isinstance(model, DDP) else model


def hellaswag(run, model):
    """{"hellaswag": accuracy} on GPT-2 BPE data with HellaSwag prepared, else {}."""
    if not run.hellaswag:
        return {}
    acc = hellaswag_accuracy(model, run.hellaswag, tokenizer(run.cfg)[0], run.device, run.ctx, run.cfg.block_size)
    return {"hellaswag": acc}


def evaluate(run, model, step):
    if run.rank == 0:
        est = estimate_loss(unwrap_ddp(model), run.data, run.cfg, run.ctx)
        hs = hellaswag(run, unwrap_ddp(model))
        run.log.say(f"step {step:5d} | eval | train {est['train']:.4f} | val {est['val']:.4f}" +
                    (f" | hellaswag {hs['hellaswag']:.4f}" if hs else ""))
        run.log.write("eval", step=step, tokens=run.progress["tokens"], flops=sum(run.progress["flops"].values()),
                      train_loss=est["train"], val_loss=est["val"], **hs)


def prune_and_compact(run, step):
    """A prune step (section 6's contract): shrink the masks to keep_at(step) neurons per layer, using the
    importance through step - 1, then compact (section 7) once compact_frac of a layer is masked, and always at
    t_end. Returns True when Parameters were replaced, so the wrapped model must be rebuilt."""
    cfg, model = run.cfg, run.raw_model
    F_t, F_e = ffn_sizes(cfg)
    t_p, t_end = phase_steps(cfg)
    if step == t_p:
        run.log.event(step, f"pruning starts ({cfg.pruning}, {cfg.ranking} ranking, {cfg.f1}-{cfg.f2} scores, "
                            f"lambda {cfg.ema_beta}): FFN {F_e} -> {F_t} per layer by step {t_end}")
    prune_(model, run.optimizer, run.importance, run.alive, keep_at(step, cfg), cfg)
    run.n_alive = [int(a.sum()) for a in run.alive]
    if run.world > 1:  # every rank ranked the same all-reduced importance: check that they kept the same neurons
        kept = torch.tensor([int(a.nonzero().sum()) for a in run.alive] + run.n_alive, device=run.device)
        low, high = kept.clone(), kept.clone()
        dist.all_reduce(low, dist.ReduceOp.MIN)
        dist.all_reduce(high, dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(f"step {step}: the ranks kept different neurons; their importance must have differed")
    masked = masked_fraction(run.alive)
    compacted = masked > 0 and (masked >= cfg.compact_frac or step == t_end)
    if compacted:
        before_w, before_p = model.ffn_widths, model.num_params()
        compact_(model, run.optimizer, run.importance, run.alive)
        run.log.event(step, f"compacted FFN {np.mean(before_w):.0f} -> {np.mean(model.ffn_widths):.0f} per layer, "
                            f"{fmt_params(before_p)} -> {fmt_params(model.num_params())} params")
    if step == t_end:
        run.log.event(step, f"pruning done, recovery from here: FFN widths {model.ffn_widths}")
    return compacted


def train_step(run, model, step):
    """One optimization step: accumulate gradients over this rank's micro-batches, track the importance, clip,
    check, AdamW. Returns (lr, loss, gradient norm, seconds); they cross to the host once."""
    cfg, optimizer = run.cfg, run.optimizer
    t_start = time.perf_counter()
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=run.device)
    x, y = run.data.batch("train")
    for micro in range(run.accum):
        if run.world > 1:  # DDP all-reduces the gradients in the last micro-step's backward only (nanoGPT)
            model.require_backward_grad_sync = micro == run.accum - 1
        with run.ctx:
            _, loss = model(x, y)
        if micro + 1 < run.accum:  # fetch the next batch while the device works on this one
            x, y = run.data.batch("train")
        (loss / run.accum).backward()
        loss_sum += loss.detach()
    if tracks_importance(step, cfg):  # the accumulated gradient (all-reduced: the same on every rank), unclipped
        update_importance(run.importance, run.raw_model, cfg)
    norm = torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), cfg.grad_clip or math.inf)
    # the step's one host sync: its loss, the norm, and whether a stop signal came (summed over ranks under DDP)
    stats = torch.stack([loss_sum / run.accum, norm.float(), loss_sum.new_full((), float(run.signal is not None))])
    if run.world > 1:
        dist.all_reduce(stats)
    loss, norm, signalled = stats.tolist()
    loss, norm = loss / run.world, norm / run.world
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise Diverged(f"loss is {loss}, gradient norm {norm} at step {step}; stopped before the update. "
                       f"{last_checkpoint(run)}. Lower --lr or raise --warmup_steps")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    run.stopping = signalled > 0
    if run.device.type == "cuda":
        torch.cuda.synchronize()  # the clock must see the device's work, not only its queueing
    return lr, loss, norm, time.perf_counter() - t_start


def flops_left(run, step):
    """Training FLOPs of the steps after this one, at the widths the keep-schedule gives them: for the ETA."""
    cfg, model = run.cfg, run.raw_model
    not_ffn = model.num_params() - 3 * cfg.n_embd * sum(model.ffn_widths)
    return tokens_per_step(cfg) * sum(flops_per_token(not_ffn + 3 * cfg.n_embd * cfg.n_layer * keep_at(s, cfg), cfg)
                                      for s in range(step + 1, cfg.max_steps))


def log_step(run, step, lr, loss, norm, dt):
    """Count the step's tokens and FLOPs (at the physical size: masked, not yet compacted neurons still cost),
    write its record, and print one line every log_every steps: loss, gradient norm, LR, widths, speed, and on
    a GPU MFU, peak memory and the ETA."""
    cfg, progress = run.cfg, run.progress
    phase, n_params, tps = phase_of(step, cfg), run.raw_model.num_params(), tokens_per_step(cfg)
    step_flops = flops_per_token(n_params, cfg) * tps
    progress["tokens"] += tps
    progress["flops"][phase] = progress["flops"].get(phase, 0.0) + step_flops
    progress["train_s"] += dt
    progress["wall_s"] = time.time() - run.t0
    if run.fresh and cfg.compile:
        run.log.event(step, f"compiled for FFN widths {run.raw_model.ffn_widths}: this step took {dt:.1f} s")
    if not run.fresh:  # a running average of the step time per FLOP, leaving out steps that compiled
        run.sec_per_flop = dt / step_flops if run.sec_per_flop is None else 0.9 * run.sec_per_flop + 0.1 * dt / step_flops
    run.fresh = False
    alive_width = float(np.mean(run.n_alive))
    run.log.write("train", step=step, tokens=progress["tokens"], loss=loss, norm=norm, lr=lr, ffn=alive_width,
                  params=n_params, phase=phase, ms=1000 * dt, flops=sum(progress["flops"].values()))
    if step % cfg.log_every == 0 or step == cfg.max_steps - 1:
        gpu = ""
        if run.peak:
            gpu += f" | mfu {100 * mfu(step_flops, dt, run):4.1f}%"
        if run.device.type == "cuda":
            gpu += f" | mem {torch.cuda.max_memory_allocated(run.device) / 2**30:.1f} GiB"
        if run.sec_per_flop:
            gpu += f" | eta {fmt_duration(flops_left(run, step) * run.sec_per_flop)}"
        run.log.say(f"step {step:5d}/{cfg.max_steps} | loss {loss:.4f} | norm {norm:.2f} | lr {lr:.1e} | "
                    f"ffn {alive_width:.0f}->{ffn_sizes(cfg)[0]} | params {fmt_params(n_params)} | {1000 * dt:4.0f} ms"
                    f" | {tps / dt / 1e3:5.1f}k tok/s{gpu}")


def finish_run(run, model):
    """The end, on rank 0: the exact validation loss over the whole split, the final record, a summary, a sample."""
    if run.rank != 0:
        return None
    cfg, progress = run.cfg, run.progress
    val = evaluate_full(unwrap_ddp(model), run.data, run.ctx)
    final = {"pipeline": cfg.pipeline, "val_loss": val, "ppl": math.exp(val), "params": run.raw_model.num_params(),
             "widths": run.raw_model.ffn_widths, "tokens": progress["tokens"],
             "flops": sum(progress["flops"].values()), "flops_by_phase": progress["flops"],
             "wall_s": progress["wall_s"], **hellaswag(run, unwrap_ddp(model))}
    run.log.write("final", **final)
    speed = mfu(final["flops"], progress["train_s"], run)
    print(f"done: {cfg.pipeline} | val loss {val:.4f} | ppl {math.exp(val):.2f} | params "
          f"{fmt_params(progress['params_start'])} -> {fmt_params(final['params'])} | {final['tokens'] / 1e6:.2f}M "
          f"tokens | {final['flops']:.3g} FLOPs ({', '.join(f'{k} {v:.2g}' for k, v in final['flops_by_phase'].items())})"
          f" | {final['wall_s']:.0f} s" + (f" | mfu {100 * speed:.1f}% (training steps)" if speed else "") +
          (f" | hellaswag {final['hellaswag']:.4f}" if "hellaswag" in final else ""))
    if cfg.compile:
        print(f"torch.compile: {torch._dynamo.utils.counters['stats']['unique_graphs']} graphs compiled in this process")
    if cfg.sample_tokens:
        print("sample from the final model:\n" + sample(run.raw_model, cfg, run.device, run.ctx))
    return {"kind": "final", **final}


def train(cfg, resume=False, stop_after=None, overwrite=False):
    """One run of a pipeline; returns its final record (None on ranks other than 0, or when stop_after=k stopped
    it at step k with a checkpoint). SIGTERM or Ctrl-C stops it the same way and raises Interrupted. A new run
    refuses an out_dir that holds a checkpoint, unless overwrite."""
    run = start_run(cfg, resume, overwrite)
    cfg, start = run.cfg, run.progress["step"]
    handlers = catch_stop_signals(run)
    try:
        model = wrap(run)  # run.raw_model: surgery and checkpoints; model: forward and backward
        for step in range(start, cfg.max_steps + 1):  # one extra iteration at T: it only evaluates and saves
            last_step = step == cfg.max_steps
            stop = last_step or step == stop_after or run.stopping
            # -- once in a while, before the step: evaluate, prune and compact, checkpoint --
            if step % cfg.eval_every == 0 or last_step:
                evaluate(run, model, step)
            if is_prune_step(step, cfg) and prune_and_compact(run, step):
                model = wrap(run)  # new Parameters: the compiled graph and DDP must follow
            if step > start and (step % cfg.ckpt_every == 0 or stop):
                save_checkpoint(run, step)  # rank 0 writes
            if stop:
                break
            # -- one optimization step, then its log line --
            lr, loss, norm, dt = train_step(run, model, step)
            log_step(run, step, lr, loss, norm, dt)
        final = finish_run(run, model) if last_step else None
        if run.world > 1:
            dist.barrier()  # the other ranks wait for rank 0's checkpoint and final evaluation
        if run.stopping and not last_step:
            raise Interrupted(run.signal or signal.SIGTERM, step, os.path.join(cfg.out_dir, "ckpt.pt"), run.world)
        return final
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        run.log.close()


# ---------------------------------------------------------------------------------------------------------------
# ---- 11. Plots: mirrors of the paper's Figure 1 (right) and Figure 2, from log.jsonl alone ----
# ---------------------------------------------------------------------------------------------------------------
PHASE_COLORS = {"enlarged": "#dbe9f6", "pruning": "#fde0c5", "recovery": "#dff2df"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def parse_log(records):
    header = next(r for r in records if r["kind"] == "config")
    return header, [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "eval"]


def shade_phases(ax, header, scale=1.0, labels=True):
    """Shade enlarged | pruning | recovery along x (steps times scale: tokens when scale = tokens per step)."""
    if header["pruning"] == "none":
        return
    t_p, t_end, T = header["t_p"], header["t_end"], header["max_steps"]
    spans = [("enlarged", 0, t_p), ("pruning", t_p, t_end), ("recovery", t_end, T)]
    for name, a, b in spans:
        if b > a:
            ax.axvspan(a * scale, b * scale, color=PHASE_COLORS[name], label=name if labels else None, lw=0)
    if t_end == t_p:  # one-shot: a window of zero width, drawn as a line
        ax.axvline(t_p * scale, color="#e6550d", lw=1.5, label="one-shot prune" if labels else None)


def smooth(values, window=25):
    """Trailing moving average (the first points average over what exists)."""
    c = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_run(records, path):
    """One run: LR with its phases (top), train/val loss against tokens (middle), FFN width (bottom)."""
    plt = _plt()
    header, train, evals = parse_log(records)
    steps = [r["step"] for r in train]
    fig, (ax_lr, ax_loss, ax_ffn) = plt.subplots(3, 1, figsize=(8, 10))
    shade_phases(ax_lr, header)
    ax_lr.plot(steps, [r["lr"] for r in train], color="k")
    ax_lr.set(xlabel="step", ylabel="learning rate", title=f"{header['pipeline']}: LR schedule ({header['lr_schedule']})")
    if header["pruning"] != "none":
        ax_lr.legend(loc="upper right", fontsize=8)
    tok = np.array([r["tokens"] for r in train]) / 1e6
    shade_phases(ax_loss, header, header["tokens_per_step"] / 1e6, labels=False)
    ax_loss.plot(tok, [r["loss"] for r in train], color="#9ecae1", lw=0.6, label="train (per step)")
    ax_loss.plot(tok, smooth([r["loss"] for r in train]), color="#08519c", label="train (smoothed)")
    ax_loss.plot([r["tokens"] / 1e6 for r in evals], [r["val_loss"] for r in evals], "o-", color="#d62728",
                 label="validation")
    losses = [r["loss"] for r in train]
    ax_loss.set_ylim(min(losses) - 0.05, np.percentile(losses, 95) + 0.1)  # the first steps would flatten the rest
    ax_loss.set(xlabel="training tokens (millions)", ylabel="loss (nats/token)", title="loss")
    ax_loss.legend(fontsize=8, loc="upper center")
    scored = [r for r in evals if "hellaswag" in r]
    if scored:  # zero-shot accuracy, on its own axis, against the same tokens
        ax_hs = ax_loss.twinx()
        ax_hs.plot([r["tokens"] / 1e6 for r in scored], [r["hellaswag"] for r in scored], "s-", color="#2ca02c",
                   label="HellaSwag accuracy")
        ax_hs.set_ylabel("HellaSwag accuracy (length-normalized)")
        ax_hs.legend(fontsize=8, loc="upper right")
    shade_phases(ax_ffn, header, labels=False)
    ax_ffn.plot(steps, [r["ffn"] for r in train], color="k")
    ax_ffn.axhline(header["F_t"], ls="--", color="gray", lw=1, label=f"target F_t = {header['F_t']}")
    ax_ffn.set(xlabel="step", ylabel="FFN neurons per layer (mean)", title="FFN width")
    ax_ffn.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_compare(runs, prefix):
    """Several runs (name -> log records): the figures of the comparison, written to prefix_*.png."""
    plt = _plt()
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    colors = dict(zip(PIPELINES, ["#d62728", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]))
    parsed = {name: parse_log(recs) for name, recs in runs.items()}
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(f"{prefix}_{name}.png", dpi=110)
        plt.close(fig)
        written.append(f"{prefix}_{name}.png")

    # Figure 2 mirror: the LR of each pipeline against tokens, one panel each, phases shaded
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 2.2 * len(runs)), sharex=True, squeeze=False)
    for ax, (name, (header, train, _)) in zip(axes[:, 0], parsed.items()):
        scale = header["tokens_per_step"] / 1e6
        shade_phases(ax, header, scale)
        ax.plot([r["tokens"] / 1e6 for r in train], [r["lr"] for r in train], color=colors.get(name, "k"))
        ax.set(ylabel="LR", title=f"{name}: pruning {header['pruning']}, LR {header['lr_schedule']}")
        if header["pruning"] != "none":
            ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("training tokens (millions)")
    save(fig, "lr")

    # Figure 1 (right) mirror: smoothed training loss and validation loss of all pipelines; a zoom on the end
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(13, 4.8))
    ref = next((h for h, _, _ in parsed.values() if h["pruning"] != "none"), None)
    for a in (ax, zoom):
        if ref and ref["t_end"] > ref["t_p"]:
            a.axvspan(ref["t_p"] * ref["tokens_per_step"] / 1e6, ref["t_end"] * ref["tokens_per_step"] / 1e6,
                      color=PHASE_COLORS["pruning"], label="pruning window", lw=0)
        elif ref:
            a.axvline(ref["t_p"] * ref["tokens_per_step"] / 1e6, color="#e6550d", lw=1.5, label="one-shot prune")
        for name, (header, train, evals) in parsed.items():
            tok = np.array([r["tokens"] for r in train]) / 1e6
            a.plot(tok, smooth([r["loss"] for r in train]), color=colors.get(name), lw=1.2,
                   label=f"{name} train (smoothed)")
            a.plot([r["tokens"] / 1e6 for r in evals], [r["val_loss"] for r in evals], "o--", ms=3,
                   color=colors.get(name), lw=0.8, label=f"{name} validation")
        a.set(xlabel="training tokens (millions)", ylabel="loss (nats/token)")
    every = [r["loss"] for _, train, _ in parsed.values() for r in train]
    ax.set_ylim(min(every) - 0.05, np.percentile(every, 95) + 0.2)  # the first steps would flatten the rest
    ax.set_title("training and validation loss, all pipelines")
    ax.legend(fontsize=7)
    total = max(r["tokens"] for _, train, _ in parsed.values() for r in train[-1:]) / 1e6
    late = [r for _, train, evals in parsed.values() for r in train + evals if r["tokens"] / 1e6 >= 0.45 * total]
    late_losses = [r.get("val_loss", r.get("loss")) for r in late]
    zoom.set_xlim(0.45 * total, total * 1.01)
    if late_losses:
        lo, hi = np.percentile(late_losses, [0, 90])
        zoom.set_ylim(lo - 0.02, hi + 0.05)
    zoom.set_title("zoom: the second half, where the pipelines separate")
    save(fig, "loss")

    # loss at equal compute: the enlarged phase is not free
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (header, _, evals) in parsed.items():
        ax.plot([r["flops"] for r in evals], [r["val_loss"] for r in evals], "o-", ms=3, color=colors.get(name),
                label=name)
    vals = [r["val_loss"] for _, _, evals in parsed.values() for r in evals]
    ax.set_ylim(min(vals) - 0.03, np.percentile(vals, 85) + 0.05)  # the step-0 point would flatten the rest
    ax.set(xlabel="training FLOPs (6 x params x tokens)", ylabel="validation loss (nats/token)",
           title="validation loss against training compute")
    ax.legend(fontsize=8)
    save(fig, "flops")

    # FFN width against step
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, (header, train, _)), style in zip(parsed.items(), ["-", "--", "-.", ":"] * 2):
        ax.plot([r["step"] for r in train], [r["ffn"] for r in train], style, color=colors.get(name), lw=2,
                label=name)  # line styles: pipelines that prune alike would otherwise hide one another
    ax.set(xlabel="step", ylabel="FFN neurons per layer (mean)", title="FFN width during training")
    ax.legend(fontsize=8)
    save(fig, "ffn")
    return written


def results_table(runs):
    """Markdown: one row per pipeline, from the final record of its log (HellaSwag when the runs measured it)."""
    finals = {name: next(r for r in recs if r["kind"] == "final") for name, recs in runs.items()}
    hs = all("hellaswag" in f for f in finals.values())
    rows = ["| pipeline | val loss | perplexity |" + (" HellaSwag |" if hs else "") +
            " params | FFN widths | tokens | training FLOPs | wall time |", "|---" * (8 + hs) + "|"]
    for name, f in finals.items():
        rows.append(f"| {name} | {f['val_loss']:.4f} | {f['ppl']:.3f} |" + (f" {f['hellaswag']:.4f} |" if hs else "") +
                    f" {fmt_params(f['params'])} | {'/'.join(map(str, sorted(set(f['widths']))))} | "
                    f"{f['tokens'] / 1e6:.2f}M | {f['flops']:.3g} | {f['wall_s']:.0f} s |")
    return "\n".join(rows) + "\n"


def plot_sweep(knobs, results, pipeline, path):
    """Final validation loss against a swept knob (the paper's Figures 3, 4 and 1 left): the pruning pipeline per
    value, scratch at F_t (and the ceiling, F_e throughout) as references; below, the gap to scratch."""
    plt = _plt()
    labels = ["/".join(map(str, r["value"])) for r in results]
    numeric = len(knobs) == 1 and all(isinstance(r["value"][0], (int, float)) for r in results)
    x = [r["value"][0] for r in results] if numeric else list(range(len(results)))
    fig, (ax, ax_gap) = plt.subplots(2, 1, figsize=(7, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    styles = {"arm": ("o-", "#d62728", pipeline), "scratch": ("s--", "#7f7f7f", "scratch (F_t throughout)"),
              "ceiling": ("^:", "#1f77b4", "ceiling (F_e throughout)")}
    for role, (style, color, label) in styles.items():
        if role not in results[0]:
            continue
        if not numeric:  # categories: markers, no line between them
            style = style[0]
        y = [r[role]["val_loss"] for r in results]
        if role != "arm" and len(set(y)) == 1:  # one run for every value: a reference line
            ax.axhline(y[0], ls=styles[role][0][1:], color=color, label=f"{label}: {y[0]:.4f}")
        else:
            ax.plot(x, y, style, color=color, label=label)
        if role != "scratch":
            ax_gap.plot(x, [r[role]["val_loss"] - r["scratch"]["val_loss"] for r in results], style, color=color,
                        label=f"{label} - scratch")
    ax_gap.axhline(0, color="#7f7f7f", lw=1)
    name = "/".join(knobs)
    ax.set(ylabel="final validation loss (nats/token)", title=f"{pipeline}: final validation loss against {name}")
    ax.legend(fontsize=8)
    ax_gap.set(xlabel=name, ylabel="minus scratch (nats)")
    ax_gap.legend(fontsize=8)
    ax_gap.set_xticks(x, labels, rotation=30 if not numeric else 0)
    if knobs == ("max_steps",):  # the token budget (the paper's Figure 1, left): doublings, equally spaced
        ax_gap.set_xscale("log", base=2)
        ax_gap.set_xticks(x, labels)
        ax_gap.set_xlabel(f"max_steps, of {results[0]['arm']['tokens'] / x[0]:,.0f} tokens each")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_table(knobs, results, pipeline):
    """Markdown: one row per value; with several seeds (--sweep seed=...), the mean paired gap and its SE."""
    ceiling = "ceiling" in results[0]
    rows = [f"| {'/'.join(knobs)} | {pipeline} | scratch | gap |" + (" ceiling |" if ceiling else "") +
            " tokens | wall time |", "|---" * (6 + ceiling) + "|"]
    gaps = []
    for r in results:
        gaps.append(r["arm"]["val_loss"] - r["scratch"]["val_loss"])
        rows.append(f"| {'/'.join(map(str, r['value']))} | {r['arm']['val_loss']:.4f} | {r['scratch']['val_loss']:.4f} "
                    f"| {gaps[-1]:+.4f} |" + (f" {r['ceiling']['val_loss']:.4f} |" if ceiling else "") +
                    f" {r['arm']['tokens'] / 1e6:.2f}M | {r['arm']['wall_s']:.0f} s |")
    if knobs == ("seed",) and len(gaps) > 1:
        se = float(np.std(gaps, ddof=1) / math.sqrt(len(gaps)))
        rows.append(f"\nPaired by seed: mean gap {np.mean(gaps):+.4f}, standard error {se:.4f} "
                    f"({abs(np.mean(gaps)) / se:.2f} SE); {pipeline} better in {sum(g < 0 for g in gaps)} of "
                    f"{len(gaps)} seeds.")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# ---- 12. Main: one run, or a suite of runs (--compare, --ablation, --sweep) with figures and a results table ----
# ---------------------------------------------------------------------------------------------------------------
def train_and_plot(cfg, resume=False, overwrite=False):
    """A run, then its figure. The plot is drawn here, not in train(), so tests and notebooks train without
    matplotlib."""
    final = train(cfg, resume, overwrite=overwrite)
    if final:  # None on ranks other than 0
        plot_run(read_log(os.path.join(cfg.out_dir, "log.jsonl")), os.path.join(cfg.plot_dir, f"{final['pipeline']}.png"))
    return final


# knobs that change nothing a run trains: where it runs, what it prints, and the preset (its values are all logged)
UNTRAINED = WHERE + ("preset", "sample_tokens", "log_every", "ckpt_every")


def finished_or_resumable(cfg):
    """'finished' or 'resume' when cfg.out_dir holds a run of this very config (so a suite or sweep uses it
    instead of training it again: runs are shared between them, and a suite stopped midway goes on where it
    stopped); None when it holds nothing, or a run of another config (which check_out_dir then refuses)."""
    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    if not (os.path.exists(os.path.join(cfg.out_dir, "ckpt.pt")) and os.path.exists(log_path)):
        return None
    records = read_log(log_path)
    header = records[0] if records and records[0]["kind"] == "config" else {}
    if any(header.get(k) != v for k, v in asdict(cfg).items() if k not in UNTRAINED):
        return None
    return "finished" if any(r["kind"] == "final" for r in records) else "resume"


def check_arms(subs, overwrite):
    for sub in subs:  # refuse before the first run, not after it: no arm may overwrite another config's run
        if overwrite or not finished_or_resumable(sub):
            check_out_dir(sub.out_dir, False, overwrite)


def run_arm(cfg, overwrite=False, replot=False):
    """One run of a suite or sweep, unless out_dir already holds it finished; its log records."""
    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    state = None if overwrite else finished_or_resumable(cfg)
    if state == "finished" and not replot:
        print(f"{cfg.out_dir} holds this run, finished: reused")
    elif not replot:
        train_and_plot(cfg, resume=state == "resume", overwrite=overwrite)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None  # under torchrun, rank 0 draws the figures
    if not os.path.exists(log_path) or not any(r["kind"] == "final" for r in read_log(log_path)):
        raise ConfigError(f"--replot: {log_path} holds no finished run; run once without --replot")
    return read_log(log_path)


def suite_configs(cfg, names):
    """One config per pipeline of a suite, each with its own out_dir/<name> (where its figure stays too)."""
    subs = [replace(cfg, pipeline=name, pruning="", lr_schedule="", out_dir=os.path.join(cfg.out_dir, name),
                    plot_dir=os.path.join(cfg.out_dir, name)) for name in names]
    for sub in subs:
        validate(sub)
    return subs


def run_suite(cfg, names, label, replot=False, overwrite=False):
    """Train each named pipeline from the same seed and data order, each into out_dir/<name>, then compare."""
    subs = suite_configs(cfg, names)
    if not replot:
        check_arms(subs, overwrite)
    runs = {}
    for name, sub in zip(names, subs):
        if not replot:
            print(f"\n==== {label}: {name} ====")
        runs[name] = run_arm(sub, overwrite, replot)
    if None in runs.values():
        return {}
    write_table(cfg, label, results_table(runs), plot_compare(runs, os.path.join(cfg.plot_dir, label)))
    return runs


def write_table(cfg, label, table, figures):
    """A suite's or sweep's markdown table, beside its figures and in out_dir."""
    for path in (os.path.join(cfg.plot_dir, f"{label}_results.md"), os.path.join(cfg.out_dir, f"{label}_results.md")):
        with open(path, "w") as f:
            f.write(table)
    print(f"\n{table}\nwrote {', '.join(figures)} and {label}_results.md")


# ---- sweeps: the paper's robustness figures (Figures 3, 4, 1 left) from one command each ----
PRUNING_KNOBS = ("enlarge", "ffn_multiple", "prune_start", "prune_len", "prune_every", "ema_beta", "ema_warmup",
                 "f1", "f2", "ranking", "compact_frac")  # what a model trained at F_t from scratch never reads


def parse_sweep(spec):
    """'enlarge=1.5,2.6,4' -> (('enlarge',), [(1.5,), (2.6,), (4.0,)]); knobs swept together are joined by '/':
    'f1/f2=mean/max,max/max'. Each value is typed as its Config field."""
    types = {f.name: f.type for f in fields(Config)}
    knobs, _, values = spec.partition("=")
    knobs = tuple(knobs.split("/"))
    bad = [k for k in knobs if k not in types or k in UNTRAINED + ("pipeline", "pruning", "lr_schedule")]
    if not values or bad:
        raise ConfigError(f"--sweep {spec!r}: write KNOB=V1,V2,... with KNOB a training knob (e.g. enlarge=1.5,2.6,4 "
                          f"or f1/f2=mean/max,max/max)" + (f"; {', '.join(bad)} is not one" if bad else ""))
    parsed = []
    for value in values.split(","):
        parts = value.split("/")
        if len(parts) != len(knobs):
            raise ConfigError(f"--sweep: value {value!r} has {len(parts)} parts for the {len(knobs)} knobs "
                              f"{'/'.join(knobs)}")
        try:
            parsed.append(tuple(types[k](v) for k, v in zip(knobs, parts)))
        except ValueError:
            raise ConfigError(f"--sweep: {value!r} is not a value of {'/'.join(knobs)}") from None
    if len(set(parsed)) != len(parsed):
        raise ConfigError(f"--sweep {spec!r}: a value is given twice")
    return knobs, parsed


def sweep_arms(cfg, knobs, values, ceiling=False):
    """Per value, the runs {role: (name, config)}: 'arm' is cfg.pipeline with the value set, 'scratch' the target
    width from scratch, 'ceiling' (ceiling=True) the enlarged width trained throughout. A run is named by the
    swept values it depends on ('integrated_enlarge=6.0', 'scratch'), so a run that does not depend on the knob
    (scratch in an ema_beta sweep) is one run for all values, and a value equal to cfg's own is the plain
    'integrated' of --compare in the same --out_dir: runs are shared."""
    if cfg.pruning == "none":
        raise ConfigError(f"--sweep compares a pruning pipeline with scratch; --pipeline {cfg.pipeline} prunes nothing")
    F_e = ffn_sizes(cfg)[1]

    def placed(name, run):  # in its own out_dir/<name>, checked now rather than when its turn comes
        run = replace(run, out_dir=os.path.join(cfg.out_dir, name), plot_dir=os.path.join(cfg.out_dir, name))
        try:
            return name, validate(run)
        except ConfigError as e:
            raise ConfigError(f"--sweep, at {name}: {e}") from None

    rows = []
    for value in values:
        setting = dict(zip(knobs, value))
        run = replace(cfg, **setting)
        changed = [f"{k}={v}" for k, v in setting.items() if v != getattr(cfg, k)]
        unpruned = [c for c in changed if c.split("=")[0] not in PRUNING_KNOBS]
        # the references keep cfg's own pruning knobs: a scratch run never reads them, so it is shared
        scratch = replace(cfg, pipeline="scratch", pruning="", lr_schedule="",
                          **{k: v for k, v in setting.items() if k not in PRUNING_KNOBS})
        runs = {"arm": placed("_".join([cfg.pipeline] + changed), run),
                "scratch": placed("_".join(["scratch"] + unpruned), scratch)}
        if ceiling:  # named by its width where that differs from cfg's F_e
            width = ffn_sizes(run)[1]
            runs["ceiling"] = placed("_".join(["ceiling"] + [f"F{width}"] * (width != F_e) + unpruned),
                                     replace(scratch, ffn_hidden=width))
        rows.append({"value": value, "runs": runs})
    return rows


def run_sweep(cfg, spec, ceiling=False, replot=False, overwrite=False):
    """--sweep KNOB=V1,...: train every distinct run once (finished ones are reused), then the figure and the
    table: final validation loss against the knob, scratch (and the ceiling) as references."""
    knobs, values = parse_sweep(spec)
    rows = sweep_arms(cfg, knobs, values, ceiling)
    unique = dict(run for row in rows for run in row["runs"].values())  # a shared name is one run
    if not replot:
        check_arms(unique.values(), overwrite)
    finals = {}
    for i, (name, sub) in enumerate(unique.items()):
        if not replot:
            print(f"\n==== sweep {'/'.join(knobs)}: {name} ({i + 1} of {len(unique)}) ====")
        records = run_arm(sub, overwrite, replot)
        if records is None:
            return None
        finals[name] = next(r for r in records if r["kind"] == "final")
    results = [{"value": row["value"], **{role: finals[name] for role, (name, _) in row["runs"].items()}}
               for row in rows]
    label = "sweep_" + "_".join(knobs)
    path = plot_sweep(knobs, results, cfg.pipeline, os.path.join(cfg.plot_dir, f"{label}.png"))
    write_table(cfg, label, sweep_table(knobs, results, cfg.pipeline), [path])
    return results


def benchmark(cfg, steps=20, rounds=3):
    """Median time of one optimization step: importance tracking off vs on (enlarged model), and a model
    compacted from F_e vs one built at F_t from scratch; with --compile, each also compiled. The variants
    alternate, so load drifts hit all alike."""
    validate(cfg)
    device, ctx = setup_device(cfg)
    F_t, F_e = ffn_sizes(cfg)
    x = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.block_size + 1), device=device)

    def setup(widths, compact_to=None):
        torch.manual_seed(cfg.seed)
        model = GPT(cfg, widths).to(device)
        opt = make_optimizer(model, cfg, device)
        importance = [torch.zeros(3, w, device=device) for w in widths]
        if compact_to:  # one real step for AdamW state, then prune to F_t and compact: the integrated path
            step(model, opt, importance, False)
            alive = [torch.ones(w, dtype=torch.bool, device=device) for w in widths]
            prune_(model, opt, [torch.rand(3, w, device=device) for w in widths], alive, compact_to, cfg)
            compact_(model, opt, importance, alive)
        return model, opt, importance

    def step(model, opt, importance, track):
        with ctx:
            loss = model(x[:, :-1], x[:, 1:])[1]
        loss.backward()
        if track:
            update_importance(importance, model, cfg)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    variants = {"enlarged, tracking off": (setup([F_e] * cfg.n_layer), False),
                "enlarged, tracking on": (setup([F_e] * cfg.n_layer), True),
                "target, built at F_t": (setup([F_t] * cfg.n_layer), False),
                "target, compacted from F_e": (setup([F_e] * cfg.n_layer, compact_to=F_t), False)}
    if cfg.compile:  # the same models, compiled (one compiled twin per width: nothing to reset between them)
        torch._dynamo.config.recompile_limit = 2 * len(variants)
        variants.update({f"{name}, compiled": ((torch.compile(m, backend=cfg.compile_backend), opt, imp), track)
                         for name, ((m, opt, imp), track) in list(variants.items())})
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, ((model, opt, importance), track) in variants.items():
            step(model, opt, importance, track)  # warm-up (and compile, the first time)
            for _ in range(steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                step(model, opt, importance, track)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
    med = {name: 1000 * float(np.median(ts)) for name, ts in times.items()}
    print(f"{'variant':38s} | ms/step (median of {steps * rounds})")
    for name, ms in med.items():
        print(f"{name:38s} | {ms:8.1f}")
    print(f"tracking on / off:     {med['enlarged, tracking on'] / med['enlarged, tracking off']:.3f}x")
    print(f"compacted / built:     {med['target, compacted from F_e'] / med['target, built at F_t']:.3f}x")
    if cfg.compile:
        for name in ("enlarged, tracking off", "target, built at F_t"):
            print(f"compiled / eager ({name.split(',')[0]}): {med[name + ', compiled'] / med[name]:.3f}x")
    return med


def use_checkpoint(args):
    """--sample, --evaluate, --export_hf: the model of --out_dir/ckpt.pt, on --device (data from --data_dir)."""
    model, cfg = load_model(os.path.join(args.given.get("out_dir", Config.out_dir), "ckpt.pt"))
    cfg = replace(cfg, **{k: v for k, v in args.given.items() if k in ("device", "dtype", "data_dir", "seed")})
    device, ctx = setup_device(cfg)
    model.to(device).eval()
    print(f"{fmt_params(model.num_params())} params, FFN widths {model.ffn_widths}, from {cfg.out_dir}/ckpt.pt")
    if args.evaluate:
        ensure_data(replace(cfg, sample_tokens=0), prepare=False)
        val = evaluate_full(model, Data(cfg, device), ctx)
        print(f"val loss {val:.4f} | perplexity {math.exp(val):.3f} | over every window of {dataset_path(cfg)}/val.bin")
        if tokenizer_kind(cfg) == "gpt2" and os.path.exists(HELLASWAG):
            examples = read_hellaswag()
            acc = hellaswag_accuracy(model, examples, tokenizer(cfg)[0], device, ctx, cfg.block_size)
            print(f"hellaswag {acc:.4f} (length-normalized, {len(examples):,} examples)")
    if args.sample:
        prompt = open(args.prompt_file).read() if args.prompt_file else args.prompt
        for i in range(args.num_samples):
            text = sample(model, cfg, device, ctx, prompt, args.max_new_tokens, args.temperature, args.top_k,
                          seed=cfg.seed + i)
            print(f"---- sample {i + 1}/{args.num_samples}\n{prompt}{text}")
    if args.export_hf:
        export_hf(model, cfg, args.export_hf)
        print(f"wrote {args.export_hf}: load it with transformers.AutoModelForCausalLM.from_pretrained")


def main(argv=None):
    try:
        cfg, args = parse_args(argv)
        if args.sample or args.evaluate or args.export_hf:
            use_checkpoint(args)
        elif args.bench:
            benchmark(cfg)
        elif args.compare or args.ablation:
            suites = [(label, names) for label, names, on in (("compare", COMPARE, args.compare),
                                                               ("ablation", ABLATION, args.ablation)) if on]
            for label, names in suites:  # refuse bad knobs and used out_dirs before the first run starts
                if not args.replot:
                    check_arms(suite_configs(cfg, names), args.overwrite)
            for label, names in suites:
                run_suite(cfg, names, label, replot=args.replot, overwrite=args.overwrite)
        elif args.sweep:
            run_sweep(cfg, args.sweep, ceiling=args.ceiling, replot=args.replot, overwrite=args.overwrite)
        else:
            train_and_plot(cfg, resume=args.resume, overwrite=args.overwrite)
        if dist.is_initialized():
            dist.barrier()  # no rank tears the group down while rank 0 still writes its checkpoint or plots
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as e:  # diverged, or a checkpoint could not be written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(e, file=sys.stderr)
        sys.exit(128 + e.signum)  # the shell's convention for "ended by this signal"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
