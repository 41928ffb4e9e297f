"""
Checkpoints of earlier ideaprune versions, converted in memory to the current layout when ideaprune.py reads them
(its read_checkpoint imports this file only for such a checkpoint; the file on disk stays as it was). A converted
checkpoint loads, evaluates, samples, exports and resumes like a new one.

Version 1 pruned FFN neurons only. Versions 1 and 2 named no tokenizer, and held W_q, W_k, W_v as one matrix,
attn.qkv (q's rows, then k's, then v's), and W_o as attn.proj: their weights and AdamW moments are split in three
and AdamW's Parameters renumbered.
"""


def split(name, t):
    """An entry of the fused layout (a weight or an AdamW moment) -> [(name, tensor)] of the current one."""
    if ".attn.qkv." not in name:
        return [(name.replace(".attn.proj.", ".attn.o."), t)]
    return [(name.replace(".qkv.", f".{n}."), c.clone()) for n, c in zip("qkv", t.chunk(3))]


def upgrade(ckpt, version_now):
    """ckpt (a dict of an older version) in layout version_now, in place."""
    version, cfg, model, opt = ckpt.get("version", 1), ckpt["config"], ckpt["model"], ckpt["optimizer"]
    if version == 1:
        ckpt.update(heads=[cfg["n_head"]] * cfg["n_layer"], importance={"ffn": ckpt["importance"]},
                    alive={"ffn": ckpt["alive"]})
    if version <= 2:
        cfg["tokenizer"] = "bytes" if cfg["vocab_size"] == 256 else "gpt2"  # by the vocabulary, as the presets set it
        print(f"note: a version-{version} checkpoint names no tokenizer: its vocabulary of {cfg['vocab_size']} is "
              f"read as {cfg['tokenizer']}")
        params = [n for n in model if n != "lm_head.weight"]  # the Parameters (the tied matrix once), in AdamW's
        params = sorted(params, key=lambda n: model[n].dim() == 1)  # numbering: matrices first, then gains
        numbers, state = [], {}  # numbers[i]: the new numbers of old Parameter i
        for i, name in enumerate(params):
            first, old = sum(map(len, numbers)), opt["state"].get(i)
            numbers.append(range(first, first + len(split(name, model[name]))))
            for j, n in enumerate(numbers[i] if old else ()):
                state[n] = {m: s.clone() if m == "step" else split(name, s)[j][1] for m, s in old.items()}
        opt["state"] = state
        for group in opt["param_groups"]:
            group["params"] = [n for i in group["params"] for n in numbers[i]]
        ckpt["model"] = dict(pair for name, t in model.items() for pair in split(name, t))
    ckpt["version"] = version_now
