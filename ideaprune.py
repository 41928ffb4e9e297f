"""
ideaprune.py: IDEA Prune (Li et al., arXiv 2503.05920) in one readable file.

Train an ENLARGED decoder LM (wider FFN) and, in the same run, under ONE LR schedule and ONE AdamW, prune its FFN
down to the target width: neurons ranked by an EMA of their sensitivity |W * dW|, removed on a cubic schedule,
sliced out of the weights and the AdamW state; the target-size model then finishes training ("recovery"). The
paper: this beats the target trained from scratch on the same tokens, and pipelines that restart the LR per stage.
Attention heads can be pruned the same way (--enlarge_attn). Sections 1-8 are the method and its loop; 9-14 make
it a training script. It runs alone; the scripts beside it (the README lists them) are imported where needed.

Run manual (the README has the rest; --help lists every knob, and any knob overrides a preset)
  python ideaprune.py --preset demo                    # 2-core CPU, minutes: Shakespeare bytes, 1.08M -> 0.49M
  python ideaprune.py --preset demo --pipeline scratch # the same tokens and schedule, target size from step 0
  torchrun --standalone --nproc_per_node 8 ideaprune.py --preset 300m --compile   # 8 GPUs: ~588M -> ~308M
  python ideaprune.py --out_dir out --resume           # continue exactly where out/ckpt.pt left off
  python ideaprune.py --out_dir out --sample --export_hf out/hf   # use a checkpoint: text, a Hugging Face folder
"""
import argparse
import datetime
import errno
import fcntl
import functools
import importlib.util
import inspect
import json
import math
import os
import re
import shlex
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

# ---- 1. Config and presets ----------------------------------------------------------------------------------------
@dataclass
class Config:
    # what to run
    preset: str = "cpu"              # cpu | demo | rich | llama | tiny | 300m: base values; flags override them
    pipeline: str = "integrated"     # integrated (IDEA Prune) | scratch | minitron | sheared | resumed | rewarmed
    pruning: str = ""                # iterative | oneshot | none; empty = what --pipeline implies
    lr_schedule: str = ""            # unified | restarted | rewarm; empty = what --pipeline implies
    seed: int = 1337                 # model init and data order; every pipeline sees the same batches
    # data
    dataset: str = "shakespeare"     # folder under data/ holding train.bin, val.bin (uint16) and meta.json
    data_dir: str = ""               # read the data from here instead of data/<dataset>
    tokenizer: str = ""              # bytes | gpt2: what the token ids are; empty = what the data's meta.json says
    batch_size: int = 32             # sequences per micro-step
    grad_accum: int = 1              # micro-steps per optimizer step
    block_size: int = 128            # context length in tokens
    # model: Llama-style decoder; the enlarged and the target model differ in FFN width (and heads, --enlarge_attn)
    vocab_size: int = 256            # 256 = bytes; 50304 = GPT-2's 50257 padded to a multiple of 64
    n_layer: int = 4                 # transformer blocks
    n_head: int = 4                  # attention heads per block (of the target; head_dim = n_embd / n_head)
    n_embd: int = 128                # d_model
    ffn_hidden: int = 384            # F_t: the target (deployed) FFN width of every layer
    enlarge: float = 2.6             # e: the enlarged width F_e = e * F_t, rounded up to a multiple of ffn_multiple
    ffn_multiple: int = 64           # F_e is rounded up to a multiple of this (GPU-friendly shapes)
    enlarge_attn: float = 1.0        # e_attn: the enlarged model has e_attn * n_head heads, pruned like the FFN (1: not)
    # optimizer and the LR schedule
    max_steps: int = 800             # T: optimizer steps of the whole run, all phases together
    lr: float = 3e-3                 # eta_p: peak LR, reached after the warmup
    min_lr: float = 3e-5             # eta_e: LR at the end of the run (and of every stage when restarted)
    warmup_steps: int = 40           # linear warmup (of every stage when restarted)
    decay_frac: float = 1.0          # the cosine to eta_e takes this last part of a stage (< 1: warmup-stable-decay)
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
    ranking: str = "layer"           # layer (every layer ends at F_t) | global | adaptive (Adapt-Pruner): section 6
    adapt_amp: float = 0.5           # A: with --ranking adaptive layer l keeps k (1 + A z_l) units, z_l in [-1, 1]
    compact_frac: float = 0.1        # compact once this fraction of a layer's width is masked (1 = only at the end)
    # evaluation, logging, checkpoints
    eval_every: int = 100            # steps between validation estimates
    eval_iters: int = 20             # batches per estimate (the final evaluation reads the whole val split)
    log_every: int = 20              # steps between printed log lines (log.jsonl gets every step)
    ckpt_every: int = 200            # steps between checkpoints (one is always written at the end)
    sample_tokens: int = 300         # length of the sample generated at the end (0 = none)
    out_dir: str = "out"             # ckpt.pt and log.jsonl (--compare: one sub-folder per pipeline)
    plot_dir: str = ""               # the run's figure (empty: --out_dir); --compare/--sweep: theirs
    # system
    device: str = "auto"             # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"              # auto (bfloat16 on CUDA, else float32) | float32 | bfloat16
    compile: bool = False            # torch.compile the model (recompiled for each new width after a compaction)
    compile_backend: str = "inductor"  # inductor: fused kernels | aot_eager: no code generation (debugging, tests)
    peak_flops: float = 0.0          # peak bf16 FLOP/s of one accelerator, for MFU (0 = look the GPU up in a table)
    dist_timeout: float = 600.0      # torchrun: seconds a process waits for the others before the job ends

    def __post_init__(self):  # the knobs a pipeline implies (PIPELINES), filled in once: no function sees them empty
        implied = PIPELINES.get(self.pipeline, ("", ""))
        self.pruning, self.lr_schedule = self.pruning or implied[0], self.lr_schedule or implied[1]

PRESETS = {
    "cpu": {},  # the defaults above: a target FFN of 3 d_model, enlarged 2.6x
    # FFN-starved: the target FFN is as wide as d_model (128), enlarged 4x to 512, so FFN width is the bottleneck
    "demo": dict(ffn_hidden=128, enlarge=4.0),
    # token-rich and FFN-starved: 2 layers of d_model 32, F_t = d_model enlarged 4x; 253 tokens per deployed parameter
    "rich": dict(n_layer=2, n_head=2, n_embd=32, ffn_hidden=32, enlarge=4.0, ffn_multiple=16, max_steps=1400,
                 lr=6e-3, eval_every=200, ckpt_every=200),
    # token-rich and shaped like the paper's models: a Llama FFN (F_t = 88, about 8/3 d_model: two thirds of each
    # block) enlarged 2.6x; 253 tokens per deployed parameter
    "llama": dict(n_layer=2, n_head=2, n_embd=32, ffn_hidden=88, enlarge=2.6, ffn_multiple=8, max_steps=2066,
                  lr=6e-3, eval_every=200, ckpt_every=200),
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

# A pipeline is a choice of two orthogonal knobs, not a copy of the training loop (sections 4 and 6).
PIPELINES = {                          # (pruning, lr_schedule)
    "integrated": ("iterative", "unified"),   # IDEA Prune: one cosine, cubic iterative pruning
    "scratch": ("none", "unified"),           # the target-size model, same tokens, same schedule
    "minitron": ("oneshot", "restarted"),     # enlarged stage to its end LR, one-shot prune, fresh warmup + cosine
    "sheared": ("iterative", "restarted"),    # enlarged, pruning and recovery stages, each with its own schedule
    "resumed": ("oneshot", "unified"),        # ablation: one-shot prune at t_p, the schedule simply continues
    "rewarmed": ("oneshot", "rewarm"),        # ablation: the same pruned start, recovery with a fresh warmup + cosine
}

def ffn_sizes(cfg):
    """(F_t, F_e): the target width and the enlarged width, F_e = e * F_t rounded up to a multiple.
    The round(..., 6) drops float noise first: 1.1 * 3200 / 64 is 55.00000000000001, which would ceil to 56."""
    m = cfg.ffn_multiple
    return cfg.ffn_hidden, m * math.ceil(round(cfg.enlarge * cfg.ffn_hidden / m, 6))

def head_sizes(cfg):
    """(H_t, H_e): heads per layer of the target and of the enlarged model, H_e = e_attn * n_head rounded up."""
    return cfg.n_head, math.ceil(round(cfg.enlarge_attn * cfg.n_head, 6))

def unit_sizes(cfg):
    """{part: (target, enlarged)} units per layer of each part (a Block's module) pruned: "ffn", "attn" (heads)."""
    H_t, H_e = head_sizes(cfg)
    return {"ffn": ffn_sizes(cfg), **({"attn": (H_t, H_e)} if H_e > H_t else {})}

def phase_steps(cfg):
    """(t_p, t_end): pruning runs over steps t_p .. t_end; one-shot pruning is a window of length 0."""
    t_p = round(cfg.prune_start * cfg.max_steps)
    return t_p, t_p + (0 if cfg.pruning == "oneshot" else round(cfg.prune_len * cfg.max_steps))

# ---- 2. Data: uint16 token files, random windows (nanoGPT) --------------------------------------------------------
def dataset_path(cfg): return cfg.data_dir or os.path.join(ROOT, "data", cfg.dataset)

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
        cuda = self.device.type == "cuda"  # pinned memory: the copy overlaps the device's work
        buf = (buf.pin_memory() if cuda else buf).to(self.device, non_blocking=cuda)
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

# ---- 3. Model: a Llama-style decoder whose FFN widths and head counts are per-layer lists --------------------------
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

# A structured unit (an FFN neuron, an attention head) is a block of unit_size consecutive rows (dim 0) or columns
# (dim 1) of a few matrices: 1 for a neuron, head_dim for a head. Each module lists them in unit_linears() as
# (linear, dim); the importance, the masks and the compaction all walk over that one list.
def unit_view(t, dim, size):
    """t (a weight, its gradient, an AdamW moment) with its units on axis dim: (units, size, d) or (d, units, size)."""
    return t.unflatten(dim, (-1, size))

def select_units(t, dim, size, idx):
    """The units idx (sorted) of t, as one matrix again: t with fewer rows (dim 0) or columns (dim 1)."""
    return unit_view(t, dim, size).index_select(dim, idx).flatten(dim, dim + 1)

class Attention(nn.Module):
    """Causal self-attention with RoPE: `heads` heads of head_dim = n_embd / n_head (an enlarged model has more heads
    of the same size, so its inner width heads * head_dim may exceed n_embd).
    Head h is rows [h hd, (h + 1) hd) of W_q, W_k, W_v (heads hd, d) and those columns of W_o (d, heads hd)."""
    def __init__(self, cfg, heads):
        super().__init__()
        self.unit_size = self.head_dim = cfg.n_embd // cfg.n_head
        self.q, self.k, self.v = (nn.Linear(cfg.n_embd, heads * self.head_dim, bias=False) for _ in range(3))
        self.o = nn.Linear(heads * self.head_dim, cfg.n_embd, bias=False)

    n_units = property(lambda self: self.o.weight.shape[1] // self.head_dim)  # heads

    def unit_linears(self): return (self.q, 0), (self.k, 0), (self.v, 0), (self.o, 1)  # (linear, dim of its units)

    def forward(self, x, cos, sin):
        (B, T, _), H, hd = x.shape, self.n_units, self.head_dim
        q, k, v = (lin(x).view(B, T, H, hd).transpose(1, 2) for lin in (self.q, self.k, self.v))  # (B, H, T, hd)
        q, k = apply_rope(q, cos[:T], sin[:T]), apply_rope(k, cos[:T], sin[:T])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).contiguous().view(B, T, H * hd))

