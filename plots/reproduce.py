"""
reproduce.py: the paper's figures from many runs of ideaprune.py, each trained through its public functions.

  python plots/reproduce.py --preset demo --compare             # scratch, integrated, minitron, sheared: figures, table
  python plots/reproduce.py --preset demo --ablation            # one-shot prune, then the LR resumed vs rewarmed
  python plots/reproduce.py --preset demo --compare --replot    # figures and table again from the logs, no training
  python plots/reproduce.py --preset demo --sweep enlarge=1.5,2.5,4,6 --ceiling   # integrated once per value,
                                                                # scratch (and F_e throughout): loss against the knob
  python plots/reproduce.py --preset demo --sweep seed=1337,2,3,4,5   # the paired gap to scratch and its SE
  python plots/reproduce.py --preset rich --ablation --seeds 1337,2,3   # each seed in out_dir/seed<S>; paired gaps
  python plots/reproduce.py --budget out/rich/seed1337 out/rich/seed2   # Figure 1 (left) against tokens per param,
                                                                # from the max_steps sweeps in those folders
  python plots/reproduce.py --preset cpu --bench [--compile]    # step time: importance tracking off/on, compacted/built
  torchrun --standalone --nproc_per_node 2 plots/reproduce.py --preset demo --compare   # each run under DDP

Every run goes to --out_dir/<name> (integrated, scratch, integrated_ema_beta=0.3, ceiling_F768, ...): a finished
run of the same config there is reused (so suites and sweeps share runs), an interrupted one is resumed, a run
of another config is refused (--overwrite trains it again). Figures and *_results.md go to --plot_dir (default:
--out_dir).
"""
import math
import os
import sys
import time
from dataclasses import asdict, fields, replace

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ideaprune.py, one folder up
import ideaprune as ip  # noqa: E402

figures = ip.beside("plots/figures.py")  # one run's figure, and the helpers these figures share


COMPARE = ("scratch", "integrated", "minitron", "sheared")


ABLATION = ("resumed", "rewarmed")
REFERENCE = {"compare": "scratch", "ablation": "rewarmed"}  # --seeds: each pipeline's paired gap to this one


def final_record(records):
    return next(r for r in records if r["kind"] == "final")


