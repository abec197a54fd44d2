"""Look inside checkpoints: attention sinks, massive activations, gate sparsity, and
whether a model relies on its sink or its gate.

    python -m lab.analyze --checkpoints=out-gated/ckpt.pt,out-none/ckpt.pt
    python -m lab.analyze --checkpoints=out-gated,out-none --layer=2 --fig_dir=figures --report=analysis.json

Prints one column per checkpoint, writes a JSON report and (with matplotlib)
figures, by default under runs/analyze/. The measurements and their sources are
in metrics.py and the figures in plots.py; this file loads checkpoints and sequences.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lab import metrics
from lab import plots
import prepare_data
from lab import pretrained
import train
from configurable import ConfigError, opt, parse_args, run_main


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def check_settings(split, num_sequences, seq_len, batch_size, eps):
    if split not in ("train", "val"):
        raise ConfigError(f"bad value {split!r} for 'split': choose train or val")
    if min(num_sequences, seq_len, batch_size) < 1:
        raise ConfigError("num_sequences, seq_len and batch_size must be at least 1")
    if not 0.0 <= eps < 1.0:
        raise ConfigError(f"eps={eps} must be in [0, 1): it is a threshold on attention probabilities")


def sequences(folder, split, num_sequences, seq_len, batch_size, runtime, seed, bos_token=None):
    """`num_sequences` fixed windows of `seq_len` tokens and their targets, in batches;
    with `bos_token`, windows that start at a BOS (as train.py's with bos_aligned)."""
    windows = train.Batches(folder, seq_len, batch_size, runtime, seed, bos_token)
    pairs = windows.eval_set(split, math.ceil(num_sequences / batch_size))
    x, y = (torch.cat(parts)[:num_sequences] for parts in zip(*pairs))
    return list(zip(x.split(batch_size), y.split(batch_size)))


def analyze_checkpoint(path, split="val", num_sequences=64, seq_len=64, eps=0.3, batch_size=16,
                       device="cpu", seed=0, layer=None, data="", threads=0):
    """`metrics.model_stats` of a checkpoint (or nanoGPT's, or GPT-2's weights: see
    pretrained.load_model) on sequences from `data`, a prepared dataset folder ('': the
    checkpoint's own; windows start at a BOS if the run trained so), plus the loss on them (key
    f"{split}_loss"), the functional tests' loss changes, "params", "step" and the stored "config".
    Measured in float32 on `device`, with `threads` CPU threads (0: PyTorch's choice)."""
    check_settings(split, num_sequences, seq_len, batch_size, eps)
    runtime = train.setup_runtime(device, "float32", threads)
    model, tokenizer, info = pretrained.load_model(path, runtime.device)
    block_size, n_layer = model.config.block_size, model.config.n_layer
    if seq_len > block_size:
        raise ConfigError(f"seq_len={seq_len} is longer than the block_size={block_size} of {path}: "
                          f"use --seq_len={block_size} or less")
    if layer is not None and not 0 <= layer < n_layer:
        raise ConfigError(f"layer={layer} is not a layer of {path}, which has {n_layer}: use 0 to {n_layer - 1}")
    config = info["config"]
    if data:
        folder = Path(data)
        meta = prepare_data.load_meta(folder)
        pretrained.check_dataset_fits(tokenizer, model, meta, folder)
    elif info["kind"] == "gated-gpt":
        folder, meta = prepare_data.dataset_dir(config["data_dir"], config["dataset"]), info["meta"]
    else:
        raise ConfigError(f"{path} comes with no dataset of this project: give --data=FOLDER, a dataset "
                          "prepared by prepare_data.py with the model's tokenizer")
    kinds = metrics.token_kinds(meta)
    bos = kinds["bos_token"] if config.get("bos_aligned") else None
    batches = sequences(folder, split, num_sequences, seq_len, batch_size, runtime, seed, bos)
    stats = metrics.Stats(layer, **kinds)
    loss = metrics.observe(model, batches, stats)
    return {f"{split}_loss": loss, "params": model.num_params(), "step": info["step"], "config": config,
            **stats.summary(eps), **metrics.functional_tests(model, batches, runtime)}


# ---------------------------------------------------------------------------
# Table and report
# ---------------------------------------------------------------------------


def _percent(value):
    return f"{100 * value:.1f}%"


TABLE_ROWS = [  # (label, key, format)
    ("params", "params", lambda v: f"{v / 1e6:.2f}M"),
    ("step", "step", str),
    ("F-Attn", "f_attn", lambda v: f"{v:.3f}"),
    ("Sink_1 %", "sink_1", lambda v: f"{v:.1f}"),
    ("M-Act", "m_act", lambda v: f"{v:.2f}"),
    ("max/median |h|", "m_act_ratio", lambda v: f"{v:.1f}"),
    ("max attn logit", "max_attn_logit", lambda v: f"{v:.2f}"),
    ("mean gate", "mean_gate", lambda v: f"{v:.3f}"),
    ("gate < 0.1", "gate_below_0.1", _percent),
    ("gate < 0.01", "gate_below_0.01", _percent),
    ("gate first / rest", None, None),
    ("|attn out| < 1e-2", "attn_output_below_1e-2", _percent),
    ("|attn out| < 1e-3", "attn_output_below_1e-3", _percent),
]


def _cell(result, key, fmt):
    if key is None:  # the gate on token 0 against the other tokens
        first, rest = result["gate_first_token"], result["gate_other_tokens"]
        return "-" if first is None else f"{first:.3f} / {rest:.3f}"
    return "-" if result[key] is None else fmt(result[key])


def _layer_mean(per_layer, layer):
    """The mean over heads of one layer's entry (a number, or a list per head), or None."""
    if per_layer is None or per_layer[layer] is None:
        return None
    return float(np.mean(per_layer[layer]))


def _pair_cell(result, first_key, second_key, layer, digits):
    pair = [_layer_mean(result["per_layer"].get(key), layer) for key in (first_key, second_key)]
    return "-" if None in pair else f"{pair[0]:.{digits}f} / {pair[1]:.{digits}f}"


# (label, first key, second key, digits): per layer, means over heads.
SINK_ROWS = [
    ("BOS attn dormant / active", "bos_attn_dormant", "bos_attn_active", 2),
    ("gate dormant / active", "gate_dormant", "gate_active", 2),
    ("value norm BOS / other", "value_norm_bos", "value_norm_other", 2),
    ("residual norm BOS / other", "resid_norm_bos", "resid_norm_other", 2),
]


def sink_rows(results):
    """(label, cells) rows of the BOS and query-class statistics, per layer, and the
    functional tests' loss changes; rows without a number in any column are left out."""
    layers = max(len(r["per_layer"]["m_act"]) for r in results.values())
    rows = [(f"{label}, layer {layer}", [_pair_cell(r, a, b, layer, digits) if layer < len(r["per_layer"]["m_act"])
                                         else "-" for r in results.values()])
            for label, a, b, digits in SINK_ROWS for layer in range(layers)]
    aligned = all(r["config"].get("bos_aligned") for r in results.values())
    for label, key in ((f"loss change, {'BOS' if aligned else 'token 0'} key masked", "loss_first_key_masked_change"),
                       ("loss change, gates forced open", "loss_gates_open_change")):
        rows.append((label, ["-" if r.get(key) is None else f"{r[key]:+.4f}" for r in results.values()]))
    return [(label, cells) for label, cells in rows if any(cell != "-" for cell in cells)]


def format_table(results, split="val", num_sequences=64):
    """One column per checkpoint, one row per metric."""
    rows = [(f"{split} loss (these {num_sequences} sequences)", f"{split}_loss", lambda v: f"{v:.4f}"), *TABLE_ROWS]
    header = ["", *results]
    lines = [header] + [[label, *(_cell(r, key, fmt) for r in results.values())] for label, key, fmt in rows]
    lines += [[label, *cells] for label, cells in sink_rows(results)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(line, widths))) for line in lines)


