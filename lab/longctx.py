"""Longer than trained: RoPE context extension and attention sinks, measured on checkpoints.

    python -m lab.longctx --config=configs/longctx_cpu.toml         # the whole study: train, then evaluate
    python -m lab.longctx --checkpoints=out-gated,out-plain         # evaluate existing RoPE runs only
    python -m lab.longctx --checkpoints=out --multiples=1,2,4 --methods=none,yarn --num_windows=256

Without --checkpoints it first trains --variants x --seeds as lab.compare does
(any train.py key applies to every run; finished runs are reused), each in
out_dir/VARIANT-seedN. Nothing is trained for the evaluation itself:

- Context extension. For each method (none, pi, ntk, dynamic_ntk, yarn; the
  model's rope_scaling and rope_factor) set up for the longest length, s =
  the largest multiple, the val loss on windows of 1x, 2x, 4x, 8x the trained
  context (the same val windows, cut to each length), and the loss at each
  position of the longest windows. As in the paper's Table 5, one extended
  model is scored at every length, the trained one included.
- Attention sinks (Xiao et al. 2023). Texts of stream_len tokens are read one
  token at a time with a KV cache that keeps only a window of the last tokens,
  once with the first sink_tokens tokens kept in the window and once without;
  the loss at each position, against full attention.

It prints the tables and writes them to out_dir/longctx.md, every number to
out_dir/longctx.json, and figures (with matplotlib) to out_dir.
"""

import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lab import analyze, runs
from lab import metrics
from lab import plots
import prepare_data
import train
from configurable import ConfigError, opt, parse_args, pick, run_main, to_dict
from model import ROPE_SCALINGS, GPTConfig, KVCache, rope_frequencies
from train import TrainConfig


# ---------------------------------------------------------------------------
# Data: the same val windows at every length
# ---------------------------------------------------------------------------


def val_windows(ckpt, length, num_windows, runtime):
    """(x, y) of `num_windows` val windows of `length` tokens, evenly spaced over the split
    (overlapping when it is too short to hold them side by side), and whether they overlap.
    Runs trained BOS-aligned are evaluated as they were trained: every window starts at a BOS."""
    config = ckpt["config"]
    folder = prepare_data.dataset_dir(config["data_dir"], config["dataset"])
    meta = prepare_data.load_meta(folder)  # says so when the data is missing
    bos = meta.get("bos_token") if config.get("bos_aligned") else None
    try:
        windows = train.Batches(folder, length, 1, runtime, seed=0, bos_token=bos)
    except ConfigError:
        raise ConfigError(f"the dataset {folder} is shorter than the longest evaluation, {length} tokens"
                          f"{' after a BOS' if bos is not None else ''}: use smaller --multiples") from None
    if bos is None:
        starts = torch.linspace(0, len(windows.data["val"]) - length - 1, num_windows).long()
    else:
        allowed = windows.starts["val"]
        starts = allowed[torch.linspace(0, len(allowed) - 1, num_windows).round().long()]
    overlap = bool((starts.diff() < length + 1).any())
    x, y = windows.windows("val", starts)
    return x, y, overlap


# ---------------------------------------------------------------------------
# Context extension: loss per length and per position, for each method
# ---------------------------------------------------------------------------


def scaled(method, factor):
    """The model settings of a method set up for `factor` x the trained context."""
    return {"rope_scaling": method, "rope_factor": 1.0 if method == "none" else float(factor)}


@torch.no_grad()
def position_losses(model, x, y, batch_size, runtime):
    """Mean loss over the windows at each position, (T,) as a float64 numpy array."""
    total = torch.zeros(x.size(1), dtype=torch.float64, device=x.device)
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        with runtime.autocast():
            logits, _ = model(xb)
        loss = F.cross_entropy(logits.float().transpose(1, 2), yb, reduction="none")  # (B, T)
        total += loss.double().sum(0)
    return (total / x.size(0)).cpu().numpy()