def plot_compare(logs, prefix):
    """Several runs (name -> log records): the figures of the comparison, written to prefix_*.png."""
    plt = figures._plt()
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    colors = dict(zip(ip.PIPELINES, ["#d62728", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]))
    parsed = {name: figures.parse_log(recs) for name, recs in logs.items()}
    written = []

    def save(fig, name):
        fig.tight_layout()
        figures.save(fig, f"{prefix}_{name}.png")
        written.append(f"{prefix}_{name}.png")

    # Figure 2 mirror: the LR of each pipeline against tokens, one panel each, phases shaded
    fig, axes = plt.subplots(len(logs), 1, figsize=(8, 2.2 * len(logs)), sharex=True, squeeze=False)
    for ax, (name, (header, train, _)) in zip(axes[:, 0], parsed.items()):
        scale = header["tokens_per_step"] / 1e6
        figures.shade_phases(ax, header, scale)
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
                      color=figures.PHASE_COLORS["pruning"], label="pruning window", lw=0)
        elif ref:
            a.axvline(ref["t_p"] * ref["tokens_per_step"] / 1e6, color="#e6550d", lw=1.5, label="one-shot prune")
        for name, (header, train, evals) in parsed.items():
            tok = np.array([r["tokens"] for r in train]) / 1e6
            a.plot(tok, figures.smooth([r["loss"] for r in train]), color=colors.get(name), lw=1.2,
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


def results_table(logs):
    """Markdown: one row per pipeline, from the final record of its log (HellaSwag when the runs measured it)."""
    finals = {name: final_record(recs) for name, recs in logs.items()}
    hs = all("hellaswag_acc_norm" in f for f in finals.values())
    rows = ["| pipeline | val loss | perplexity |" + (" HellaSwag acc_norm |" if hs else "") +
            " params | FFN widths | tokens | training FLOPs | wall time |", "|---" * (8 + hs) + "|"]
    for name, f in finals.items():
        rows.append(f"| {name} | {f['val_loss']:.4f} | {f['ppl']:.3f} |" + (f" {f['hellaswag_acc_norm']:.4f} |" if hs else "") +
                    f" {ip.fmt_params(f['params'])} | {'/'.join(map(str, sorted(set(f['widths']))))} | "
                    f"{f['tokens'] / 1e6:.2f}M | {f['flops']:.3g} | {f['wall_s']:.0f} s |")
    return "\n".join(rows) + "\n"


def plot_sweep(knobs, results, pipeline, path):
    """Final validation loss against a swept knob (the paper's Figures 3, 4 and 1 left): the pruning pipeline per
    value, scratch at F_t (and the ceiling, F_e throughout) as references; below, the gap to scratch."""
    plt = figures._plt()
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
    figures.save(fig, path)
    return path


def sweep_table(knobs, results, pipeline):
    """Markdown: one row per value; with several seeds (--sweep seed=...), the mean paired gap and its SE."""
    ceiling = "ceiling" in results[0]
    rows = [f"| {'/'.join(knobs)} | {pipeline} | scratch | gap |" + (" ceiling |" if ceiling else "") +
            " tokens | params | tokens/param | wall time |", "|---" * (8 + ceiling) + "|"]
    gaps = []
    for r in results:
        gaps.append(r["arm"]["val_loss"] - r["scratch"]["val_loss"])
        rows.append(f"| {'/'.join(map(str, r['value']))} | {r['arm']['val_loss']:.4f} | {r['scratch']['val_loss']:.4f} "
                    f"| {gaps[-1]:+.4f} |" + (f" {r['ceiling']['val_loss']:.4f} |" if ceiling else "") +
                    f" {r['arm']['tokens'] / 1e6:.2f}M | {r['arm']['params']:,} | "
                    f"{r['arm']['tokens'] / r['arm']['params']:,.1f} | {r['arm']['wall_s']:.0f} s |")
    if knobs == ("seed",) and len(gaps) > 1:
        mean, se = paired(gaps)
        rows.append(f"\nPaired by seed: mean gap {mean:+.4f}, standard error {se:.4f} ({abs(mean) / se:.2f} SE); "
                    f"{pipeline} better in {sum(g < 0 for g in gaps)} of {len(gaps)} seeds.")
    return "\n".join(rows) + "\n"


def paired(gaps):
    """The mean of gaps paired by seed and its standard error, std(ddof=1) / sqrt(n) (nan for one seed)."""
    se = np.std(gaps, ddof=1) / math.sqrt(len(gaps)) if len(gaps) > 1 else math.nan
    return float(np.mean(gaps)), float(se)


def t_test(gaps):
    """(t, two-sided p) of a paired t-test of gaps paired by seed against 0, with n - 1 degrees of freedom: Student's
    t distribution in closed form for whole degrees of freedom (Abramowitz and Stegun 26.7.3, 26.7.4)."""
    mean, se = paired(gaps)
    df, t = len(gaps) - 1, mean / se if se > 0 else math.copysign(math.inf, mean)
    if df < 1 or math.isnan(t):
        return math.nan, math.nan
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, term, total = math.cos(theta) ** 2, 1.0, 1.0  # total: the series in cos^2, from its first term 1
    for k in range(1, (df - 1) // 2 if df % 2 else df // 2):
        term *= c2 * ((2 * k) / (2 * k + 1) if df % 2 else (2 * k - 1) / (2 * k))
        total += term
    if df % 2:  # odd: P(|T| < t) = 2/pi (theta + sin cos * series); for 1 degree of freedom the series is empty
        inside = 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))
    else:
        inside = math.sin(theta) * total
    return t, max(0.0, 1.0 - inside)


def gap_cells(gaps):
    """' -0.0200 | 0.0058 | -3.45 | 0.075 | 3 of 3 |': the mean paired gap, its SE, the paired t and its two-sided p,
    and in how many seeds it is negative (the run better)."""
    (mean, se), (t, p) = paired(gaps), t_test(gaps)
    return f" {mean:+.4f} | {se:.4f} | {t:+.2f} | {p:.3f} | {sum(g < 0 for g in gaps)} of {len(gaps)} |"


def seeds_gaps(by_seed, name, ref):
    """The final val loss of run name minus that of run ref, seed by seed. by_seed: {seed: {name: final}}."""
    return [by_seed[s][name]["val_loss"] - by_seed[s][ref]["val_loss"] for s in by_seed]


def seeds_table(by_seed, pairs):
    """--seeds: one row per (run, reference) pair (a run: a pipeline, or a sweep's role at a value), the run's final
    val loss by seed, and its gap to the reference paired by seed: mean, SE, seeds where it is lower."""
    seeds = list(by_seed)
    rows = ["| run | " + " | ".join(f"seed {s}" for s in seeds) + " | minus | mean gap | SE | t | p | better in |",
            "|---" * (len(seeds) + 7) + "|"]
    for name, ref in pairs:
        losses = [by_seed[s][name]["val_loss"] for s in seeds]
        rows.append(f"| {name} | " + " | ".join(f"{x:.4f}" for x in losses) + f" | {ref or ''} |" +
                    (gap_cells(seeds_gaps(by_seed, name, ref)) if ref else " | | | | | |"))
    return "\n".join(rows) + "\n"