class SwiGLU(nn.Module):
    """FFN of width F: down(silu(gate(x)) * up(x)).
    Neuron j is row j of W_gate and W_up (F, d) and column j of W_down (d, F): pruning removes all three."""
    unit_size = 1
    n_units = property(lambda self: self.up.weight.shape[0])  # neurons: the width

    def __init__(self, d, width):
        super().__init__()
        self.gate, self.up = (nn.Linear(d, width, bias=False) for _ in range(2))
        self.down = nn.Linear(width, d, bias=False)

    def unit_linears(self): return (self.up, 0), (self.gate, 0), (self.down, 1)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))

class Block(nn.Module):
    def __init__(self, cfg, width, heads):
        super().__init__()
        self.attn_norm, self.attn = nn.RMSNorm(cfg.n_embd, eps=1e-5), Attention(cfg, heads)
        self.ffn_norm, self.ffn = nn.RMSNorm(cfg.n_embd, eps=1e-5), SwiGLU(cfg.n_embd, width)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))

class GPT(nn.Module):
    def __init__(self, cfg, widths, heads=None):  # per layer: FFN widths, head counts (default n_head)
        super().__init__()
        heads = heads or [cfg.n_head] * cfg.n_layer
        assert len(widths) == len(heads) == cfg.n_layer, f"need one FFN width and head count per layer, {cfg.n_layer}"
        self.block_size = cfg.block_size
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, w, h) for w, h in zip(widths, heads))
        self.norm = nn.RMSNorm(cfg.n_embd, eps=1e-5)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied embeddings
        cos, sin = rope_tables(cfg.n_embd // cfg.n_head, cfg.block_size)  # one head size, whatever the head counts
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # GPT-2 init, N(0, 0.02), with the projections into the residual stream (o, down) scaled by 1/sqrt(2 n_layer);
        # in this order, W_q, W_k, W_v of a layer drawn as one (3 heads hd, d) matrix: the numbers every run started from
        std, std_out = 0.02, 0.02 / math.sqrt(2 * cfg.n_layer)
        with torch.no_grad():
            self.tok_emb.weight.normal_(0.0, std)
            for b in self.blocks:
                qkv = torch.empty(3 * b.attn.q.weight.shape[0], cfg.n_embd).normal_(0.0, std)
                b.attn.q.weight[:], b.attn.k.weight[:], b.attn.v.weight[:] = qkv.chunk(3)
                for lin, s in ((b.attn.o, std_out), (b.ffn.gate, std), (b.ffn.up, std), (b.ffn.down, std_out)):
                    lin.weight.normal_(0.0, s)

    def unit_modules(self, part): return [getattr(b, part) for b in self.blocks]  # per layer: the ffn or attn modules

    ffn_widths = property(lambda self: [m.n_units for m in self.unit_modules("ffn")])  # per layer
    heads = property(lambda self: [m.n_units for m in self.unit_modules("attn")])

    def num_params(self): return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def forward(self, idx, targets=None):
        x = self.tok_emb(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        logits = self.lm_head(self.norm(x))  # (B, T, vocab)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    @torch.no_grad()
    def compact(self, survivors, part="ffn"):
        """Model surgery: layer l keeps only its units survivors[l] (sorted indices) of a part, as new, smaller
        Parameters. Returns (old, new, take) for every replaced weight: take(t) slices any tensor of old's layout
        the same way, so that AdamW can move its state (section 7)."""
        assert len(survivors) == len(self.blocks)
        replaced, d = [], self.tok_emb.weight.shape[1]
        for module, idx in zip(self.unit_modules(part), survivors):
            assert idx.dim() == 1 and 0 < idx.numel() <= module.n_units and int(idx.max()) < module.n_units
            for lin, dim in module.unit_linears():  # up, gate, q, k, v: units on dim 0 (rows); down, o: dim 1
                take = functools.partial(select_units, dim=dim, size=module.unit_size, idx=idx)
                replaced.append((lin.weight, nn.Parameter(take(lin.weight)), take))
                lin.weight = replaced[-1][1]
                setattr(lin, "out_features" if dim == 0 else "in_features", lin.weight.shape[dim])
            n = idx.numel() * module.unit_size  # rows (dim 0) or columns (dim 1) left
            assert all(lin.weight.shape == ((n, d) if dim == 0 else (d, n)) for lin, dim in module.unit_linears())
        return replaced

# ---- 4. Learning-rate schedule: one cosine (integrated), or one per stage (restarted) -----------------------------
def stage_lr(i, n, cfg):
    """LR at step i of a stage of n steps: linear warmup to eta_p (non-zero at i = 0), then a cosine down to eta_e at
    n; with --decay_frac < 1 the LR stays at eta_p until the cosine, which takes the last decay_frac of the stage."""
    if i < cfg.warmup_steps:
        return cfg.lr * (i + 1) / (cfg.warmup_steps + 1)
    decay_start = max(cfg.warmup_steps, n - round(cfg.decay_frac * n))
    progress = min(1.0, max(0.0, (i - decay_start) / max(1, n - decay_start)))
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
    return stage_lr(step - start, horizon - start, cfg)

# ---- 5. Importance: sensitivity |W * dW| reduced per unit (f1), an EMA, combined across matrices (f2) -------------
# f1 reduces each unit's entries within one matrix; f2 combines a unit's matrices (a neuron's up, gate, down; a head's
# q, k, v, o). "mean-max" = f1 mean, f2 max (the paper's best, its Figure 4b).
REDUCE = {"mean": lambda t, dim: t.mean(dim), "max": lambda t, dim: t.amax(dim), "sum": lambda t, dim: t.sum(dim)}

@torch.no_grad()
def sensitivity(module, f1):
    """I = |W * dW| of each of a module's matrices (up, gate, down; or q, k, v, o), reduced by f1 over each unit's
    entries: (matrices, units). |W * dW| is the first-order Taylor estimate of the loss change when W is zeroed."""
    return torch.stack([REDUCE[f1](unit_view((lin.weight * lin.weight.grad).abs_(), dim, module.unit_size),
                                   [i for i in range(3) if i != dim]) for lin, dim in module.unit_linears()])

@torch.no_grad()
def update_importance(importance, model, cfg, part="ffn"):
    """I_bar <- lambda * I_bar + (1 - lambda) * I, on the f1-reduced vectors: importance[l] is (3, F_l) for neurons,
    the EMA of layer l's up, gate, down scores ((4, H_l) for heads). For a linear f1 (mean, sum) this is exactly the
    per-element EMA, reduced afterwards; for f1 = max the EMA of the per-step max (no weight copy)."""
    for imp, module in zip(importance, model.unit_modules(part)):
        imp.mul_(cfg.ema_beta).add_(sensitivity(module, cfg.f1).float(), alpha=1 - cfg.ema_beta)

def unit_scores(importance, f2):
    """One score per unit: f2 over its matrices' EMAs."""
    return [REDUCE[f2](imp, 0) for imp in importance]

@torch.no_grad()
def layer_importance(model, x):
    """Adapt-Pruner's layer importance, for --ranking adaptive: 1 - cos(a layer's input, its output), the mean over
    the tokens of x. A layer that changes its input more matters more, and keeps more units (section 6)."""
    h, out = model.tok_emb(x), []
    for block in model.blocks:
        h, h_in = block(h, model.cos, model.sin), h
        out.append(1 - F.cosine_similarity(h_in.float(), h.float(), dim=-1).mean())
    return torch.stack(out)

# ---- 6. Cubic keep-schedule and monotone masks --------------------------------------------------------------------
def keep_at(step, cfg, part="ffn"):
    """Units kept per layer at a step: F_e before t_p, then r(t) = r_T + (1 - r_T)(1 - (t - t_p)/T_p)^3 of F_e,
    exactly F_t = r_T * F_e from t_end = t_p + T_p on (heads alike: H_e, H_t). One-shot: a window of length 0."""
    target, enlarged = ffn_sizes(cfg) if part == "ffn" else head_sizes(cfg)
    if cfg.pruning == "none":
        return target
    t_p, t_end = phase_steps(cfg)
    if step < t_p:
        return enlarged
    if step >= t_end:
        return target
    r_T = target / enlarged
    r = r_T + (1 - r_T) * (1 - (step - t_p) / (t_end - t_p)) ** 3
    return min(enlarged, max(target, round(r * enlarged)))

# When the masks and the importance change, relative to each other (the contract the loop in section 8 keeps):
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
def zero_units_(model, optimizer, dead, part="ffn"):
    """Zero the weights AND the AdamW moments of dead units. A neuron with zero gate and up rows outputs
    silu(0) * 0 = 0; a head with zero v rows outputs 0, and its zero o columns pass it no gradient. So all their
    gradients are 0, Adam's update 0 / (0 + eps) is 0, weight decay keeps 0 at 0: they stay pruned, with no mask."""
    for module, d in zip(model.unit_modules(part), dead):
        idx = d.nonzero().squeeze(1)
        for lin, dim in module.unit_linears() if idx.numel() else ():
            state = optimizer.state.get(lin.weight, {})
            for t in [lin.weight] + [state[m] for m in ("exp_avg", "exp_avg_sq") if m in state]:
                unit_view(t, dim, module.unit_size).index_fill_(dim, idx, 0.0)

@torch.no_grad()
def prune_(model, optimizer, importance, alive, k, cfg, part="ffn", layer_imp=None):
    """Shrink the alive masks to the k best units per layer (ranking "layer"), the k * n_layer best overall ("global"),
    or per layer a count set by its layer importance ("adaptive", Adapt-Pruner: layer l keeps ~k (1 + A z_l) units,
    z_l = (I_l - mean I) / (max I - min I) in [-1, 1] sums to 0). Only alive units compete: masks only ever shrink.
    Returns the number of units removed."""
    n_alive = [int(a.sum()) for a in alive]
    if k * len(alive) >= sum(n_alive):
        return 0  # nothing to remove at this step (always so at t_p, where r(t_p) = 1)
    scores = [s.masked_fill(~a, -float("inf")) for s, a in zip(unit_scores(importance, cfg.f2), alive)]
    if cfg.ranking == "layer":
        survivors = [s.topk(min(k, n)).indices for s, n in zip(scores, n_alive)]
    else:
        if cfg.ranking == "adaptive":  # the j-th best unit of layer l scores want_l - j: one ranking over all layers
            z = (layer_imp - layer_imp.mean()) / (layer_imp.max() - layer_imp.min()).clamp_min(1e-12)  # then keeps
            want = k * (1 + cfg.adapt_amp * z)  # ~want_l of layer l (fewer where fewer are alive, the rest elsewhere)
            scores = [(w - s.argsort(descending=True).argsort()).masked_fill(~a, -float("inf"))
                      for w, s, a in zip(want, scores, alive)]
        for s in scores:  # each layer keeps at least its best unit, so no layer can vanish
            s[s.argmax()] = float("inf")
        top = torch.cat(scores).topk(k * len(scores)).indices
        offsets = np.cumsum([0] + [len(s) for s in scores])
        survivors = [top[(top >= lo) & (top < hi)] - lo for lo, hi in zip(offsets[:-1], offsets[1:])]
    new_alive = [torch.zeros_like(a).index_fill_(0, idx, True) for a, idx in zip(alive, survivors)]
    dead = [a & ~n for a, n in zip(alive, new_alive)]
    zero_units_(model, optimizer, dead, part)
    alive[:] = new_alive
    return sum(int(d.sum()) for d in dead)

# ---- 7. Compaction: slice pruned units out of the weights and the AdamW state -------------------------------------
@torch.no_grad()
def compact_(model, optimizer, importance, alive, part="ffn"):
    """Physically remove masked units: a neuron's rows of W_up, W_gate and column of W_down (a head's rows of W_q,
    W_k, W_v and columns of W_o), the same entries of AdamW's exp_avg and exp_avg_sq (its step counter is kept), and
    of the importance EMA. Afterwards the model is exactly a model built at the smaller sizes."""
    survivors = [a.nonzero().squeeze(1) for a in alive]
    replaced = model.compact(survivors, part)
    for old, new, take in replaced:  # AdamW keys its state by Parameter: move it to the new one, sliced alike
        state = optimizer.state.pop(old, {})
        state.update({m: take(state[m]) for m in ("exp_avg", "exp_avg_sq") if m in state})
        if state:
            optimizer.state[new] = state
    new_of = {id(old): new for old, new, _ in replaced}
    for group in optimizer.param_groups:
        group["params"] = [new_of.get(id(p), p) for p in group["params"]]
    importance[:] = [imp[:, idx] for imp, idx in zip(importance, survivors)]  # the survivors' scores, not a prefix
    alive[:] = [torch.ones(idx.numel(), dtype=torch.bool, device=idx.device) for idx in survivors]

# ---- 8. The training loop: enlarged -> pruning -> recovery, one AdamW, never reset --------------------------------
def make_optimizer(model, cfg, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices and the (tied) embedding
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # RMSNorm gains
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr_at(0, cfg), betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")

@dataclass
class Run:
    """The state of one run: what the loop carries from step to step, and what a checkpoint holds."""
    cfg: Config
    device: torch.device
    ctx: object                       # autocast context (bf16 on CUDA) or a no-op
    data: Data
    raw_model: GPT                    # the plain model: surgery, importance, checkpoints (train's `model` wraps it)
    optimizer: torch.optim.Optimizer  # the one AdamW of the whole run, never reset
    importance: dict                  # {part: per layer (3, F_l)}: EMAs of up, gate, down scores (heads: q, k, v, o)
    alive: dict                       # {part: per layer (F_l,) bool}: monotone masks (section 6)
    progress: dict                    # tokens, FLOPs per phase, wall time; "step": where this run started
    log: object = None                # the RunLog (section 12): log.jsonl and the printed lines
    last_ckpt: int = None             # the step of the newest checkpoint on disk (written or resumed from)
    rank: int = 0                     # this process under torchrun (0 alone), and the number of processes
    world: int = 1
    accum: int = 1                    # this rank's micro-steps per step: grad_accum / world
    n_alive: dict = None              # alive units per part per layer, counted on prune steps only (no sync per step)
    t0: float = 0.0                   # wall clock of step 0: a resumed run carries its earlier wall time over
    signal: int = None                # SIGTERM or SIGINT received by this process
    stopping: bool = False            # some rank received one: all stop together at the next step boundary

def prune(run, step):
    """A prune step (section 6): each part's masks shrink to keep_at(step) units per layer, the same on every rank."""
    cfg, (t_p, t_end) = run.cfg, phase_steps(run.cfg)
    if step == t_p:
        goal = sizes_text({p: f"{e} -> {t}" for p, (t, e) in unit_sizes(cfg).items()})
        run.log.event(step, f"pruning starts ({cfg.pruning}, {cfg.ranking} ranking, {cfg.f1}-{cfg.f2} scores, lambda "
                            f"{cfg.ema_beta}): {goal} per layer by step {t_end}")
    layer_imp = None  # adaptive: measured now, on a fixed batch (the evaluation's first): the same on every rank
    if cfg.ranking == "adaptive":
        with run.ctx:
            layer_imp = layer_importance(run.raw_model, next(fixed_batches(run, "train"))[0])
    for part, importance in run.importance.items():
        prune_(run.raw_model, run.optimizer, importance, run.alive[part], keep_at(step, cfg, part), cfg, part, layer_imp)
    run.n_alive = {part: [int(a.sum()) for a in alive] for part, alive in run.alive.items()}
    if step == t_end:
        run.log.event(step, f"pruning done, recovery from here; per layer: {sizes_text(run.n_alive)}")

def compact(run, step):
    """Compaction (section 7) once compact_frac of a layer is masked, and at t_end: True if it replaced Parameters."""
    masked = max(1 - int(a.sum()) / a.numel() for alive in run.alive.values() for a in alive)  # but still allocated
    if not masked or (masked < run.cfg.compact_frac and step < phase_steps(run.cfg)[1]):
        return False
    mean = lambda: {p: float(np.mean([a.numel() for a in alive])) for p, alive in run.alive.items()}  # per layer
    before, params = mean(), run.raw_model.num_params()
    for part, importance in run.importance.items():
        compact_(run.raw_model, run.optimizer, importance, run.alive[part], part)
    run.log.event(step, f"compacted {sizes_text({p: f'{before[p]:g} -> {w:g}' for p, w in mean().items()})} per layer, "
                        f"{fmt_params(params)} -> {fmt_params(run.raw_model.num_params())} params")
    return True

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
        for part, importance in run.importance.items():
            update_importance(importance, run.raw_model, cfg, part)
    norm = torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), cfg.grad_clip or math.inf)
    # the step's one host sync: its loss, the norm, and whether a stop signal came (summed over ranks under DDP)
    stats = torch.stack([loss_sum / run.accum, norm.float(), loss_sum.new_full((), float(run.signal is not None))])
    if run.world > 1:
        dist.all_reduce(stats)
    loss, norm, signalled = stats.tolist()
    loss, norm = loss / run.world, norm / run.world
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise Diverged(f"loss is {loss}, gradient norm {norm} at step {step}; stopped before the update. "
                       f"{last_checkpoint(run, True)}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    run.stopping = signalled > 0
    if run.device.type == "cuda":
        torch.cuda.synchronize()  # the clock must see the device's work, not only its queueing
    return lr, loss, norm, time.perf_counter() - t_start

def train(cfg, resume=False, stop_after=None, overwrite=False, given=None):
    """One run of a pipeline; its final record (None on ranks other than 0, or when stop_after=k stopped it at step
    k with a checkpoint; SIGTERM or Ctrl-C stop it the same way and raise Interrupted). given: see resume_config."""
    run = start_run(cfg, resume, overwrite, given)
    cfg, start = run.cfg, run.progress["step"]
    handlers = catch_stop_signals(run)
    try:
        model = wrap(run)  # run.raw_model: surgery and checkpoints; model: forward and backward
        for step in range(start, cfg.max_steps + 1):  # one extra iteration at T: it only evaluates and saves
            last_step = step == cfg.max_steps
            stop = last_step or step == stop_after or run.stopping
            # -- once in a while, before the step: evaluate, prune and compact, checkpoint --
            if step != run.last_ckpt:  # (a resumed run's checkpoint was written after these: not twice)
                if run.rank == 0 and (step % cfg.eval_every == 0 or last_step):  # the others wait for it
                    eval_and_log(run, model, step)
                if is_prune_step(step, cfg):
                    prune(run, step)  # section 6: the masks shrink to keep_at(step) units per layer
                    if compact(run, step):  # section 7, when due: masked units leave the weights and AdamW's state
                        model = wrap(run)  # new Parameters: the compiled graph and DDP must follow
            if step > start and (step % cfg.ckpt_every == 0 or stop):
                save_checkpoint(run, step)  # rank 0 writes
            if stop:
                break
            # -- one optimization step at lr_at(step) (section 4), tracking the importance (5), then its log line --
            lr, loss, norm, dt = train_step(run, model, step)
            log_step(run, step, lr, loss, norm, dt)
        final = finish_run(run, model) if last_step and run.rank == 0 else None
        if run.world > 1:
            dist.barrier()  # the other ranks wait for rank 0's checkpoint and final evaluation
        if run.stopping and not last_step:
            raise Interrupted(run.signal or signal.SIGTERM, step, ckpt_path(cfg.out_dir), run.world)
        return final
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        run.log.close()

# ---- 9. Run setup: build or resume, DDP, compile, stop signals ----------------------------------------------------
NOT_TRAINED = ("out_dir", "plot_dir", "device", "compile", "compile_backend", "peak_flops", "dist_timeout")
# What --resume may change: outputs, a moved dataset, the LR from here on (the divergence advice); no other knob
RESUMABLE = NOT_TRAINED + ("dtype", "data_dir", "lr", "min_lr", "eval_every", "eval_iters", "log_every", "ckpt_every",
                           "sample_tokens")

def resume_config(cfg, ckpt, given=None):
    """(config, changes): the checkpoint's config with the RESUMABLE knobs given applied; others are refused."""
    old, given = Config(**ckpt["config"]), {k: getattr(cfg, k) for k in NOT_TRAINED} if given is None else given
    changed = {k: v for k, v in {**given, "out_dir": cfg.out_dir}.items() if v != getattr(old, k)}
    fixed = [f"--{k} {v}" for k, v in changed.items() if k not in RESUMABLE]
    need(not fixed, f"--resume goes on with the run's own config, so it cannot change {', '.join(fixed)} (only "
         f"--{', --'.join(RESUMABLE)}): drop them, or start a new run with --overwrite or in another --out_dir")
    return replace(old, **changed), [f"--{k} {v} (was {getattr(old, k)})" for k, v in changed.items()]

def start_run(cfg, resume, overwrite=False, given=None):
    """Build everything a run needs (model, AdamW, importance, masks, data, log), or restore it from out_dir/ckpt.pt,
    once section 13 has checked the input; out_dir is locked and its log written only once the model is built."""
    ckpt, changed = read_checkpoint(ckpt_path(cfg.out_dir)) if resume else None, []
    if ckpt:
        cfg, changed = resume_config(cfg, ckpt, given)
    validate(cfg)  # before the process group (--dist_timeout)
    rank, world = init_distributed(cfg)
    check_inputs(cfg, resume, overwrite, world)  # nothing is written before this line
    cfg = replace(cfg, tokenizer=tokenizer_kind(cfg))  # named in every checkpoint: read without the data
    device, ctx = setup_device(cfg)
    initial = {part: [t if cfg.pruning == "none" else e] * cfg.n_layer for part, (t, e) in unit_sizes(cfg).items()}
    torch.manual_seed(cfg.seed)  # the same seed on every rank: the same initial model
    sizes = (ckpt["widths"], ckpt["heads"]) if ckpt else (initial["ffn"], initial.get("attn"))  # per layer
    raw_model = GPT(cfg, *sizes).to(device)
    modules = {part: raw_model.unit_modules(part) for part in initial}  # the parts pruned: ffn (and attn)
    optimizer = make_optimizer(raw_model, cfg, device)
    os.makedirs(cfg.out_dir, exist_ok=True)
    log = RunLog(cfg, ckpt and ckpt["progress"], rank, world, peak_flops(cfg, device))  # locks out_dir, describes cfg
    run = Run(cfg, device, ctx, Data(cfg, device, rank, world), raw_model, optimizer, log=log, rank=rank, world=world,
              importance={p: [torch.zeros(len(m.unit_linears()), m.n_units, device=device) for m in ms]
                          for p, ms in modules.items()},  # a row per matrix: up, gate, down; q, k, v, o
              alive={p: [torch.ones(m.n_units, dtype=torch.bool, device=device) for m in ms] for p, ms in modules.items()},
              progress={"step": 0, "tokens": 0, "flops": {}, "wall_s": 0.0, "train_s": 0.0,
                        "params_start": raw_model.num_params()}, accum=cfg.grad_accum // world)
    if ckpt:
        restore_checkpoint(run, ckpt)
        log.say(f"resumed from {ckpt_path(cfg.out_dir)} at step {run.progress['step']}" + ", with " * bool(changed) +
                ", ".join(changed))
    run.n_alive = {part: [int(a.sum()) for a in alive] for part, alive in run.alive.items()}
    log.say(f"DDP: {world} processes, {run.accum} micro-steps each" if world > 1 else "")
    run.t0 = time.time() - run.progress["wall_s"]
    return run

def init_distributed(cfg):
    """(rank, world size): under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) join the group, NCCL on GPUs, else gloo."""
    if "RANK" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        on_gpu = torch.cuda.is_available() and cfg.device.split(":")[0] in ("auto", "cuda")
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=datetime.timedelta(seconds=cfg.dist_timeout))
    return dist.get_rank(), dist.get_world_size()

def device_name(cfg):
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return f"cuda:{os.environ['LOCAL_RANK']}" if cfg.device.startswith("cuda") and dist.is_initialized() else cfg.device

def setup_device(cfg):
    """The device and the autocast context (bf16 on CUDA). Under torchrun each rank takes the GPU of its LOCAL_RANK."""
    device = torch.device(device_name(cfg))
    dtype = cfg.dtype if cfg.dtype != "auto" else "bfloat16" if device.type == "cuda" and \
        torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device, nullcontext() if dtype == "float32" else torch.autocast(device.type, dtype=getattr(torch, dtype))

def wrap(run):
    """The model the step calls: run.raw_model, compiled with --compile, inside DDP under torchrun (nanoGPT's order);
    built again after every compaction, whose new Parameters DDP's hooks and the compiled graph's guards must see."""
    model = run.raw_model
    if run.cfg.compile:  # drop old widths' graphs; past its recompile_limit (8) dynamo would go eager in silence: fail
        torch._dynamo.reset()
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        model = torch.compile(model, backend=run.cfg.compile_backend)
    if run.world > 1:
        model = DDP(model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.log.fresh = True
    return model

def unwrap_ddp(model): return model.module if isinstance(model, DDP) else model  # for rank 0 alone: no collectives

class Interrupted(Exception):
    """SIGTERM or Ctrl-C: the run finished its step, wrote a checkpoint and stopped; --resume continues it."""
    def __init__(self, signum, step, path, world):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}, with a checkpoint in {path}; "
                         f"continue with: {resume_command(os.path.dirname(path), world)}")
        self.signum = signum

def catch_stop_signals(run):
    """SIGTERM or Ctrl-C set a flag: the loop checkpoints at the step's end and stops (a second Ctrl-C: at once)."""
    def on_signal(signum, frame):
        if run.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        run.signal = signum
        run.log.say(f"got {signal.Signals(signum).name}: stopping after this step, with a checkpoint")
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set signal handlers (e.g. a run started from a notebook thread)
    return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

# ---- 10. Checkpoints: tensors and plain types only, written atomically --------------------------------------------
CKPT_VERSION = 3  # raise it when the layout below changes (and convert the older ones in data/old_checkpoints.py)
CKPT_KEYS = ("model", "widths", "optimizer", "importance", "alive", "config", "progress", "rng")

def ckpt_path(out_dir): return os.path.join(out_dir, "ckpt.pt")

def log_path(out_dir): return os.path.join(out_dir, "log.jsonl")

def lock_out_dir(out_dir, rank=0, world=1):
    """One run per out_dir: rank 0 holds an OS lock on out_dir/lock for the run's life, which dies with the process
    (kill -9 leaves no stale lock); a second run is refused on every rank, with the holder's PID."""
    lock, holder = None, [None]
    if rank == 0:
        lock = open(os.path.join(out_dir, "lock"), "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.truncate(0)
            print(os.getpid(), file=lock, flush=True)  # ours: our PID, for the message a second run gets
        except BlockingIOError:
            holder = [open(lock.name).read().strip() or "?"]
            lock.close()
            lock = None
    if world > 1:
        dist.broadcast_object_list(holder)
    need(holder[0] is None, f"--out_dir {out_dir} is in use by process {holder[0]} (a run, a resume or a suite arm): "
                            f"wait for it, stop it, or choose another --out_dir")
    return lock

class RunFailed(RuntimeError):
    """The run cannot go on (diverged, or its checkpoint cannot be written); what is on disk is still good."""

class Diverged(RunFailed):
    """The loss, the gradient norm or the weights became NaN or inf; nothing non-finite was written."""

def resume_command(out_dir, world=1, extra=""):
    again = f"torchrun --nproc_per_node {world} ideaprune.py" if world > 1 else "python ideaprune.py"
    return f"{again} --out_dir {shlex.quote(out_dir)} --resume{extra}"

def last_checkpoint(run, diverged=False):
    """Where the run can go on from, as a command; after a divergence with half the LR."""
    lr = f" --lr {run.cfg.lr / 2:g} --min_lr {min(run.cfg.min_lr, run.cfg.lr / 2):g}" * diverged
    if run.last_ckpt is None:
        return "No checkpoint was written" + f"; start again with a lower LR ({lr.strip()}) or a longer warmup" * diverged
    return (f"The last checkpoint, {ckpt_path(run.cfg.out_dir)} from step {run.last_ckpt}, is intact and finite; "
            f"continue from it{' with half the LR' * diverged}: {resume_command(run.cfg.out_dir, run.world, lr)}")

def save_checkpoint(run, step):
    """Everything exact resume needs, in out_dir/ckpt.pt (torch.load(path, weights_only=True) reads it). Nothing
    non-finite is ever written: a checkpoint of a diverged model would replace the last good one."""
    if not all(torch.isfinite(p).all() for p in run.raw_model.parameters()):  # the same on every rank
        raise Diverged(f"the weights are not finite at step {step}; no checkpoint written. {last_checkpoint(run, True)}")
    if run.rank != 0:
        return
    ckpt = {"version": CKPT_VERSION, "model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "widths": run.raw_model.ffn_widths, "heads": run.raw_model.heads,  # GPT(cfg, widths, heads), then load
            "importance": {k: [imp.cpu() for imp in v] for k, v in run.importance.items()},  # per kind, per layer
            "alive": {k: [a.cpu() for a in v] for k, v in run.alive.items()},  # bool masks, per kind, per layer
            "config": asdict(run.cfg), "progress": {**run.progress, "step": step},  # step: where a resume starts
            "rng": {"torch": torch.get_rng_state(), "data": run.data.gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}
    path = ckpt_path(run.cfg.out_dir)
    try:
        ckpt["progress"]["log_records"] = run.log.sync()  # the log's records, all on disk first
        with open(path + ".tmp", "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so that a power cut cannot leave a torn ckpt.pt
        os.replace(path + ".tmp", path)  # atomic: the previous ckpt.pt stays whole until the new one is complete
    except (OSError, RuntimeError, KeyboardInterrupt) as e:  # a full disk, a quota, a vanished mount; a 2nd Ctrl-C
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        if KeyboardInterrupt in (type(e), type(e.__context__)):  # (torch.save turns it into a RuntimeError)
            raise KeyboardInterrupt from None
        raise RunFailed(f"writing the checkpoint of step {step} failed ({e}); nothing half-written was left. "
                        f"{last_checkpoint(run)}") from None
    run.last_ckpt = step

def read_checkpoint(path):
    """torch.load a checkpoint, in this version's layout; or a ConfigError that names the file and says why."""
    need(os.path.exists(path), f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if any(k not in ckpt for k in CKPT_KEYS):
            raise ValueError(f"it has no {', '.join(k for k in CKPT_KEYS if k not in ckpt)}")
        if ckpt.get("version", 1) > CKPT_VERSION:
            raise ValueError(f"version {ckpt['version']}, of a newer ideaprune; this one reads up to {CKPT_VERSION}")
        Config(**ckpt["config"])  # a knob this version does not know: from another version
        if ckpt.get("version", 1) < CKPT_VERSION:  # an older layout: converted in memory, its file left as it was
            beside("data/old_checkpoints.py").upgrade(ckpt, CKPT_VERSION)
    except Exception as e:
        raise ConfigError(f"{path} is not a checkpoint this ideaprune can resume ({type(e).__name__}: {e}). It was "
                          f"left as it was: restore it from a copy, or start a new run in another --out_dir") from None
    return ckpt

def restore_checkpoint(run, ckpt):
    """Load a checkpoint's state into a run built at the checkpoint's widths: exactly where it stopped."""
    run.raw_model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.importance = {k: [imp.to(run.device) for imp in v] for k, v in ckpt["importance"].items()}
    run.alive = {k: [a.to(run.device) for a in v] for k, v in ckpt["alive"].items()}
    run.progress, run.last_ckpt = ckpt["progress"], ckpt["progress"]["step"]  # the step it resumes from, on disk
    torch.set_rng_state(ckpt["rng"]["torch"])
    run.data.gen.set_state(ckpt["rng"]["data"])
    if ckpt["rng"]["cuda"] and run.device.type == "cuda":
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

def load_model(path, device="cpu"):
    """The deployed model of a checkpoint, of any step: masked units not yet compacted (zero) are sliced out."""
    ckpt = read_checkpoint(path)
    cfg = Config(**ckpt["config"])
    model = GPT(cfg, ckpt["widths"], ckpt["heads"])
    model.load_state_dict(ckpt["model"])
    for part, alive in ckpt["alive"].items():
        if not all(a.all() for a in alive):
            model.compact([a.nonzero().squeeze(1) for a in alive], part)
    return model.to(device), cfg

# ---- 11. Text, evaluation, sampling, export -----------------------------------------------------------------------
def read_meta(cfg):  # what the data's prepare.py recorded in its meta.json ({} without one)
    path = os.path.join(dataset_path(cfg), "meta.json")
    try:
        return json.load(open(path)) if os.path.isfile(path) else {}
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not JSON: prepare the data again") from None

def tokenizer_kind(cfg): return cfg.tokenizer or read_meta(cfg).get("tokenizer", "bytes")  # the run's, else its data's

def tokenizer(cfg):
    """(encode, decode) for the dataset: raw bytes, or GPT-2 BPE through tiktoken."""
    if tokenizer_kind(cfg) == "gpt2":
        import tiktoken
        try:  # tiktoken downloads the GPT-2 vocabulary on first use, then reads it from its cache
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:
            raise ConfigError(f"tiktoken could not load the GPT-2 vocabulary ({type(e).__name__}): offline, set "
                              f"TIKTOKEN_CACHE_DIR to a warm cache (data/gpt2_vocab.py builds one)") from None
        return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), enc.decode
    return (lambda s: list(s.encode())), (lambda ids: bytes(ids).decode("utf-8", errors="replace"))

@torch.no_grad()
def evaluate_full(model, data, ctx, split="val"):
    """Token-weighted mean loss over every non-overlapping window of the split: the number the README reports."""
    model.eval()
    with ctx:  # per batch: (its summed loss, its tokens)
        sums = [(model(x, y)[1].item() * y.numel(), y.numel()) for x, y in data.sequential(split)]
    model.train()
    return sum(s for s, _ in sums) / sum(n for _, n in sums)

def fixed_batches(run, split):
    """The evaluation's batches of a split, the same at every call and in every pipeline, apart from training's."""
    gen = torch.Generator().manual_seed(run.cfg.seed + 1 + (split == "val"))
    return (run.data.batch(split, gen) for _ in range(run.cfg.eval_iters))

@torch.no_grad()
def eval_and_log(run, model, step):
    """The loop's evaluation, on rank 0 alone (train() calls it there): the loss on the fixed batches."""
    model = unwrap_ddp(model).eval()
    with run.ctx:
        est = {split: sum(model(x, y)[1].item() for x, y in fixed_batches(run, split)) / run.cfg.eval_iters
               for split in ("train", "val")}
    model.train()
    hs = hellaswag(model, run.cfg, run.device, run.ctx)
    run.log.say(f"step {step:5d} | eval | train {est['train']:.4f} | val {est['val']:.4f}" +
                (f" | hellaswag acc_norm {hs['hellaswag_acc_norm']:.4f}" if hs else ""))
    run.log.write("eval", step=step, tokens=run.progress["tokens"], flops=sum(run.progress["flops"].values()),
                  train_loss=est["train"], val_loss=est["val"], **hs)

@functools.cache
def beside(path):
    """A script that lives beside this file (data/..., plots/...), imported only when a run needs it."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(path)[0].replace("/", "_"), os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

HELLASWAG = os.path.join(ROOT, "data", "hellaswag", "val.jsonl")  # python data/hellaswag/prepare.py writes it

def hellaswag(model, cfg, device, ctx):
    """{"hellaswag_acc", ...}: lm-eval's zero-shot accuracies (data/hellaswag/eval.py) on GPT-2 data, else {}."""
    if tokenizer_kind(cfg) != "gpt2" or not os.path.exists(HELLASWAG):
        return {}
    hs = beside("data/hellaswag/eval.py")
    got = hs.scores(model, hs.read(HELLASWAG), tokenizer(cfg)[0], device, ctx, cfg.block_size)
    return {f"hellaswag_{name}": value for name, value in got.items()}

@torch.no_grad()
def sample(model, cfg, device, ctx, prompt="\n", n_new=None, temperature=0.8, top_k=40, seed=None):
    """Text the model writes after the prompt (not repeated): one token at a time, among the top_k likeliest (0: all),
    at a temperature (0: always the likeliest). The context is the last block_size tokens (the trained length)."""
    encode, decode = tokenizer(cfg)
    prompt_ids = torch.tensor([encode(prompt)], dtype=torch.long, device=device)
    idx, gen = prompt_ids, torch.Generator(device).manual_seed(cfg.seed if seed is None else seed)
    for _ in range(cfg.sample_tokens if n_new is None else n_new):
        with ctx:
            logits = model(idx[:, -cfg.block_size:])[0][:, -1, :].float() / (temperature or 1)
        kth = torch.topk(logits, min(top_k or logits.size(-1), logits.size(-1))).values[:, [-1]]
        probs = F.softmax(logits.masked_fill(logits < kth, -float("inf")), dim=-1)
        next_id = probs.argmax(-1, keepdim=True) if temperature == 0 else torch.multinomial(probs, 1, generator=gen)
        idx = torch.cat((idx, next_id), dim=1)
    return decode(idx[0, prompt_ids.size(1):].tolist())

def export_hf(model, cfg, path, overwrite=False, reading="."):
    """path as a Hugging Face LlamaForCausalLM folder, written whole (data/hf_export.py), never over reading's run."""
    try:
        return beside("data/hf_export.py").export(model, cfg, path, overwrite, reading)
    except ImportError:
        raise ConfigError("--export_hf writes safetensors files: pip install safetensors") from None
    except ValueError as e:  # a folder it must not write
        raise ConfigError(str(e)) from None
    except OSError as e:  # a full disk
        raise RunFailed(str(e)) from None

# ---- 12. Logging: the printed config, log.jsonl, the log line, the summary (the figure: plots/figures.py) ---------
def tokens_per_step(cfg): return cfg.batch_size * cfg.block_size * cfg.grad_accum

def flops_per_token(n_params, cfg, heads=None):
    """Training FLOPs per token, forward + backward: 6 per parameter (a multiply-add forward, two backward) plus
    attention's QK^T and AV, 12 * (the layers' heads * head_dim) * T, not halved for the causal mask (PaLM, nanoGPT)."""
    return 6 * n_params + 12 * sum(heads or [cfg.n_head] * cfg.n_layer) * (cfg.n_embd // cfg.n_head) * cfg.block_size

def sizes_text(sizes):  # {"ffn": "512 -> 128", "attn": [4, 4]} -> "FFN 512 -> 128, heads [4, 4]": what a run prints
    return ", ".join(f"{'FFN' if p == 'ffn' else 'heads'} {size}" for p, size in sizes.items())

def fmt_params(n): return f"{n / 1e6:.2f}M" if n < 1e9 else f"{n / 1e9:.2f}B"

def fmt_duration(s):  # whole minutes and seconds (or hours and minutes), truncated: 59.6 s is 0m59s, not 1m60s
    return f"{int(s) // 3600}h{int(s) % 3600 // 60:02d}m" if s >= 3600 else f"{int(s) // 60}m{int(s) % 60:02d}s"

# Peak dense bf16 FLOP/s (data sheets, no 2:4 sparsity) by a part of the GPU's name, first match wins: for MFU
GPU_PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))

def peak_flops(cfg, device):
    """--peak_flops, else the GPU's entry in GPU_PEAK_BF16, else None: no MFU (a CPU, or a GPU not in the table)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return cfg.peak_flops or next((peak for key, peak in GPU_PEAK_BF16 if key in name), None)

def mfu(flops, seconds, run):
    """Model FLOPs utilization: the model's FLOPs (section 1) per second per accelerator over its peak."""
    return flops / seconds / run.world / run.log.peak if run.log.peak else None

def param_counts(cfg):
    """{"enlarged": n, "target": n}: the two models' parameters, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return {name: GPT(cfg, [w] * cfg.n_layer, [h] * cfg.n_layer).num_params() for name, w, h in
                (("enlarged", ffn_sizes(cfg)[1], head_sizes(cfg)[1]), ("target", cfg.ffn_hidden, cfg.n_head))}

def describe(cfg):
    """Print the resolved config and the numbers derived from it, once, before anything runs."""
    (t_p, t_end), (H_t, H_e), tps, T = phase_steps(cfg), head_sizes(cfg), tokens_per_step(cfg), cfg.max_steps
    print("config:", json.dumps(asdict(cfg), indent=1))
    counts = param_counts(cfg)
    for name, w, h in (("enlarged", ffn_sizes(cfg)[1], H_e), ("target", cfg.ffn_hidden, H_t)):
        n, ffn_params = counts[name], 3 * cfg.n_embd * w * cfg.n_layer
        print(f"{name:8s} model: FFN {w:5d}" + f", {h} heads" * (H_e > H_t) + f" per layer | {fmt_params(n)} params, "
              f"FFN {fmt_params(ffn_params)} ({100 * ffn_params / n:.0f}%) | "
              f"{flops_per_token(n, cfg, [h] * cfg.n_layer) / 1e6:.1f} MFLOP per token")
    print(f"tokens: {tps:,} per step ({cfg.batch_size} seq x {cfg.block_size} ctx x {cfg.grad_accum} accum), "
          f"{tps * T / 1e6:.2f}M in {T} steps: {tps * T / counts['target']:,.1f} per deployed parameter")
    recovery = f"{t_end}-{T - 1} ({tps * (T - t_end) / 1e6:.2f}M tok)" if T > t_end else "none"
    print(f"phases: target-size model for all {T} steps (scratch)" if cfg.pruning == "none" else
          f"phases: enlarged 0-{t_p - 1} ({tps * t_p / 1e6:.2f}M tok) | {cfg.pruning} pruning {t_p}-{t_end} "
          f"({tps * (t_end - t_p) / 1e6:.2f}M tok) | recovery {recovery}")
    stages = ", ".join(f"{a}-{b}" for a, b in lr_stages(cfg))
    print(f"LR: {cfg.lr_schedule} ({stages}): warmup {cfg.warmup_steps} to {cfg.lr:g}, cosine to {cfg.min_lr:g}" +
          f" over the last {cfg.decay_frac:g} of each stage" * (cfg.decay_frac < 1))

def read_log(path):
    """log.jsonl's records. A last line cut short (a kill, a full disk) is left out with a note (a resume writes the
    log again without it); a bad line anywhere else is an error that names it."""
    lines, records = open(path, "rb").read().splitlines(), []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "kind" in record:
            records.append(record)
        elif i < len(lines):
            raise ConfigError(f"{path}, line {i}, is not a record of a run: restore the file from a copy, or delete "
                              f"that line (what the figures and tables lose with it)")
        else:
            print(f"note: the last line of {path} is cut short (a kill, a full disk?): left out")
    return records

class RunLog:
    """out_dir/log.jsonl, what the plots read: a header (the config, the phase boundaries), a record per step, eval
    and event, a final record. It is on disk whenever a checkpoint is (sync), and the checkpoint counts its records:
    a resumed run keeps exactly those and drops the rest (written again, the same). Opened after out_dir's lock."""
    def __init__(self, cfg, resumed=None, rank=0, world=1, peak=None):  # resumed: the progress of the checkpoint
        self.lock = lock_out_dir(cfg.out_dir, rank, world)
        self.master, self.file, self.count = rank == 0, None, 0  # under torchrun only rank 0 logs, prints and plots
        self.peak, self.step_s, self.fresh = peak, None, True  # for MFU, the ETA; fresh: the next step compiles
        if self.master:
            path, (F_t, F_e), (t_p, t_end) = log_path(cfg.out_dir), ffn_sizes(cfg), phase_steps(cfg)
            header = {"kind": "config", **asdict(cfg), "F_t": F_t, "F_e": F_e, "t_p": t_p, "t_end": t_end,
                      "tokens_per_step": tokens_per_step(cfg), "lr_stages": lr_stages(cfg)}
            n = resumed and resumed.get("log_records")  # (a checkpoint older than that count: the steps before its own)
            old = read_log(path)[:n] if resumed and os.path.exists(path) else []
            records = [header] + [r for r in old if r["kind"] != "config" and
                                  (n or r.get("step", math.inf) < resumed["step"])]
            if not resumed and os.path.exists(ckpt_path(cfg.out_dir)):  # --overwrite: the old run goes now
                os.remove(ckpt_path(cfg.out_dir))
            try:
                with open(path + ".tmp", "w") as f:  # written whole, then renamed: a kill now loses nothing either
                    f.writelines(json.dumps(r) + "\n" for r in records)
                os.replace(path + ".tmp", path)
            except OSError:  # a full disk: nothing half-written stays
                os.remove(path + ".tmp")
                raise
            self.file, self.count = open(path, "a"), len(records)
            describe(cfg)  # and the same config, printed

    def write(self, kind, **record):
        if self.master:
            self.file.write(json.dumps({"kind": kind, **record}) + "\n")
            self.count += 1

    def sync(self):  # before a checkpoint is written: every record it counts is on disk, whatever kills the run
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.count

    def say(self, line):  # print on rank 0 (an empty line: nothing)
        if self.master and line:
            print(line)

    def event(self, step, what):
        self.say(f"step {step:5d} | {what}")
        self.write("event", step=step, what=what)

    def close(self):  # and let another run use out_dir
        for f in filter(None, (self.file, self.lock)):
            f.close()

def log_step(run, step, lr, loss, norm, dt):
    """Count the step's tokens and FLOPs (masked, not yet compacted units still cost), log it, print the line."""
    cfg, progress = run.cfg, run.progress
    (t_p, t_end), n_params, tps = phase_steps(cfg), run.raw_model.num_params(), tokens_per_step(cfg)
    phase = "target" if cfg.pruning == "none" else "enlarged" if step < t_p else "pruning" if step < t_end else "recovery"
    step_flops = flops_per_token(n_params, cfg, run.raw_model.heads) * tps
    progress["tokens"] += tps
    progress["flops"][phase] = progress["flops"].get(phase, 0.0) + step_flops
    progress["train_s"] += dt
    progress["wall_s"] = time.time() - run.t0
    log = run.log
    if log.fresh and cfg.compile:
        widths = {p: [m.n_units for m in run.raw_model.unit_modules(p)] for p in run.alive}
        log.event(step, f"compiled for {sizes_text(widths)}: this step took {dt:.1f} s")
    elif not log.fresh:  # a running average of the step time, leaving out steps that compiled
        log.step_s = 0.9 * (log.step_s or dt) + 0.1 * dt
    log.fresh = False
    mean_alive = {part: float(np.mean(n)) for part, n in run.n_alive.items()}  # "ffn": the mean width, "attn"
    run.log.write("train", step=step, tokens=progress["tokens"], loss=loss, norm=norm, lr=lr, **mean_alive,
                  params=n_params, phase=phase, ms=1000 * dt, flops=sum(progress["flops"].values()))
    if step % cfg.log_every == 0 or step == cfg.max_steps - 1:
        extra = f" | mfu {100 * mfu(step_flops, dt, run):4.1f}%" if log.peak else ""
        if run.device.type == "cuda":
            extra += f" | mem {torch.cuda.max_memory_allocated(run.device) / 2**30:.1f} GiB"
        if log.step_s:  # the steps left at the recent speed: too long while the model has yet to shrink
            extra += f" | eta {fmt_duration((cfg.max_steps - step - 1) * log.step_s)}"
        units = "".join(f"{'heads' if p == 'attn' else p} {mean_alive[p]:.0f}->{t} | "
                        for p, (t, _) in unit_sizes(cfg).items())
        run.log.say(f"step {step:5d}/{cfg.max_steps} | loss {loss:.4f} | norm {norm:.2f} | lr {lr:.1e} | {units}"
                    f"params {fmt_params(n_params)} | {1000 * dt:4.0f} ms | {tps / dt / 1e3:5.1f}k tok/s{extra}")

def finish_run(run, model):
    """The end, on rank 0: the exact validation loss over the whole split, the final record, a summary, a sample."""
    cfg, progress = run.cfg, run.progress
    val = evaluate_full(unwrap_ddp(model), run.data, run.ctx)
    final = {"pipeline": cfg.pipeline, "val_loss": val, "ppl": math.exp(val), "params": run.raw_model.num_params(),
             "widths": run.raw_model.ffn_widths, "heads": run.raw_model.heads, "tokens": progress["tokens"],
             "flops": sum(progress["flops"].values()), "flops_by_phase": progress["flops"],
             "wall_s": progress["wall_s"], **hellaswag(unwrap_ddp(model), cfg, run.device, run.ctx)}
    run.log.write("final", **final)
    speed = mfu(final["flops"], progress["train_s"], run)
    print(f"done: {cfg.pipeline} | val loss {val:.4f} | ppl {math.exp(val):.2f} | params "
          f"{fmt_params(progress['params_start'])} -> {fmt_params(final['params'])} | {final['tokens'] / 1e6:.2f}M "
          f"tokens | {final['flops']:.3g} FLOPs ({', '.join(f'{k} {v:.2g}' for k, v in final['flops_by_phase'].items())})"
          f" | {final['wall_s']:.0f} s" + (f" | mfu {100 * speed:.1f}% (training steps)" if speed else "") +
          (f" | hellaswag acc_norm {final['hellaswag_acc_norm']:.4f}" if "hellaswag_acc_norm" in final else ""))
    if cfg.sample_tokens:
        print("sample from the final model:\n" + sample(run.raw_model, cfg, run.device, run.ctx))
    return {"kind": "final", **final}

# ---- 13. Input checks: every refusal of bad input, before anything is written -------------------------------------
# The values a text knob may take: argparse offers them as choices, and validate checks them.
CHOICES = {"preset": PRESETS, "pipeline": PIPELINES, "pruning": ("iterative", "oneshot", "none"),
           "lr_schedule": ("unified", "restarted", "rewarm"), "tokenizer": ("", "bytes", "gpt2"),
           "f1": ("mean", "max", "sum"), "f2": ("mean", "max", "sum"), "ranking": ("layer", "global", "adaptive"),
           "dtype": ("auto", "float32", "bfloat16"), "compile_backend": ("inductor", "aot_eager", "eager")}

class ConfigError(ValueError):
    """Bad input, caught before any training; the message says which knob and what to do."""

def make_config(preset="cpu", **overrides):
    """A Config from a preset and overrides, built in one go (so the pipeline's knobs resolve from the overrides)."""
    need(preset in PRESETS, f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return Config(**{**PRESETS[preset], **overrides, "preset": preset})

def need(ok, msg):
    if not ok:
        raise ConfigError(msg)

def validate(cfg):
    """Refuse impossible settings with a message that says which knob and why. Checks only: returns cfg as it was."""
    for knob, allowed in CHOICES.items():
        need(getattr(cfg, knob) in allowed, f"unknown --{knob} {getattr(cfg, knob)!r}: choose one of {', '.join(allowed)}")
    for knob, value in ((f.name, getattr(cfg, f.name)) for f in fields(cfg) if f.type in (int, float)):
        need(math.isfinite(value) and value >= 0, f"--{knob} must be a finite number >= 0, got {value}")  # no NaN
    for knob in ("batch_size", "grad_accum", "block_size", "vocab_size", "n_layer", "n_head", "n_embd", "ffn_hidden",
                 "ffn_multiple", "max_steps", "prune_every", "eval_every", "eval_iters", "log_every", "ckpt_every"):
        need(getattr(cfg, knob) >= 1, f"--{knob} must be at least 1, got {getattr(cfg, knob)}")
    need(cfg.beta1 < 1 and cfg.beta2 < 1, f"--beta1 and --beta2 must be in [0, 1), got {cfg.beta1}, {cfg.beta2}")
    need(cfg.seed < 2**63, f"--seed must be below 2**63 (torch's generators take 64 bits), got {cfg.seed}")
    need(cfg.dist_timeout > 0, f"--dist_timeout must be above 0 seconds, got {cfg.dist_timeout}")
    need(cfg.n_embd % cfg.n_head == 0 and (cfg.n_embd // cfg.n_head) % 2 == 0,
         f"--n_embd {cfg.n_embd} must split into --n_head {cfg.n_head} heads of even size (RoPE rotates pairs)")
    need(0 < cfg.min_lr <= cfg.lr, f"need 0 < --min_lr ({cfg.min_lr}) <= --lr ({cfg.lr})")
    need(0 <= cfg.ema_beta < 1, f"--ema_beta (lambda) must be in [0, 1), got {cfg.ema_beta}: at 1 nothing new enters")
    need(0 <= cfg.compact_frac <= 1, f"--compact_frac must be in [0, 1], got {cfg.compact_frac}")
    need(0 < cfg.decay_frac <= 1, f"--decay_frac must be in (0, 1] (1: cosine), got {cfg.decay_frac}")
    need(cfg.enlarge_attn >= 1, f"--enlarge_attn must be >= 1 (1: attention is not pruned), got {cfg.enlarge_attn}")
    need(head_sizes(cfg)[1] <= cfg.n_embd, f"--enlarge_attn {cfg.enlarge_attn} gives {head_sizes(cfg)[1]} heads, more "
         f"than --n_embd {cfg.n_embd} allows (an export's head count must divide it): lower --enlarge_attn")
    need(cfg.adapt_amp <= 1, f"--adapt_amp must be in [0, 1] (above 1 a layer would want < 0 units), got {cfg.adapt_amp}")
    if cfg.pruning != "none":
        F_t, F_e = ffn_sizes(cfg)
        need(cfg.enlarge > 1 and F_e > F_t, f"the target FFN width (--ffn_hidden {F_t}) must be smaller than the "
             f"enlarged width (--enlarge {cfg.enlarge} gives {F_e}): raise --enlarge above 1, or use --pipeline scratch")
        need(0 < cfg.prune_start < 1, f"--prune_start must be a fraction of the run in (0, 1), got {cfg.prune_start}")
        t_p, t_end = phase_steps(cfg)
        need(t_end <= cfg.max_steps, f"the pruning window ends at step {t_end}, past the end of the run "
                                     f"(--max_steps {cfg.max_steps}): make --prune_start + --prune_len <= 1")
        need(t_p >= 1, "pruning would start at step 0: raise --prune_start or --max_steps")
    return cfg

TOKENIZER_VOCAB = {"bytes": 256, "gpt2": 50304}  # the --vocab_size each tokenizer's presets use

def check_data(cfg, prepare=True):
    """The token files (and the GPT-2 vocabulary) against the config, cheaply: bad data stops here, not in the first
    forward pass. The embedded Shakespeare data is prepared on first use (not under torchrun: ranks would race)."""
    d = dataset_path(cfg)
    missing = [f for f in ("train.bin", "val.bin") if not os.path.exists(os.path.join(d, f))]
    if missing and prepare and cfg.dataset == "shakespeare" and not cfg.data_dir:
        print(f"{d} has no {', '.join(missing)}: preparing it with data/shakespeare/prepare.py")
        subprocess.run([sys.executable, os.path.join(d, "prepare.py")], check=True)
        missing = []
    if missing:
        prepare_py = os.path.join("data", cfg.dataset, "prepare.py")
        how = f"python {prepare_py}" if os.path.exists(os.path.join(ROOT, prepare_py)) else "a prepare.py of your own"
        where = f"--data_dir {d}" if cfg.data_dir else f"--dataset {cfg.dataset} ({d})"
        raise ConfigError(f"no {', '.join(missing)} in {where}: prepare the data first with: {how} (or, if it "
                          f"moved, pass --data_dir)")
    meta_path, meta = os.path.join(d, "meta.json"), read_meta(cfg)
    tok, vocab = meta.get("tokenizer"), cfg.vocab_size
    need(not (tok and cfg.tokenizer and tok != cfg.tokenizer), f"{meta_path} says the tokens are {tok}, not "
                                                               f"--tokenizer {cfg.tokenizer}: drop --tokenizer")
    need(not (tok in TOKENIZER_VOCAB and vocab in TOKENIZER_VOCAB.values() and vocab != TOKENIZER_VOCAB[tok]),
         f"{meta_path} says the tokens are {tok}, but --vocab_size {vocab} is for another tokenizer: use a preset "
         f"for {tok} data, or pass --vocab_size {TOKENIZER_VOCAB.get(tok)}")
    need(meta.get("vocab_size", 0) <= vocab, f"{meta_path} says the vocabulary has {meta.get('vocab_size')} tokens: "
                                             f"pass --vocab_size {meta.get('vocab_size')} or more")
    for split in ("train", "val"):
        path = os.path.join(d, f"{split}.bin")
        need(os.path.isfile(path), f"{path} is not a file: prepare the data again")
        size = os.path.getsize(path)
        need(size % 2 == 0, f"{path} has {size} bytes, not a whole number of uint16 tokens: prepare the data again")
        n = size // 2
        need(n > cfg.block_size + 1, f"{path} holds {n} tokens, fewer than a window of --block_size {cfg.block_size} + 1")
        # The largest token id of 32 slices of 1M tokens spread over the file: ~64 MB read, whatever its size
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        top = max(int(tokens[i:i + 2**20].max()) for i in np.linspace(0, max(0, n - 2**20), 32, dtype=np.int64))
        need(top < vocab, f"{path} has token id {top}, but --vocab_size is {vocab}: these tokens are not for this "
                          f"model (GPT-2 data with a byte-level preset?); use --vocab_size {top + 1} or more")
    if cfg.sample_tokens:
        try:
            tokenizer(cfg)
        except ConfigError as e:
            raise ConfigError(f"{e}, or pass --sample_tokens 0") from None
    if tokenizer_kind(cfg) == "gpt2" and os.path.exists(HELLASWAG):  # scored at every evaluation: read it now
        try:
            beside("data/hellaswag/eval.py").read(HELLASWAG)
        except ValueError as e:
            raise ConfigError(f"{e}: run python data/hellaswag/prepare.py again") from None

def check_device(cfg, model_memory=False):
    """A device here, a dtype it computes in, and (model_memory) room for the enlarged model and its AdamW state."""
    try:
        device = torch.device(device_name(cfg))
    except RuntimeError:
        raise ConfigError(f"unknown --device {cfg.device!r}: auto | cpu | cuda | cuda:N | mps") from None
    here = {"cpu": True, "mps": torch.backends.mps.is_available(),
            "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()}
    need(here.get(device.type), f"--device {cfg.device}: not on this machine ({torch.cuda.device_count()} CUDA GPUs "
                                f"under torch {torch.__version__}); use --device cpu, or a CUDA build of torch on a GPU")
    need(not (cfg.dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported()),
         "--dtype bfloat16: this GPU cannot compute in bfloat16; use --dtype float32")
    have = (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if device.type == "cpu" else math.inf)
    n = param_counts(cfg)["enlarged"] if model_memory else 0
    need(16 * n <= have, f"the enlarged model has {fmt_params(n)} parameters: {16 * n / 2**30:.0f} GiB for its weights, "
                         f"gradients and AdamW state, more than this {device.type}'s {have / 2**30:.0f} GiB")

def check_out_dir(out_dir, resume, overwrite):  # a new run never overwrites a checkpoint it did not write
    need(resume or overwrite or not os.path.exists(ckpt_path(out_dir)), f"--out_dir {out_dir} already holds a run "
         f"(ckpt.pt): continue it with --resume, start it over with --overwrite, or choose another --out_dir")

def check_inputs(cfg, resume=False, overwrite=False, world=1):
    """Everything the user gave, checked at the start of a run: the knobs, the data, the device, the folders."""
    validate(cfg)
    need(cfg.grad_accum % world == 0, f"--grad_accum {cfg.grad_accum} must be a multiple of the {world} processes: "
         f"each does grad_accum / {world} micro-steps, so that a step has the same tokens on any number")
    check_data(cfg, prepare=world == 1)
    check_device(cfg, model_memory=True)
    for flag, path in (("--out_dir", cfg.out_dir), ("--plot_dir", cfg.plot_dir or cfg.out_dir)):
        check_writable(flag, path)  # now, not when the figure is drawn
    for path in (ckpt_path(cfg.out_dir), log_path(cfg.out_dir)):  # read-only, or chattr +i
        need(not os.path.exists(path) or os.access(path, os.W_OK), f"{path} cannot be written: make it writable "
                                                                   f"again, or choose another --out_dir")
    check_out_dir(cfg.out_dir, resume, overwrite)

def check_writable(flag, path):
    """The folder exists or can be made: no file or dangling link in its path, permission to write."""
    need(path, f"{flag} is empty: name a folder")
    parent = os.path.abspath(path)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    need(os.path.isdir(parent) and os.access(parent, os.W_OK),
         f"cannot create {flag} {path}: {parent} is not a folder this process can write to")

# ---- 14. Main: the command line; a run, or the use of a checkpoint ------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    hint = "see --help"

    def error(self, message):  # one line, like every other bad input here (argparse would print its usage first)
        raise ConfigError(f"{message} ({self.hint})")

def arg_parser(description):
    """Argparse from Config: each field's type, default and comment a flag; its "# heading" lines the groups."""
    source = inspect.getsource(Config).split("def __post_init__")[0]
    p = ArgumentParser(description=description)
    p.hint = "see --help; --compare/--ablation/--sweep/--bench: python plots/reproduce.py"
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
    p.add_argument("--overwrite", action="store_true", help="start over in an --out_dir that holds a checkpoint")
    return p

def parse_args(argv=None, p=None):
    """(the Config: a preset, then every knob given; the parsed args), from this file's flags or from parser p."""
    if p is None:
        p = arg_parser("IDEA Prune: integrated enlarge -> prune -> recover, one LR schedule.")
        p.add_argument("--resume", action="store_true", help="continue the run in --out_dir from its ckpt.pt")
        use = p.add_argument_group("use a trained model: --out_dir's ckpt.pt, from the end of a run or its middle")
        use.add_argument("--sample", action="store_true", help="write text after --prompt (nanoGPT's sample.py)")
        use.add_argument("--prompt", default="\n", help="the text to continue (default a newline)")
        use.add_argument("--prompt_file", help="read the prompt from this file")
        use.add_argument("--num_samples", type=int, default=1, help="how many samples")
        use.add_argument("--max_new_tokens", type=int, default=200, help="tokens per sample")
        use.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0: greedy)")
        use.add_argument("--top_k", type=int, default=40, help="sample among the k likeliest tokens (0: all)")
        use.add_argument("--evaluate", action="store_true", help="the full validation loss and perplexity")
        use.add_argument("--export_hf", metavar="DIR", help="write a Hugging Face LlamaForCausalLM directory")
    args = p.parse_args(argv)
    # args.given: the knobs set on the command line (a checkpoint's own config is overridden by these only)
    given = args.given = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name) is not None}
    return make_config(given.get("preset", Config.preset), **{k: v for k, v in given.items() if k != "preset"}), args

def use_checkpoint(args):
    """--sample, --evaluate, --export_hf: the model of --out_dir/ckpt.pt, on --device (data from --data_dir)."""
    for flag, ok, what in (("num_samples", args.num_samples >= 1, ">= 1"), ("top_k", args.top_k >= 0, ">= 0 (0: off)"),
                           ("max_new_tokens", args.max_new_tokens >= 0, ">= 0"),
                           ("temperature", 0 <= args.temperature < math.inf, ">= 0 and finite (0: greedy)")):
        need(ok, f"--{flag} must be {what}, got {getattr(args, flag)}")
    try:
        prompt = open(args.prompt_file, encoding="utf-8").read() if args.prompt_file else args.prompt
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--prompt_file {args.prompt_file}: cannot read it as text ({e})") from None
    need(not args.sample or prompt and "\0" not in prompt, "--prompt (or --prompt_file) is empty or not text")
    out_dir = args.given.get("out_dir", Config.out_dir)
    if args.export_hf is not None:  # a folder it may write (data/hf_export.py), before anything is read
        check_writable("--export_hf", args.export_hf)
        why = beside("data/hf_export.py").check_folder(args.export_hf, args.overwrite, out_dir)
        need(not why, f"--export_hf {args.export_hf} {why}")
    model, cfg = load_model(ckpt_path(out_dir))
    cfg = validate(replace(cfg, **{k: v for k, v in args.given.items() if k in ("device", "dtype", "data_dir", "seed")}))
    check_device(cfg)
    if args.sample or args.export_hf:
        tokenizer(cfg)  # GPT-2: its vocabulary is there, before anything is written
    device, ctx = setup_device(cfg)
    model.to(device).eval()
    print(f"{fmt_params(model.num_params())} params, FFN widths {model.ffn_widths}, from {ckpt_path(out_dir)}")
    if args.evaluate:
        check_data(replace(cfg, sample_tokens=0), prepare=False)
        val = evaluate_full(model, Data(cfg, device), ctx)
        print(f"val loss {val:.4f} | perplexity {math.exp(val):.3f} | over every window of {dataset_path(cfg)}/val.bin")
    if args.sample:
        for i in range(args.num_samples):
            text = sample(model, cfg, device, ctx, prompt, args.max_new_tokens, args.temperature, args.top_k,
                          seed=cfg.seed + i)
            print(f"---- sample {i + 1}/{args.num_samples}\n{prompt}{text}")
    if args.export_hf:
        export_hf(model, cfg, args.export_hf, args.overwrite, out_dir)
        print(f"wrote {args.export_hf}: load it with transformers.AutoModelForCausalLM.from_pretrained")

def run_command(body):
    """body() as a command: bad input exits with 2 and one line, a failed run with 1, a signal with 128 + its number."""
    try:
        body()
        if dist.is_initialized():
            dist.barrier()  # no rank tears the group down while rank 0 still writes its checkpoint or plots
    except (ConfigError, RunFailed) as e:  # RunFailed: diverged, or a checkpoint could not be written
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds the same bad input: one says it
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except RuntimeError as e:  # a collective that timed out (--dist_timeout): another process stopped answering
        if not (dist.is_initialized() and "Timed out" in str(e)):
            raise
        sys.exit(f"error: process {dist.get_rank()} had no answer from the others within --dist_timeout: the job ends")
    except OSError as e:  # a full disk anywhere (each writer removes its unfinished file): free space, run again
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        sys.exit(f"error: the disk is full ({e}); nothing half-written was left: free some space and run it again")
    except (Interrupted, KeyboardInterrupt) as e:  # KeyboardInterrupt: a second Ctrl-C, at once
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(str(e) or "stopped by a second Ctrl-C, with no checkpoint of this step", file=sys.stderr)
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

def main(argv=None):
    def body():
        cfg, args = parse_args(argv)
        if args.sample or args.evaluate or args.export_hf is not None:
            use_checkpoint(args)
        else:  # the figure is drawn here, not in train(): tests and notebooks train without matplotlib
            final = train(cfg, args.resume, overwrite=args.overwrite, given=args.given)  # None: not rank 0
            log, path = log_path(cfg.out_dir), os.path.join(cfg.plot_dir or cfg.out_dir, f"{cfg.pipeline}.png")
            if final and not os.path.exists(os.path.join(ROOT, "plots", "figures.py")):
                print("no figure: plots/figures.py, which draws it, is not beside this file")
            elif final:
                try:
                    beside("plots/figures.py").plot_run(read_log(log), path)
                except OSError as e:  # the run is complete: only its figure is missing
                    raise RunFailed(f"the run finished, but its figure {path} could not be written ({e}); draw it "
                                    f"with: python plots/figures.py {shlex.quote(log)} {shlex.quote(path)}") from None
    run_command(body)

if __name__ == "__main__":
    main()