def extension_results(ckpt, x, y, cfg, runtime):
    """{method: {"loss": {multiple: val loss}, "per_position": [...] at the longest}}."""
    block = ckpt["config"]["block_size"]
    multiples, longest = cfg.multiple_list(), max(cfg.multiple_list())
    out = {}
    for method in cfg.method_list():
        factor = cfg.dynamic_factor if method == "dynamic_ntk" and cfg.dynamic_factor else longest
        model = train.model_from_checkpoint(ckpt, runtime.device, **scaled(method, factor))
        losses = {m: position_losses(model, x[:, :m * block], y[:, :m * block], cfg.batch_size, runtime)
                  for m in multiples}
        out[method] = {"loss": {m: float(v.mean()) for m, v in losses.items()},
                       "per_position": losses[longest].tolist()}
    return out


def yarn_regimes(ckpt):
    """How YaRN's ramp treats this model's frequencies: kept, interpolated as in PI or blended
    (the same at any factor), and each frequency's rotations in the trained context."""
    config = pick(GPTConfig, {**ckpt["config"], **scaled("none", 1)})
    theta = rope_frequencies(config, config.block_size).double()
    yarn = rope_frequencies(pick(GPTConfig, {**ckpt["config"], **scaled("yarn", 2)}), config.block_size).double()
    keep = (2 * yarn / theta - 1).tolist()  # yarn = theta / 2 * (1 - keep) + theta * keep at factor 2
    rotations = (config.block_size * theta / (2 * math.pi)).tolist()
    return {"kept": sum(k > 1 - 1e-6 for k in keep), "interpolated": sum(k < 1e-6 for k in keep),
            "blended": sum(1e-6 <= k <= 1 - 1e-6 for k in keep), "keep": keep, "rotations": rotations}


# ---------------------------------------------------------------------------
# Attention sinks: a sliding window over the KV cache, with and without the first tokens
# ---------------------------------------------------------------------------


class WindowCache(KVCache):
    """A KV cache whose attention sees only the first `sinks` tokens and the last `window - sinks`
    (StreamingLLM's cache, Xiao et al. 2023; sinks=0 is plain window attention). Keys keep the
    positions they were rotated at when they entered the cache."""

    def __init__(self, config, capacity, window, sinks):
        super().__init__(config, capacity)
        self.window, self.sinks = window, sinks

    def update(self, layer, k, v):
        k, v = super().update(layer, k, v)
        end = k.size(2)
        if end <= self.window:
            return k, v
        keep = torch.cat([torch.arange(self.sinks), torch.arange(end - self.window + self.sinks, end)])
        keep = keep.to(k.device)
        return k[:, :, keep], v[:, :, keep]


@torch.no_grad()
def streamed_losses(model, x, y, window, sinks, batch_size, runtime):
    """Loss at each position (mean over texts) when the texts are read one token at a time
    through a WindowCache of `window` tokens keeping `sinks` first tokens."""
    total = torch.zeros(x.size(1), dtype=torch.float64, device=x.device)
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        cache = WindowCache(model.config, xb.size(1), window, sinks)
        for t in range(xb.size(1)):
            with runtime.autocast():
                logits, _ = model(xb[:, t:t + 1], cache=cache)
            total[t] += F.cross_entropy(logits[:, -1].float(), yb[:, t], reduction="sum").double()
    return (total / x.size(0)).cpu().numpy()