def plot_seeds(by_seed, pairs, path):
    """--seeds: each paired gap (run minus its reference), mean and standard error over the seeds, one bar each."""
    plt, pairs = figures._plt(), [(name, ref) for name, ref in pairs if ref]
    stats = [paired(seeds_gaps(by_seed, name, ref)) for name, ref in pairs]
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(pairs) + 1.5))
    y = np.arange(len(pairs))[::-1]
    ax.barh(y, [m for m, _ in stats], xerr=[0 if math.isnan(se) else se for _, se in stats], color="#d62728",
            alpha=0.7, capsize=4)
    ax.axvline(0, color="#7f7f7f", lw=1)
    ax.set_yticks(y, [f"{name}  minus  {ref}" for name, ref in pairs], fontsize=8)
    ax.set(xlabel=f"final val loss gap (nats): mean and standard error over {len(by_seed)} seeds",
           title="each run minus its reference, paired by seed (left of 0: the run is better)")
    fig.tight_layout()
    figures.save(fig, path)
    return path


def read_table(path):
    """The rows of a markdown table written by this script, as {header cell: cell} (what --budget reads); a
    ValueError for a row with another number of cells than the header (a torn or edited table)."""
    lines = [line.strip().strip("|").split("|") for line in open(path) if line.startswith("|")]
    if len(lines) < 3 or any(len(line) != len(lines[0]) for line in lines):
        raise ValueError("no rows, or a row with another number of cells than the header")
    return [dict(zip([c.strip() for c in lines[0]], [c.strip() for c in line])) for line in lines[2:]]


def folder_gaps(d):
    """One folder's gaps {(gap, deployed params, tokens per param): value}, from its sweep_max_steps*_results.md
    (a ceiling in several tables is one run)."""
    names = sorted(n for n in os.listdir(d) if n.startswith("sweep_max_steps") and n.endswith("_results.md")
                   and not n.endswith("_seeds_results.md")) if os.path.isdir(d) else []
    if not names:
        raise ip.ConfigError(f"--budget: {d} holds no sweep_max_steps*_results.md; run --sweep max_steps=... there")
    tables, here, name = {}, {}, None
    try:
        for name in names:
            rows = read_table(os.path.join(d, name))
            tables[list(rows[0])[1]] = name, {r["max_steps"]: r for r in rows}  # the 2nd column: the pipeline
        for pipeline, (name, rows) in tables.items():
            for steps, r in rows.items():
                at = (int(r["params"].replace(",", "")), float(r["tokens/param"].replace(",", "")))
                series = {"integrated - scratch": float(r["gap"]) if pipeline == "integrated" else None,
                          "ceiling - scratch": float(r["ceiling"]) - float(r["scratch"]) if "ceiling" in r else None}
                if pipeline == "resumed" and steps in tables.get("rewarmed", ("", {}))[1]:
                    series["resumed - rewarmed"] = float(r["resumed"]) - float(tables["rewarmed"][1][steps]["rewarmed"])
                here.update({(gap, *at): value for gap, value in series.items() if value is not None})
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise ip.ConfigError(f"--budget: {os.path.join(d, name)} is not a table of --sweep max_steps "
                             f"({type(e).__name__}: {e}): run the sweep again, or remove it") from None
    return here


def budget(dirs, cfg):
    """Figure 1 (left) against tokens per deployed parameter, from the --sweep max_steps=... tables in each folder
    (one folder per seed; folders of several presets join on one axis): integrated - scratch, ceiling - scratch,
    and resumed - rewarmed where both were swept, each gap averaged over the folders that hold it (mean, SE)."""
    if len({os.path.realpath(d) for d in dirs}) < len(dirs):
        raise ip.ConfigError("--budget: a folder is given twice (each folder is one seed's runs): name each once")
    gaps = {}  # (gap, deployed params, tokens per param) -> [one gap per folder]
    for d in dirs:
        for key, value in folder_gaps(d).items():
            gaps.setdefault(key, []).append(value)
    plt = figures._plt()
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True)
    colors = {"integrated - scratch": "#d62728", "ceiling - scratch": "#1f77b4", "resumed - rewarmed": "#9467bd"}
    rows = ["| gap | deployed params | tokens/param | mean | SE | below 0 in | by folder |", "|---" * 7 + "|"]
    for (gap, params), marker in zip(sorted({k[:2] for k in gaps}), ["o-", "s--", "^-", "D--"] * 4):
        points = sorted((tpp, *paired(v), v) for (g, p, tpp), v in gaps.items() if (g, p) == (gap, params))
        ax = axes[1 if gap == "resumed - rewarmed" else 0]
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[0 if math.isnan(p[2]) else p[2]
                    for p in points], fmt=marker, color=colors[gap], capsize=3, label=f"{gap}, {params:,} params")
        rows += [f"| {gap} | {params:,} | {tpp:,.1f} | {m:+.4f} | {se:.4f} | {sum(x < 0 for x in v)} of {len(v)} | "
                 f"{', '.join(f'{x:+.4f}' for x in v)} |" for tpp, m, se, v in points]
    for ax, title in zip(axes, ("enlarging: the pruned model and the enlarged one trained throughout, minus scratch",
                                "the LR after a one-shot prune: resumed minus rewarmed (below 0: Table 2 holds)")):
        ax.axhline(0, color="#7f7f7f", lw=1)
        ax.set(xscale="log", ylabel="gap in final val loss (nats)", title=title)
        if ax.get_legend_handles_labels()[0]:  # a panel with no sweep in it stays empty
            ax.legend(fontsize=8)
    axes[1].set_xlabel("training tokens per deployed parameter (mean and SE over seeds)")
    fig.tight_layout()
    path = os.path.join(cfg.plot_dir or cfg.out_dir, "budget.png")
    figures.save(fig, path)
    write_table(cfg, "budget", "\n".join(rows) + "\n", [path])
    return gaps


