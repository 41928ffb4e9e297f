"""
figures.py: the figure of one run (LR and phases, train/val loss against tokens, FFN width) from its log.jsonl, and
the drawing helpers plots/reproduce.py shares. ideaprune.py draws it at the end of every run; to draw it again:

  python plots/figures.py out/log.jsonl out/integrated.png
"""
import os
import sys

import numpy as np


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
    for name, a, b in [("enlarged", 0, t_p), ("pruning", t_p, t_end), ("recovery", t_end, T)]:
        if b > a:
            ax.axvspan(a * scale, b * scale, color=PHASE_COLORS[name], label=name if labels else None, lw=0)
    if t_end == t_p:  # one-shot: a window of zero width, drawn as a line
        ax.axvline(t_p * scale, color="#e6550d", lw=1.5, label="one-shot prune" if labels else None)


def smooth(values, window=25):
    """Trailing moving average (the first points average over what exists)."""
    c, idx = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0)), np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_run(records, path):
    """One run: LR with its phases (top), train/val loss against tokens (middle), FFN width (bottom)."""
    plt = _plt()
    header, train, evals = parse_log(records)
    steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
    fig, (ax_lr, ax_loss, ax_ffn) = plt.subplots(3, 1, figsize=(8, 10))
    shade_phases(ax_lr, header)
    ax_lr.plot(steps, [r["lr"] for r in train], color="k")
    ax_lr.set(xlabel="step", ylabel="learning rate", title=f"{header['pipeline']}: LR schedule ({header['lr_schedule']})")
    if header["pruning"] != "none":
        ax_lr.legend(loc="upper right", fontsize=8)
    tok = np.array([r["tokens"] for r in train]) / 1e6
    shade_phases(ax_loss, header, header["tokens_per_step"] / 1e6, labels=False)
    ax_loss.plot(tok, losses, color="#9ecae1", lw=0.6, label="train (per step)")
    ax_loss.plot(tok, smooth(losses), color="#08519c", label="train (smoothed)")
    ax_loss.plot([r["tokens"] / 1e6 for r in evals], [r["val_loss"] for r in evals], "o-", color="#d62728",
                 label="validation")
    ax_loss.set_ylim(min(losses) - 0.05, np.percentile(losses, 95) + 0.1)  # the first steps would flatten the rest
    ax_loss.set(xlabel="training tokens (millions)", ylabel="loss (nats/token)", title="loss")
    ax_loss.legend(fontsize=8, loc="upper center")
    scored = [r for r in evals if "hellaswag_acc_norm" in r]
    if scored:  # zero-shot accuracy, on its own axis, against the same tokens
        ax_hs = ax_loss.twinx()
        ax_hs.plot([r["tokens"] / 1e6 for r in scored], [r["hellaswag_acc_norm"] for r in scored], "s-",
                   color="#2ca02c", label="HellaSwag acc_norm (lm-eval's)")
        ax_hs.legend(fontsize=8, loc="upper right")
    shade_phases(ax_ffn, header, labels=False)
    ax_ffn.plot(steps, [r["ffn"] for r in train], color="k")
    ax_ffn.axhline(header["F_t"], ls="--", color="gray", lw=1, label=f"target F_t = {header['F_t']}")
    ax_ffn.set(xlabel="step", ylabel="FFN neurons per layer (mean)", title="FFN width")
    ax_ffn.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
    return path


def save(fig, path):
    """The figure as a PNG, whole or not at all: written beside, then renamed (a full disk leaves no torn file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        fig.savefig(path + ".tmp", dpi=110, format="png")
        os.replace(path + ".tmp", path)
    except OSError:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        raise
    finally:
        _plt().close(fig)


def main(argv=None):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ideaprune.py, one folder up
    import ideaprune as ip
    p = ip.ArgumentParser(description="Draw one run's figure from its log.jsonl.")
    p.add_argument("log", help="a run's log.jsonl")
    p.add_argument("figure", help="the PNG to write")

    def body():  # bad input: one line, exit 2 (ideaprune's run_command)
        args = p.parse_args(argv)
        ip.need(os.path.isfile(args.log), f"{args.log} is not a file: name a run's log.jsonl")
        records = ip.read_log(args.log)
        kinds = {r["kind"] for r in records}
        ip.need("config" in kinds, f"{args.log} holds no run (no config record): name a run's log.jsonl")
        ip.need("train" in kinds, f"{args.log} holds no training step yet (stopped before its first): nothing to draw")
        ip.check_writable("the figure's folder", os.path.dirname(args.figure) or ".")
        print("wrote", plot_run(records, args.figure))
    ip.run_command(body)


if __name__ == "__main__":
    main()