def write_report(path, settings, results):
    """The JSON report: the settings and every number per checkpoint (attention maps are drawn, not stored)."""
    models = {name: {k: v for k, v in r.items() if k != "attn_map"} for name, r in results.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "models": models}, indent=1))




# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


@dataclass
class AnalyzeConfig:
    checkpoints: str = opt("", "comma-separated ckpt.pt files or run folders (this project's or nanoGPT's), "
                           "gpt2 | gpt2-medium | gpt2-large | gpt2-xl, or folders of Hugging Face GPT-2 files")
    data: str = opt("", "prepared dataset folder to measure on ('': each checkpoint's own; nanoGPT and "
                    "GPT-2 need one prepared with their tokenizer)")
    split: str = opt("val", "data split the sequences come from: train | val")
    num_sequences: int = opt(64, "sequences to measure on")
    seq_len: int = opt(64, "tokens per sequence (Gu et al. use 64; at most the model's block_size)")
    batch_size: int = opt(16, "sequences per forward pass")
    eps: float = opt(0.3, "Sink_1 threshold on alpha_1 (Gu et al.: 0.3)")
    layer: int = opt(0, "layer whose attention map is averaged and drawn")
    report: str = opt("runs/analyze/analysis.json", "JSON report to write ('' for none)")
    fig_dir: str = opt("runs/analyze/figures", "folder for the figures ('' for none)")
    device: str = opt("cpu", "auto | cpu | cuda | cuda:N | mps")
    threads: int = opt(0, "CPU threads for PyTorch (0: PyTorch's choice; 1 on a busy machine); the "
                          "measurements are in float32 whatever the device")
    seed: int = opt(0, "seed for choosing the sequences")

    def __post_init__(self):
        check_settings(self.split, self.num_sequences, self.seq_len, self.batch_size, self.eps)
        train.check_runtime_settings(self.device, "float32", self.threads)
        if not self.checkpoint_paths():
            raise ConfigError("no checkpoints: give --checkpoints=out-a/ckpt.pt,out-b/ckpt.pt")

    def checkpoint_paths(self):
        paths = [Path(p.strip()) for p in self.checkpoints.split(",") if p.strip()]
        return [p / "ckpt.pt" if (p / "ckpt.pt").is_file() else p for p in paths]


def main(argv=None):
    """Analyse every checkpoint; returns {checkpoint: results}."""
    (cfg,) = parse_args([AnalyzeConfig], argv, prog="-m lab.analyze", description=__doc__)
    results = {str(path): analyze_checkpoint(path, cfg.split, cfg.num_sequences, cfg.seq_len, cfg.eps,
                                             cfg.batch_size, cfg.device, cfg.seed, cfg.layer, cfg.data, cfg.threads)
               for path in cfg.checkpoint_paths()}
    print(format_table(results, cfg.split, cfg.num_sequences))
    if cfg.report:
        settings = {k: getattr(cfg, k) for k in ("split", "num_sequences", "seq_len", "eps", "seed")}
        write_report(cfg.report, settings, results)
        print(f"report: {cfg.report}")
    if cfg.fig_dir:
        for path in plots.plot_figures(results, cfg.fig_dir, cfg.layer):
            print(f"figure: {path}")
    return results


if __name__ == "__main__":
    run_main(main)