def along(folders, names, path, window=50):
    """Integrated - scratch along the run (the paper's advantage, where it comes from and where it goes): for each
    named run of every folder (one folder per seed), its training loss minus that of the scratch run of the same
    folder trained on the same data and schedule, step by step (the same batches), averaged over the folders. The
    gap splits into the head start (the mean over the window steps before t_p), the change through the pruning
    window (to the window steps before t_end) and the recovery (to the last window steps), beside the final
    validation gap. Writes the figure and a table of the parts per folder (mean, SE, t, p); returns the parts."""
    plt, parts, rows = figures._plt(), {}, []
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for name, color in zip(names, ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]):
        curves, split = [], []
        for d in folders:
            logs = {n: ip.read_log(ip.log_path(os.path.join(d, n))) for n in os.listdir(d)
                    if os.path.exists(ip.log_path(os.path.join(d, n)))}
            if name not in logs:
                raise ip.ConfigError(f"--along: {d} holds no run {name}")
            head = logs[name][0]
            same = [k for k, v in head.items() if k not in PRUNING_KNOBS + UNTRAINED + (
                "pipeline", "pruning", "lr_schedule", "F_e", "t_p", "t_end", "lr_stages", "kind")]
            scratch = [n for n, r in logs.items() if r[0]["pruning"] == "none" and all(r[0][k] == head[k] for k in same)]
            if len(scratch) != 1:
                raise ip.ConfigError(f"--along: {d} holds {len(scratch)} scratch runs of {name}'s data and schedule")
            loss = [np.array([r["loss"] for r in logs[n] if r["kind"] == "train"]) for n in (name, scratch[0])]
            gap, t_p, t_end = loss[0] - loss[1], head["t_p"], head["t_end"]
            w = max(1, min(window, t_p, len(gap) - t_end))  # steps averaged at each point
            curves.append(figures.smooth(gap, window))
            at = [gap[t_p - w:t_p].mean(), gap[t_end - w:t_end].mean(), gap[-w:].mean()]
            split.append([at[0], at[1] - at[0], at[2] - at[1],
                          final_record(logs[name])["val_loss"] - final_record(logs[scratch[0]])["val_loss"]])
        parts[name] = np.array(split)
        mean, m = np.mean(curves, axis=0), parts[name].mean(axis=0)
        ax.plot(np.arange(len(mean)), mean, color=color, lw=1.2, label=f"{name}:\nhead start {m[0]:+.3f}, window "
                f"{m[1]:+.3f}, recovery {m[2]:+.3f}; final val {m[3]:+.3f} (mean of {len(folders)})")
        ax.axvspan(t_p, t_end, color=color, alpha=0.08)
        for i, (label, col) in enumerate(zip(("head start at t_p", "through the window", "recovery", "final val"),
                                             parts[name].T)):
            rows.append(f"| {name} | {label} | " + " | ".join(f"{x:+.4f}" for x in col) + " |" + gap_cells(list(col)))
    ax.axhline(0, color="#7f7f7f", lw=1)
    ax.set(xlabel="step", ylabel="loss gap (nats): below 0, the pruned run is ahead",
           title="the pruned run minus scratch, training loss on the same batches (shaded: the pruning window)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figures.save(fig, path)
    header = "| run | part | " + " | ".join(os.path.basename(d.rstrip("/")) for d in folders) + \
        " | mean | SE | t | p | below 0 in |"
    table = "\n".join([header, "|---" * (len(folders) + 7) + "|"] + rows) + "\n"
    with open(os.path.splitext(path)[0] + "_results.md", "w") as f:
        f.write(table)
    print(f"{table}\nwrote {path}")
    return parts


# knobs that change nothing a run trains: where it runs, what it prints, the preset (its values are all logged), the
# tokenizer (its data says it)
UNTRAINED = ip.NOT_TRAINED + ("preset", "tokenizer", "sample_tokens", "log_every", "ckpt_every")


def finished_or_resumable(cfg):
    """'finished' or 'resume' when cfg.out_dir holds a run of this very config (so a suite or sweep uses it
    instead of training it again: runs are shared between them, and a suite stopped midway goes on where it
    stopped); None when it holds nothing, or a run of another config (which check_out_dir then refuses)."""
    log_path = ip.log_path(cfg.out_dir)
    if not (os.path.exists(ip.ckpt_path(cfg.out_dir)) and os.path.exists(log_path)):
        return None
    records = ip.read_log(log_path)
    header = records[0] if records and records[0]["kind"] == "config" else {}
    if any(header.get(k) != v for k, v in asdict(cfg).items() if k not in UNTRAINED):
        return None
    return "finished" if any(r["kind"] == "final" for r in records) else "resume"


def check_arms(subs, overwrite):
    """Refuse before the first run, not after it: a device this machine lacks, data that does not fit an arm, or an
    arm that would overwrite another config's run."""
    for sub in subs:
        ip.check_device(sub)
        ip.check_data(sub)
        if overwrite or not finished_or_resumable(sub):
            ip.check_out_dir(sub.out_dir, False, overwrite)


def run_arm(cfg, overwrite=False, replot=False):
    """One run of a suite or sweep, unless out_dir already holds it finished; its log records."""
    log_path = ip.log_path(cfg.out_dir)
    state = None if overwrite else finished_or_resumable(cfg)
    if state == "finished" and not replot:
        print(f"{cfg.out_dir} holds this run, finished: reused")
    elif not replot:
        final = ip.train(cfg, resume=state == "resume", overwrite=overwrite)
        if final:  # None on ranks other than 0
            figures.plot_run(ip.read_log(log_path), os.path.join(cfg.plot_dir, f"{final['pipeline']}.png"))
    if dist.is_initialized() and dist.get_rank() != 0:
        return None  # under torchrun, rank 0 draws the figures
    if not os.path.exists(log_path) or not any(r["kind"] == "final" for r in ip.read_log(log_path)):
        raise ip.ConfigError(f"--replot: {log_path} holds no finished run; run once without --replot")
    return ip.read_log(log_path)


def suite_configs(cfg, names):
    """One config per pipeline of a suite, each with its own out_dir/<name> (where its figure stays too)."""
    subs = [replace(cfg, pipeline=name, pruning="", lr_schedule="", out_dir=os.path.join(cfg.out_dir, name),
                    plot_dir=os.path.join(cfg.out_dir, name)) for name in names]
    for sub in subs:
        ip.validate(sub)
    return subs


def run_suite(cfg, names, label, replot=False, overwrite=False):
    """Train each named pipeline from the same seed and data order, each into out_dir/<name>, then compare."""
    subs = suite_configs(cfg, names)
    if not replot:
        check_arms(subs, overwrite)
    logs = {}
    for name, sub in zip(names, subs):
        if not replot:
            print(f"\n==== {label}: {name} ====")
        logs[name] = run_arm(sub, overwrite, replot)
    if None in logs.values():
        return {}
    write_table(cfg, label, results_table(logs), plot_compare(logs, os.path.join(cfg.plot_dir or cfg.out_dir, label)))
    return logs


def write_table(cfg, label, table, figures):
    """A suite's or sweep's markdown table, beside its figures and in out_dir."""
    for path in {os.path.join(d, f"{label}_results.md") for d in (cfg.plot_dir or cfg.out_dir, cfg.out_dir)}:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".tmp", "w") as f:  # whole or not at all (a full disk)
            f.write(table)
        os.replace(path + ".tmp", path)
    print(f"\n{table}\nwrote {', '.join(figures + [f'{label}_results.md'])}")