def sink_window(cfg, block):
    """The sink test's text length and window for a model of context `block`, checked."""
    length, window = cfg.stream_len or block, cfg.window or max(1, block // 4)
    if not cfg.sink_tokens < window < length:
        raise ConfigError(f"the sink test needs sink_tokens ({cfg.sink_tokens}) < window ({window}) < "
                          f"stream_len ({length}): change --window, --sink_tokens or --stream_len")
    return length, window


def sink_results(ckpt, x, y, cfg, runtime):
    """Per-position loss with full attention, a window without sinks and a window with them."""
    length, window = sink_window(cfg, ckpt["config"]["block_size"])
    model = train.model_from_checkpoint(ckpt, runtime.device)
    x, y = x[:, :length], y[:, :length]
    curves = {"full attention": position_losses(model, x, y, cfg.batch_size, runtime),
              "window": streamed_losses(model, x, y, window, 0, cfg.batch_size, runtime),
              f"window + {cfg.sink_tokens} sinks": streamed_losses(model, x, y, window, cfg.sink_tokens,
                                                                   cfg.batch_size, runtime)}
    # Whether there is a sink to keep: attention on the first token with full attention (analyze.py).
    stats = metrics.model_stats(model, x.split(cfg.batch_size))
    # The conditions differ only once the first tokens have left the window.
    return {"window": window, "sinks": cfg.sink_tokens, "length": length,
            "f_attn": stats["f_attn"], "sink_1": stats["sink_1"],
            "loss_after_window": {name: float(c[window:].mean()) for name, c in curves.items()},
            "per_position": {name: c.tolist() for name, c in curves.items()}}


def evaluate_checkpoint(path, cfg, runtime):
    """Every number of one checkpoint: context extension, YaRN's regimes and the sink test."""
    ckpt = train.load_checkpoint(path, runtime.device)
    block = ckpt["config"]["block_size"]
    if ckpt["config"].get("pos_emb") != "rope":
        raise ConfigError(f"{path} has learned positions, which stop at block_size={block}: "
                          "train it with pos_emb=rope to evaluate it past its context")
    longest = block * max(cfg.multiple_list())
    x, y, overlap = val_windows(ckpt, max(longest, cfg.stream_len), cfg.num_windows, runtime)
    return {"block_size": block, "step": ckpt["step"], "windows": x.size(0), "window_tokens": longest,
            "windows_overlap": overlap, "windows_at_bos": bool(ckpt["config"].get("bos_aligned")), "extension": extension_results(ckpt, x, y, cfg, runtime),
            "yarn_regimes": yarn_regimes(ckpt), "sinks": sink_results(ckpt, x, y, cfg, runtime)}


# ---------------------------------------------------------------------------
# Runs: the checkpoints given, or variants x seeds trained as lab.compare trains them
# ---------------------------------------------------------------------------


def training_runs(cfg, model_cfg, train_cfg):
    """{run folder: settings} for each variant and seed, checked, before anything is trained."""
    if model_cfg.pos_emb != "rope":
        raise ConfigError("context extension needs RoPE: add --pos_emb=rope (configs/longctx_cpu.toml sets it)")
    sink_window(cfg, model_cfg.block_size)
    shared = runs.shared_settings(model_cfg, train_cfg)
    planned = {}
    for name in runs.parse_variants(cfg.variants):
        for seed in range(train_cfg.seed, train_cfg.seed + cfg.seeds):
            planned[Path(cfg.out_dir) / f"{name}-seed{seed}"] = {**runs.run_settings(shared, name), "seed": seed}
    return planned


def checkpoint_paths(cfg, model_cfg, train_cfg):
    """The checkpoints to evaluate, training them first when none are given."""
    if cfg.checkpoints:
        changed = {k for k, v in to_dict(model_cfg, train_cfg).items() if v != to_dict(GPTConfig(), TrainConfig())[k]}
        if changed - {"device", "threads", "out_dir"}:  # the runtime keys apply to the evaluation too
            raise ConfigError("training settings have no effect with --checkpoints: drop them, or drop "
                              "--checkpoints to train the runs first")
        paths = [Path(p.strip()) for p in cfg.checkpoints.split(",") if p.strip()]
        return [p if p.suffix == ".pt" else p / "ckpt.pt" for p in paths]
    planned = training_runs(cfg, model_cfg, train_cfg)
    runs.check_runs(planned.values())
    for run_dir, settings in planned.items():
        start = time.perf_counter()
        how = runs.run_variant(settings, run_dir, cfg.fresh)
        print(f"{run_dir}: {how} ({time.perf_counter() - start:.0f} s)", flush=True)
    return [run_dir / "ckpt.pt" for run_dir in planned]


def model_name(path):
    """A checkpoint's name in the tables: its run folder, with a -seedN suffix dropped (seeds pool)."""
    folder = path.parent.name if path.name == "ckpt.pt" else path.stem
    return re.sub(r"-seed\d+$", "", folder)


def pooled(results):
    """{model: [result of each of its seeds]}, in first-seen order."""
    groups = {}
    for path, result in results.items():
        groups.setdefault(model_name(Path(path)), []).append(result)
    return groups


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def spread(values, fmt="{:.3f}"):
    """'mean' for one value; 'mean ± sd' over seeds."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.replace('+', '').format(statistics.stdev(values))}"


def extension_table(groups, cfg):
    block = next(iter(groups.values()))[0]["block_size"]
    multiples = cfg.multiple_list()
    lines = ["| scaling | model | " + " | ".join(f"{m}x ({m * block})" for m in multiples) + " |",
             "|---|---|" + "---:|" * len(multiples)]
    for method in cfg.method_list():
        for name, group in groups.items():
            cells = [spread([r["extension"][method]["loss"][m] for r in group]) for m in multiples]
            lines.append(f"| {method} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling_cost_table(groups, cfg):
    """What each method costs at the trained length: its 1x loss minus the unscaled model's, per seed."""
    methods = [m for m in cfg.method_list() if m != "none"]
    lines = ["| model | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for name, group in groups.items():
        base = [r["extension"]["none"]["loss"][1] for r in group]
        cells = [spread([r["extension"][m]["loss"][1] - b for r, b in zip(group, base)], "{:+.3f}") for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sink_table(groups):
    first = next(iter(groups.values()))[0]["sinks"]
    names = list(first["loss_after_window"])
    lines = ["| model | F-Attn | Sink_1 (%) | " + " | ".join(names) + " |", "|---|---:|---:|" + "---:|" * len(names)]
    for name, group in groups.items():
        cells = [spread([r["sinks"][key] for r in group], fmt) for key, fmt in (("f_attn", "{:.3f}"),
                                                                               ("sink_1", "{:.1f}"))]
        cells += [spread([r["sinks"]["loss_after_window"][n] for r in group]) for n in names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(groups, cfg):
    """What the numbers are measured on, in words."""
    r = next(iter(groups.values()))[0]
    s, yarn = r["sinks"], r["yarn_regimes"]
    seeds = ", ".join(f"{name} {len(group)}" for name, group in groups.items())
    pooling = (f"mean ± sd over seeds ({seeds})" if any(len(group) > 1 for group in groups.values())
               else "one checkpoint per model")
    dynamic = f" (dynamic_ntk with factor {cfg.dynamic_factor:g})" if cfg.dynamic_factor else ""
    return (f"Val loss on {r['windows']} val windows of {r['window_tokens']} tokens"
            f"{', each starting at a BOS token' if r.get('windows_at_bos') else ''}"
            f"{' (overlapping: the split is short)' if r['windows_overlap'] else ''}, cut to each length; "
            f"every method set up for {max(cfg.multiple_list())}x{dynamic}; {pooling}. "
            f"YaRN's ramp on the {len(yarn['rotations'])} RoPE frequencies at a trained length of "
            f"{r['block_size']}: {yarn['kept']} kept, {yarn['blended']} blended, {yarn['interpolated']} "
            f"interpolated as in PI. "
            f"Sinks: F-Attn and Sink_1 (analyze.py) with full attention, and the loss at positions "
            f"{s['window']}-{s['length'] - 1} of texts of {s['length']} tokens read with a window of {s['window']} "
            f"tokens, with and without the first {s['sinks']} kept.")


def report(groups, cfg):
    """The tables and what they are measured on, as markdown."""
    parts = [f"Val loss by evaluated length:\n\n{extension_table(groups, cfg)}"]
    if "none" in cfg.method_list() and 1 in cfg.multiple_list():
        parts.append(f"Change of the loss at the trained length, against no scaling:\n\n"
                     f"{scaling_cost_table(groups, cfg)}")
    parts.append(f"Attention sinks, and the loss once the window slides:\n\n{sink_table(groups)}")
    parts.append(describe(groups, cfg))
    return "\n\n".join(parts)




# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


@dataclass
class LongCtxConfig:
    checkpoints: str = opt("", "run folders or ckpt.pt files to evaluate, comma-separated (empty: train "
                               "--variants x --seeds first)")
    variants: str = opt("none,elementwise", "without --checkpoints: lab.compare's variants to train")
    seeds: int = opt(3, "without --checkpoints: seeds per variant (seed, seed + 1, ...)")
    out_dir: str = opt("runs/longctx", "folder for the runs, the tables and the figures")
    fresh: bool = opt(False, "retrain every run instead of reusing finished ones")
    multiples: str = opt("1,2,4,8", "evaluated lengths, in multiples of the trained context")
    methods: str = opt(",".join(ROPE_SCALINGS), "context-extension methods to compare (model rope_scaling values)")
    dynamic_factor: float = opt(0.0, "dynamic_ntk's rope_factor s (0: the longest multiple, as for the other "
                                     "methods; 1: the NTK scale is n / L at length n)")
    num_windows: int = opt(64, "val windows (the same at every length)")
    batch_size: int = opt(16, "windows per forward pass")
    window: int = opt(0, "sink test: tokens the sliding window keeps (0: a quarter of block_size)")
    sink_tokens: int = opt(4, "sink test: first tokens kept in the window (Xiao et al. keep 4)")
    stream_len: int = opt(0, "sink test: tokens per text (0: block_size, where every distance was trained)")

    def __post_init__(self):
        if min(self.seeds, self.num_windows, self.batch_size) < 1 or min(self.window, self.sink_tokens,
                                                                            self.stream_len) < 0:
            raise ConfigError("seeds, num_windows and batch_size must be at least 1; window, sink_tokens "
                              "and stream_len not negative")
        if 0 < self.dynamic_factor < 1 or self.dynamic_factor < 0:
            raise ConfigError(f"dynamic_factor={self.dynamic_factor} must be 0 (the longest multiple) or at least 1")
        self.multiple_list()
        self.method_list()

    def multiple_list(self):
        try:
            multiples = sorted({int(m) for m in self.multiples.split(",") if m.strip()})
        except ValueError:
            multiples = []
        if not multiples or multiples[0] < 1:
            raise ConfigError(f"bad value {self.multiples!r} for 'multiples': give whole numbers, e.g. 1,2,4,8")
        return multiples

    def method_list(self):
        methods = list(dict.fromkeys(m.strip() for m in self.methods.split(",") if m.strip()))
        bad = [m for m in methods if m not in ROPE_SCALINGS] or ([] if methods else [""])
        if bad:
            raise ConfigError(f"bad method {bad[0]!r} in 'methods': choose from {', '.join(ROPE_SCALINGS)}")
        return methods


def main(argv=None):
    """Train the runs if asked, evaluate every checkpoint, write the tables and figures; returns the results."""
    cfg, model_cfg, train_cfg = parse_args([LongCtxConfig, GPTConfig, TrainConfig], argv, prog="-m lab.longctx",
                                           description=__doc__)
    paths = checkpoint_paths(cfg, model_cfg, train_cfg)
    runtime = train.setup_runtime(train_cfg.device, "float32", train_cfg.threads)
    start = time.perf_counter()
    results = {str(path): evaluate_checkpoint(path, cfg, runtime) for path in paths}
    print(f"evaluated {len(paths)} checkpoint(s) in {time.perf_counter() - start:.0f} s")
    groups = pooled(results)
    text = report(groups, cfg)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "longctx.md").write_text(text + "\n")
    analyze.write_report(out_dir / "longctx.json", to_dict(cfg), results)
    print(f"\n{text}\ntables: {out_dir / 'longctx.md'}, {out_dir / 'longctx.json'}")
    if plots.has_matplotlib():
        extension = plots.plot_extension(out_dir / "extension.png", groups, cfg.multiple_list(), cfg.method_list())
        print(f"figures: {extension}, {plots.plot_sinks(out_dir / 'sinks.png', groups)}")
    return results


if __name__ == "__main__":
    run_main(main)