PRUNING_KNOBS = ("enlarge", "ffn_multiple", "enlarge_attn", "prune_start", "prune_len", "prune_every", "ema_beta",
                 "ema_warmup", "f1", "f2", "ranking", "adapt_amp", "compact_frac")  # never read by a model trained at F_t


def parse_sweep(spec):
    """'enlarge=1.5,2.6,4' -> (('enlarge',), [(1.5,), (2.6,), (4.0,)]); knobs swept together are joined by '/':
    'f1/f2=mean/max,max/max'. Each value is typed as its Config field."""
    types = {f.name: f.type for f in fields(ip.Config)}
    knobs, _, values = spec.partition("=")
    knobs = tuple(knobs.split("/"))
    bad = [k for k in knobs if k not in types or k in UNTRAINED + ("pipeline", "pruning", "lr_schedule")]
    if len(set(knobs)) < len(knobs):
        raise ip.ConfigError(f"--sweep {spec!r}: a knob is given twice")
    if not values or bad:
        raise ip.ConfigError(f"--sweep {spec!r}: write KNOB=V1,V2,... with KNOB a training knob (e.g. enlarge=1.5,2.6,4 "
                          f"or f1/f2=mean/max,max/max)" + (f"; {', '.join(bad)} is not one" if bad else ""))
    parsed = []
    for value in values.split(","):
        parts = value.split("/")
        if len(parts) != len(knobs):
            raise ip.ConfigError(f"--sweep: value {value!r} has {len(parts)} parts for the {len(knobs)} knobs "
                              f"{'/'.join(knobs)}")
        try:
            parsed.append(tuple(types[k](v) for k, v in zip(knobs, parts)))
        except ValueError:
            raise ip.ConfigError(f"--sweep: {value!r} is not a value of {'/'.join(knobs)}") from None
    if len(set(parsed)) != len(parsed):
        raise ip.ConfigError(f"--sweep {spec!r}: a value is given twice")
    return knobs, parsed


def sweep_arms(cfg, knobs, values, ceiling=False):
    """Per value, the runs {role: (name, config)}: 'arm' is cfg.pipeline with the value set, 'scratch' the target
    width from scratch, 'ceiling' (ceiling=True) the enlarged width trained throughout. A run is named by the
    swept values it depends on ('integrated_enlarge=6.0', 'scratch'), so a run that does not depend on the knob
    (scratch in an ema_beta sweep) is one run for all values, and a value equal to cfg's own is the plain
    'integrated' of --compare in the same --out_dir: runs are shared."""
    if cfg.pruning == "none":
        raise ip.ConfigError(f"--sweep compares a pruning pipeline with scratch; --pipeline {cfg.pipeline} prunes nothing")
    F_e = ip.ffn_sizes(cfg)[1]

    def placed(name, arm_cfg):  # in its own out_dir/<name>, checked now rather than when its turn comes
        arm_cfg = replace(arm_cfg, out_dir=os.path.join(cfg.out_dir, name), plot_dir=os.path.join(cfg.out_dir, name))
        try:
            return name, ip.validate(arm_cfg)
        except ip.ConfigError as e:
            raise ip.ConfigError(f"--sweep, at {name}: {e}") from None

    rows = []
    for value in values:
        setting = dict(zip(knobs, value))
        arm_cfg = replace(cfg, **setting)
        changed = [f"{k}={v}" for k, v in setting.items() if v != getattr(cfg, k)]
        unpruned = [c for c in changed if c.split("=")[0] not in PRUNING_KNOBS]
        # the references keep cfg's own pruning knobs: a scratch run never reads them, so it is shared
        scratch = replace(cfg, pipeline="scratch", pruning="", lr_schedule="",
                          **{k: v for k, v in setting.items() if k not in PRUNING_KNOBS})
        arms = {"arm": placed("_".join([cfg.pipeline] + changed), arm_cfg),
                "scratch": placed("_".join(["scratch"] + unpruned), scratch)}
        if ceiling:  # named by its width where that differs from cfg's F_e
            width = ip.ffn_sizes(arm_cfg)[1]
            arms["ceiling"] = placed("_".join(["ceiling"] + [f"F{width}"] * (width != F_e) + unpruned),
                                     replace(scratch, ffn_hidden=width))
        rows.append({"value": value, "runs": arms})
    return rows


def sweep_label(knobs, pipeline):
    """sweep_max_steps (integrated), sweep_max_steps_resumed, sweep_f1_f2: the name of a sweep's figure and table."""
    return "sweep_" + knobs.replace("/", "_") + ("" if pipeline == "integrated" else f"_{pipeline}")


def sweep_runs(cfg, spec, ceiling=False):
    """A sweep's knobs, its rows (sweep_arms) and its distinct runs {name: config} (a shared name is one run)."""
    knobs, values = parse_sweep(spec)
    rows = sweep_arms(cfg, knobs, values, ceiling)
    return knobs, rows, dict(run for row in rows for run in row["runs"].values())


def run_sweep(cfg, spec, ceiling=False, replot=False, overwrite=False):
    """--sweep KNOB=V1,...: train every distinct run once (finished ones are reused), then the figure and the
    table: final validation loss against the knob, scratch (and the ceiling) as references."""
    knobs, rows, unique = sweep_runs(cfg, spec, ceiling)
    if not replot:
        check_arms(unique.values(), overwrite)
    finals = {}
    for i, (name, sub) in enumerate(unique.items()):
        if not replot:
            print(f"\n==== sweep {'/'.join(knobs)}: {name} ({i + 1} of {len(unique)}) ====")
        records = run_arm(sub, overwrite, replot)
        if records is None:
            return None
        finals[name] = final_record(records)
    results = [{"value": row["value"], **{role: finals[name] for role, (name, _) in row["runs"].items()}}
               for row in rows]
    label = sweep_label("/".join(knobs), cfg.pipeline)
    path = plot_sweep(knobs, results, cfg.pipeline, os.path.join(cfg.plot_dir or cfg.out_dir, f"{label}.png"))
    write_table(cfg, label, sweep_table(knobs, results, cfg.pipeline), [path])
    return results


def benchmark(cfg, steps=20, rounds=3):
    """Median time of one optimization step: importance tracking off vs on (enlarged model; with --enlarge_attn,
    the FFN's alone and with the heads'), and a model compacted from F_e vs one built at F_t from scratch; with
    --compile, each also compiled. The variants alternate, so load drifts hit all alike."""
    ip.validate(cfg)
    ip.check_device(cfg)
    device, ctx = ip.setup_device(cfg)
    F_t, F_e = ip.ffn_sizes(cfg)
    H_e = [ip.head_sizes(cfg)[1]] * cfg.n_layer  # the enlarged model's heads
    x = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.block_size + 1), device=device)

    def setup(widths, heads=None, compact_to=None):  # heads per layer: n_head by default
        torch.manual_seed(cfg.seed)
        model = ip.GPT(cfg, widths, heads).to(device)
        opt = ip.make_optimizer(model, cfg, device)
        importance = {"ffn": [torch.zeros(3, w, device=device) for w in widths],
                      "attn": [torch.zeros(4, h, device=device) for h in model.heads]}
        if compact_to:  # one real step for AdamW state, then prune to F_t and compact: the integrated path
            step(model, opt, importance, ())
            alive = [torch.ones(w, dtype=torch.bool, device=device) for w in widths]
            ip.prune_(model, opt, [torch.rand(3, w, device=device) for w in widths], alive, compact_to, cfg)
            ip.compact_(model, opt, importance["ffn"], alive)
        return model, opt, importance

    def step(model, opt, importance, track):
        with ctx:
            loss = model(x[:, :-1], x[:, 1:])[1]
        loss.backward()
        for kind in track:  # the kinds whose importance is tracked
            ip.update_importance(importance[kind], model, cfg, kind)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    variants = {"enlarged, tracking off": (setup([F_e] * cfg.n_layer, H_e), ()),
                "enlarged, tracking on": (setup([F_e] * cfg.n_layer, H_e), ("ffn",)),
                "target, built at F_t": (setup([F_t] * cfg.n_layer), ()),
                "target, compacted from F_e": (setup([F_e] * cfg.n_layer, compact_to=F_t), ())}
    if "attn" in ip.unit_sizes(cfg):
        variants["enlarged, tracking FFN + heads"] = (setup([F_e] * cfg.n_layer, H_e), ("ffn", "attn"))
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
    if "attn" in ip.unit_sizes(cfg):
        print(f"tracking FFN + heads / FFN: {med['enlarged, tracking FFN + heads'] / med['enlarged, tracking on']:.3f}x")
    print(f"compacted / built:     {med['target, compacted from F_e'] / med['target, built at F_t']:.3f}x")
    if cfg.compile:
        for name in ("enlarged, tracking off", "target, built at F_t"):
            print(f"compiled / eager ({name.split(',')[0]}): {med[name + ', compiled'] / med[name]:.3f}x")
    return med


def main(argv=None):
    p = ip.arg_parser("The paper's figures from many ideaprune runs: --compare, --ablation, --sweep; --bench.")
    p.add_argument("--compare", action="store_true", help=f"run {', '.join(COMPARE)}; then figures and a table")
    p.add_argument("--ablation", action="store_true",
                   help=f"run {', '.join(ABLATION)}: one-shot prune, then the LR resumed vs rewarmed")
    p.add_argument("--sweep", metavar="KNOB=V1,V2,...", help="run --pipeline once per value of a knob, and scratch; "
                   "plot the final loss against it (knobs swept together: f1/f2=mean/max,max/max)")
    p.add_argument("--ceiling", action="store_true", help="with --sweep: also train the enlarged width throughout")
    p.add_argument("--replot", action="store_true", help="with --compare/--ablation/--sweep: only redraw from the logs")
    p.add_argument("--bench", action="store_true", help="time a step: importance tracking off/on, compacted/built")
    p.add_argument("--seeds", metavar="S1,S2,...", help="with --compare/--ablation/--sweep: all of it once per seed, "
                   "in out_dir/seed<S>; then the gaps paired by seed (mean, standard error) in *_seeds_results.md")
    p.add_argument("--budget", nargs="+", metavar="DIR", help="Figure 1 (left) against tokens per deployed parameter, "
                   "from the --sweep max_steps=... tables in these folders (one per seed; presets may differ)")
    p.add_argument("--along", metavar="RUN1,RUN2", help="with --seeds: each run minus its scratch along the run, split "
                   "into head start, window and recovery (along_<RUN1>.png in --plot_dir)")

    def body():
        cfg, args = ip.parse_args(argv, p)
        if args.bench:
            return benchmark(cfg)
        if args.budget:
            return budget(args.budget, cfg)
        if args.along:
            names, folders = args.along.split(","), [os.path.join(cfg.out_dir, f"seed{s}")
                                                     for s in parse_seeds(args.seeds or str(cfg.seed), None)]
            return along(folders, names, os.path.join(cfg.plot_dir or cfg.out_dir, f"along_{names[0]}.png"))
        suites = [(label, names) for label, names, on in (("compare", COMPARE, args.compare),
                                                           ("ablation", ABLATION, args.ablation)) if on]
        if not suites and not args.sweep:
            raise ip.ConfigError("say what to reproduce: --compare, --ablation, --sweep KNOB=V1,V2,..., --budget "
                                 "DIR... or --bench (one run is python ideaprune.py)")
        seeds = parse_seeds(args.seeds, args.sweep)
        per_seed = {s: replace(cfg, seed=s, out_dir=os.path.join(cfg.out_dir, f"seed{s}"),
                               plot_dir=cfg.plot_dir and os.path.join(cfg.plot_dir, f"seed{s}")) for s in seeds}
        per_seed = per_seed or {cfg.seed: cfg}
        if not args.replot:  # refuse bad knobs and used out_dirs, of every seed, before the first run starts
            for c in per_seed.values():
                for label, names in suites:
                    check_arms(suite_configs(c, names), args.overwrite)
                if args.sweep:
                    check_arms(sweep_runs(c, args.sweep, args.ceiling)[2].values(), args.overwrite)
        finals = {}  # label -> {seed: {run name: final record}}: what --seeds pairs
        for seed, c in per_seed.items():
            for label, names in suites:
                logs = run_suite(c, names, label, replot=args.replot, overwrite=args.overwrite)
                finals.setdefault(label, {})[seed] = {n: final_record(recs) for n, recs in logs.items()}
            if args.sweep:
                knobs = "/".join(parse_sweep(args.sweep)[0])
                results = run_sweep(c, args.sweep, ceiling=args.ceiling, replot=args.replot, overwrite=args.overwrite)
                finals.setdefault(sweep_label(knobs, cfg.pipeline), {})[seed] = {  # 'integrated at max_steps=700'
                    f"{cfg.pipeline if role == 'arm' else role} at {knobs}={'/'.join(map(str, r['value']))}": r[role]
                    for r in results or [] for role in ("arm", "scratch", "ceiling") if role in r}
        if seeds and (not dist.is_initialized() or dist.get_rank() == 0):
            for label, by_seed in finals.items():
                pairs, plot_dir = paired_with(label, list(by_seed[seeds[0]])), cfg.plot_dir or cfg.out_dir
                figure = plot_seeds(by_seed, pairs, os.path.join(plot_dir, f"{label}_seeds.png"))
                write_table(cfg, label + "_seeds", seeds_table(by_seed, pairs), [figure])
    ip.run_command(body)


def paired_with(label, names):
    """(run, whom it is compared with) for a --seeds table: its suite's reference (compare: scratch, ablation:
    rewarmed), or in a sweep scratch at the same value (None for the reference itself); in a sweep, also each
    value's arm against the first value's (names[0]): the knob's own effect, paired by seed."""
    ref = {name: REFERENCE[label] if label in REFERENCE else "scratch at " + name.split(" at ")[1] for name in names}
    pairs = [(name, None if name == r else r) for name, r in ref.items()]
    role = names[0].split(" at ")[0]  # the sweep's arm (its pipeline)
    return pairs + [(name, names[0]) for name in names[1:] if label not in REFERENCE and name.startswith(role + " at ")]


def parse_seeds(spec, sweep):
    """--seeds 1337,2,3 -> [1337, 2, 3] (distinct integers); [] when not given."""
    if spec is None:
        return []
    try:
        seeds = [int(s) for s in spec.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) < len(seeds):
        raise ip.ConfigError(f"--seeds {spec!r}: give distinct integers, e.g. --seeds 1337,2,3")
    if sweep and sweep.split("=")[0] == "seed":
        raise ip.ConfigError("--seeds repeats a whole command per seed, --sweep seed=... is one run per seed: use one")
    return seeds


if __name__ == "__main__":
    main()
