"""Measure what the gate changes: attention sinks, massive activations, gate sparsity, spikes.

    python analyze.py --checkpoints=out-gated/ckpt.pt,out-none/ckpt.pt
    python analyze.py --checkpoints=out-gated,out-none --layer=2 --fig_dir=figures --report=analysis.json

Prints one column per checkpoint, writes a JSON report and (with matplotlib)
figures. The metrics (sources in README, "See it yourself"):

- F-Attn (Qiu et al. 2025): attention probability on token 0, averaged over
  queries, then heads, then layers.
- Sink_1 (Gu et al. 2024): the percentage of (layer, head) pairs whose
  importance alpha_1 of the first token exceeds eps. Gu et al. number key
  positions from 1, so alpha_1 is about token index 0 here: the mean over
  queries t >= 0 of A[t, 0], averaged over the sequences.
- M-Act (Qiu et al.): the max |h| of each layer's output, averaged over
  layers; with the median |h| beside it, as Sun et al. 2024 compare them.
- Gate scores (Qiu et al.): mean, fraction below 0.1 and 0.01, first token
  against the rest; sparsity of the attention output (fraction below 1e-2 and
  1e-3).
- Spike score (OLMo 2): percentage of steps at least 7 standard deviations from
  the rolling mean of the previous window; `spike_score`, used by train.py.

Fractions are in [0, 1]; Sink_1 and spike scores are percentages.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# train.py imports this module for its evaluation-time statistics; both sides
# use a plain `import`, so the cycle resolves (nothing is used at import time).
import prepare_data
import pretrained
import train
from configurable import ConfigError, opt, parse_args, run_main

GATE_BINS = 50  # gate-score histogram on [0, 1]


# ---------------------------------------------------------------------------
# Loss and gradient spikes
# ---------------------------------------------------------------------------


def spike_score(values, window=100, threshold=7.0):
    """OLMo 2's spike score: the percentage of steps at least `threshold` standard
    deviations away from the mean of the `window` values before them.

    Only steps with a full window before them, whose window is not constant
    (no spread to measure by), can be judged; they are the denominator, and
    with none the score is 0. Non-finite values are dropped first: a divergence
    is recorded on its own (train.py stops and logs it), and a NaN would poison
    every window it falls in.
    """
    if window < 1 or not threshold > 0:
        raise ValueError(f"spike_score needs window >= 1 and threshold > 0, got {window} and {threshold}")
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) <= window:
        return 0.0
    before = np.lib.stride_tricks.sliding_window_view(x[:-1], window)  # row i: the window before x[window + i]
    rows = max(1, 2 ** 22 // window)  # chunks keep the temporaries of std() to ~32 MB
    spikes = judged = 0
    for start in range(0, len(before), rows):
        past, now = before[start:start + rows], x[window + start:window + start + rows]
        spread = past.max(axis=1) > past.min(axis=1)
        judged += int(spread.sum())
        spikes += int((spread & (np.abs(now - past.mean(axis=1)) >= threshold * past.std(axis=1))).sum())
    return 100.0 * spikes / judged if judged else 0.0


# ---------------------------------------------------------------------------
# The observer: statistics reduced layer by layer, batch by batch
# ---------------------------------------------------------------------------


def _add(acc, key, value):
    acc[key] = acc[key] + value if key in acc else value


class Stats:
    """An observer for `model(idx, observe=stats)` that reduces each tensor as it passes.

    Sums, counts and maxima are kept per layer (and head), so memory does not
    grow with the number of batches; only the attention map of `map_layer` is
    kept whole, as a running sum over sequences. `summary(eps)` turns them into
    the metrics.
    """

    def __init__(self, map_layer=None):
        self.map_layer = map_layer
        self.layers = {}  # layer index -> {name: running sum, count or maximum}
        self.overall = {}  # the attention map of map_layer and the gate-score histogram, summed

    def __call__(self, layer, name, tensor):
        measure = getattr(self, f"_{name}", None)  # what is not measured here is ignored
        if measure is not None:
            measure(self.layers.setdefault(layer, {}), layer, tensor.detach().float())

    def _attn_probs(self, acc, layer, probs):  # (B, H, T, T)
        B, _, T, _ = probs.shape
        # Every query t >= 0 sees token 0, so alpha_1 is A[:, :, :, 0] averaged
        # over all queries (and sequences): per head, the same number as F-Attn.
        _add(acc, "first_token_attn", probs[..., 0].sum((0, 2)).double().cpu())
        _add(acc, "queries", B * T)
        if layer == self.map_layer:
            shape = self.overall["map_sum"].shape if "map_sum" in self.overall else probs.shape[1:]
            if shape != probs.shape[1:]:
                raise ValueError(f"attention maps of shape {tuple(probs.shape[1:])} cannot be averaged "
                                 f"with {tuple(shape)}: use one sequence length")
            _add(self.overall, "map_sum", probs.sum(0).double().cpu())
            _add(self.overall, "map_count", B)

    def _attn_logits(self, acc, layer, logits):  # (B, H, T, T), -inf where masked
        head_max = logits.amax((0, 2, 3)).double().cpu()
        acc["max_attn_logit"] = torch.maximum(acc.get("max_attn_logit", head_max), head_max)

    def _hidden(self, acc, layer, hidden):  # (B, T, C), the residual stream after the block
        magnitude = hidden.abs()
        top = int(magnitude.argmax())
        peak = magnitude.flatten()[top].item()
        if peak > acc.get("m_act", -1.0):
            _, position, channel = np.unravel_index(top, magnitude.shape)
            acc.update(m_act=peak, m_act_position=int(position), m_act_channel=int(channel))
        # One batch's median stands in for the median over all batches.
        _add(acc, "median_sum", magnitude.median().item())
        _add(acc, "median_batches", 1)

    def _gate(self, acc, layer, gate):
        # (B, T, H, D) or (B, T, H, 1); (B, T, 1, D) or (B, T, 1, 1) when shared by
        # the heads; (B, T, C) after the output projection (G5): one "head" there.
        B, T = gate.shape[:2]
        by_head = gate.reshape(B, T, gate.size(2) if gate.dim() == 4 else 1, -1)
        _add(acc, "gate_sum", by_head.sum((0, 1, 3)).double().cpu())
        _add(acc, "gate_n", gate.numel())
        _add(acc, "gate_first_sum", gate[:, 0].sum().item())
        _add(acc, "gate_first_n", gate[:, 0].numel())
        # A score near zero shuts the output whatever its sign (SiLU gates dip below 0).
        magnitude = gate.abs()
        _add(acc, "gate_below_0.1", (magnitude < 0.1).sum().item())
        _add(acc, "gate_below_0.01", (magnitude < 0.01).sum().item())
        _add(self.overall, "gate_hist", torch.histc(gate.clamp(0, 1), GATE_BINS, 0, 1).double().cpu())

    def _attn_output(self, acc, layer, output):  # (B, T, C), after the G1 gate, before c_proj
        magnitude = output.abs()
        _add(acc, "attn_output_below_1e-2", (magnitude < 1e-2).sum().item())
        _add(acc, "attn_output_below_1e-3", (magnitude < 1e-3).sum().item())
        _add(acc, "attn_output_n", output.numel())

    def summary(self, eps=0.3):
        """The metrics as plain data: scalars over the model, and "per_layer" lists (per head inside)."""
        if not self.layers:
            raise ValueError("nothing was observed: run the model with observe=stats first")
        accs = [self.layers[layer] for layer in sorted(self.layers)]
        summary, per_layer = {}, {}
        for scalars, lists in (_attention_summary(accs, eps), _logit_summary(accs), _activation_summary(accs),
                               _gate_summary(accs), _output_summary(accs)):
            summary.update(scalars)
            per_layer.update(lists)
        summary["per_layer"] = per_layer
        hist = self.overall.get("gate_hist")
        summary["gate_hist"] = None if hist is None else (hist / hist.sum()).tolist()
        if "map_sum" in self.overall:
            attn_map = self.overall["map_sum"] / self.overall["map_count"]
            summary["attn_map"] = {"layer": self.map_layer, "per_head": attn_map.tolist()}
        return summary


def _observed(accs, key):
    return all(key in acc for acc in accs)


def _attention_summary(accs, eps):
    if not _observed(accs, "first_token_attn"):
        return dict(f_attn=None, sink_1=None), dict(first_token_attn=None)
    alpha = np.stack([acc["first_token_attn"].numpy() / acc["queries"] for acc in accs])  # (layers, heads)
    return (dict(f_attn=float(alpha.mean(1).mean()), sink_1=float(100 * (alpha > eps).mean())),
            dict(first_token_attn=alpha.tolist()))


def _logit_summary(accs):
    if not _observed(accs, "max_attn_logit"):
        return dict(max_attn_logit=None), dict(max_attn_logit=None)
    logits = np.stack([acc["max_attn_logit"].numpy() for acc in accs])  # (layers, heads)
    return dict(max_attn_logit=float(logits.max())), dict(max_attn_logit=logits.tolist())


def _activation_summary(accs):
    keys = ("m_act", "median_abs", "m_act_ratio", "m_act_position", "m_act_channel")
    if not _observed(accs, "m_act"):
        return dict(m_act=None, m_act_ratio=None), dict.fromkeys(keys)
    peak = [acc["m_act"] for acc in accs]
    median = [acc["median_sum"] / acc["median_batches"] for acc in accs]
    ratio = [p / m if m > 0 else math.inf for p, m in zip(peak, median)]
    return (dict(m_act=float(np.mean(peak)), m_act_ratio=max(ratio)),
            dict(zip(keys, (peak, median, ratio, [acc["m_act_position"] for acc in accs],
                            [acc["m_act_channel"] for acc in accs]))))


def _gate_summary(accs):
    keys = ("mean_gate", "gate_below_0.1", "gate_below_0.01", "gate_first_token", "gate_other_tokens")
    if not _observed(accs, "gate_n"):
        return dict.fromkeys(keys), dict.fromkeys(keys + ("gate_per_head",))
    per_layer = {
        "mean_gate": [acc["gate_sum"].sum().item() / acc["gate_n"] for acc in accs],
        "gate_below_0.1": [acc["gate_below_0.1"] / acc["gate_n"] for acc in accs],
        "gate_below_0.01": [acc["gate_below_0.01"] / acc["gate_n"] for acc in accs],
        "gate_first_token": [acc["gate_first_sum"] / acc["gate_first_n"] for acc in accs],
        "gate_other_tokens": [(acc["gate_sum"].sum().item() - acc["gate_first_sum"])
                              / max(1, acc["gate_n"] - acc["gate_first_n"]) for acc in accs],
    }
    # Every layer has as many scores, so means over layers are means over all scores.
    summary = {key: float(np.mean(values)) for key, values in per_layer.items()}
    per_layer["gate_per_head"] = [(acc["gate_sum"] * len(acc["gate_sum"]) / acc["gate_n"]).tolist() for acc in accs]
    return summary, per_layer


def _output_summary(accs):
    keys = ("attn_output_below_1e-2", "attn_output_below_1e-3")
    if not _observed(accs, "attn_output_n"):
        return dict.fromkeys(keys), dict.fromkeys(keys)
    per_layer = {key: [acc[key] / acc["attn_output_n"] for acc in accs] for key in keys}
    return {key: float(np.mean(values)) for key, values in per_layer.items()}, per_layer


# ---------------------------------------------------------------------------
# Running a model
# ---------------------------------------------------------------------------


@torch.no_grad()
def observe(model, batches, stats):
    """Run `model` in eval mode over (x, y) batches (y may be None) with `stats`
    watching every layer; returns the mean loss, or None without targets.

    The observer makes the model take its explicit attention path, which has
    no randomness in eval mode: no random state is touched.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        _, loss = model(x, y, observe=stats)
        if loss is not None:
            total, count = total + loss.item() * len(x), count + len(x)
    model.train(was_training)
    return total / count if count else None


def model_stats(model, idx_batches, eps=0.3, layer=None):
    """The summary of `Stats` over an iterable of (B, T) token tensors.

    `layer`, when given, also keeps that layer's attention map averaged over
    the sequences (key "attn_map").
    """
    stats = Stats(layer)
    observe(model, ((idx, None) for idx in idx_batches), stats)
    return stats.summary(eps)


def eval_record(model, idx, losses, grad_norms, spike_window):
    """The numbers train.py adds to each evaluation: sinks, activations and gate on
    one fixed batch, and the spike scores of the steps so far."""
    stats = model_stats(model, [idx])
    record = {key: stats[key] for key in ("f_attn", "sink_1", "m_act", "mean_gate", "max_attn_logit")}
    record["loss_spike_score"] = spike_score(losses, spike_window)
    record["grad_spike_score"] = spike_score(grad_norms, spike_window)
    return record


def eval_line(record):
    """The evaluation record's sink, activation and gate numbers, for the training log."""
    gate = "" if record["mean_gate"] is None else f", mean gate {record['mean_gate']:.3f}"
    return f"F-Attn {record['f_attn']:.3f}, Sink_1 {record['sink_1']:.0f}%, M-Act {record['m_act']:.2f}{gate}"


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


def sequences(folder, split, num_sequences, seq_len, batch_size, runtime, seed):
    """`num_sequences` fixed windows of `seq_len` tokens and their targets, in batches."""
    windows = train.Batches(folder, seq_len, batch_size, runtime, seed)
    pairs = windows.eval_set(split, math.ceil(num_sequences / batch_size))
    x, y = (torch.cat(parts)[:num_sequences] for parts in zip(*pairs))
    return list(zip(x.split(batch_size), y.split(batch_size)))


def analyze_checkpoint(path, split="val", num_sequences=64, seq_len=64, eps=0.3, batch_size=16,
                       device="cpu", seed=0, layer=None, data=""):
    """`model_stats` of a checkpoint (or nanoGPT's, or GPT-2's weights: see pretrained.load_model)
    on sequences from `data`, a prepared dataset folder ('': the checkpoint's own), plus the loss
    on them (key f"{split}_loss"), "params", "step" and the stored "config"."""
    check_settings(split, num_sequences, seq_len, batch_size, eps)
    runtime = train.setup_runtime(device, "float32")
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
        pretrained.check_dataset_fits(tokenizer, model, prepare_data.load_meta(folder), folder)
    elif info["kind"] == "gated-gpt":
        folder = prepare_data.dataset_dir(config["data_dir"], config["dataset"])
    else:
        raise ConfigError(f"{path} comes with no dataset of this project: give --data=FOLDER, a dataset "
                          "prepared by prepare_data.py with the model's tokenizer")
    stats = Stats(layer)
    loss = observe(model, sequences(folder, split, num_sequences, seq_len, batch_size, runtime, seed), stats)
    return {f"{split}_loss": loss, "params": model.num_params(), "step": info["step"], "config": config,
            **stats.summary(eps)}


# ---------------------------------------------------------------------------
# Table, report and figures
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


def format_table(results, split="val"):
    """One column per checkpoint, one row per metric."""
    rows = [(f"{split} loss", f"{split}_loss", lambda v: f"{v:.4f}"), *TABLE_ROWS]
    header = ["", *results]
    lines = [header] + [[label, *(_cell(r, key, fmt) for r in results.values())] for label, key, fmt in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(line, widths))) for line in lines)


def write_report(path, settings, results):
    """The JSON report: the settings and every number per checkpoint (attention maps are drawn, not stored)."""
    models = {name: {k: v for k, v in r.items() if k != "attn_map"} for name, r in results.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "models": models}, indent=1))


def new_figure(width, height):
    """A matplotlib Figure drawn off-screen (no pyplot state), or None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def has_matplotlib():
    """Whether figures can be drawn; if not, says how to get them."""
    if new_figure(1, 1) is None:
        print("figures skipped: pip install matplotlib")
        return False
    return True


def plot_figures(results, fig_dir, layer):
    """Heatmaps of first-token attention, M-Act per layer, gate histograms and the
    attention map of `layer`; returns the files written (none without matplotlib)."""
    if not has_matplotlib():
        return []
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    names = list(results)
    figures = {"first_token_attention.png": _plot_sinks, "massive_activations.png": _plot_activations,
               "gate_scores.png": _plot_gates, f"attention_map_layer{layer}.png": _plot_maps}
    written = []
    for filename, draw in figures.items():
        fig = new_figure(4 + 3 * len(names), 4)
        if draw(fig, names, results):
            fig.savefig(fig_dir / filename, dpi=120)
            written.append(fig_dir / filename)
    return written


def _plot_sinks(fig, names, results):
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        r = results[name]
        alpha = np.array(r["per_layer"]["first_token_attn"])  # (layers, heads)
        image = ax.imshow(alpha, vmin=0, vmax=1, aspect="auto")
        ax.set(title=f"{name}\nF-Attn {r['f_attn']:.2f}, Sink_1 {r['sink_1']:.0f}%", xlabel="head", ylabel="layer",
               xticks=range(alpha.shape[1]), yticks=range(alpha.shape[0]))
    fig.colorbar(image, ax=list(axes), label="attention on token 0 (alpha_1)")
    return True


def _plot_activations(fig, names, results):
    ax = fig.subplots()
    for name in names:
        peak = results[name]["per_layer"]["m_act"]
        ax.plot(range(len(peak)), peak, marker="o", label=name)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(yscale="log", xlabel="layer", ylabel="max |h| (M-Act)", title="massive activations")
    ax.legend()
    return True


def _plot_gates(fig, names, results):
    gated = [name for name in names if results[name]["gate_hist"] is not None]
    if not gated:
        return False
    ax = fig.subplots()
    for name in gated:
        ax.stairs(results[name]["gate_hist"], np.linspace(0, 1, GATE_BINS + 1), label=name)
    ax.set(xlabel="gate score (outside [0, 1] counted in the end bins)", ylabel="fraction of scores",
           title="gate scores, all layers")
    ax.legend()
    return True


def _plot_maps(fig, names, results):
    names = [name for name in names if "attn_map" in results[name]]
    if not names:
        return False
    maps = [np.array(results[name]["attn_map"]["per_head"]) for name in names]
    heads = max(m.shape[0] for m in maps)
    fig.set_size_inches(2.2 * heads + 1, 2.2 * len(names) + 0.5)
    axes = fig.subplots(len(names), heads, squeeze=False)
    for row, (name, per_head) in enumerate(zip(names, maps)):
        for head in range(heads):
            ax = axes[row][head]
            ax.set_axis_off()
            if head < len(per_head):
                # The square root spreads out the small probabilities next to a sink.
                image = ax.imshow(np.sqrt(per_head[head]), vmin=0, vmax=1)
                ax.set_title(f"{name}\nhead {head}" if head == 0 else f"head {head}", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="sqrt(attention probability)")
    fig.suptitle(f"layer {results[names[0]]['attn_map']['layer']}, mean over sequences")
    return True


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
    report: str = opt("analysis.json", "JSON report to write ('' for none)")
    fig_dir: str = opt("figures", "folder for the figures ('' for none)")
    device: str = opt("cpu", "auto | cpu | cuda | cuda:N | mps")
    seed: int = opt(0, "seed for choosing the sequences")

    def __post_init__(self):
        check_settings(self.split, self.num_sequences, self.seq_len, self.batch_size, self.eps)
        if not self.checkpoint_paths():
            raise ConfigError("no checkpoints: give --checkpoints=out-a/ckpt.pt,out-b/ckpt.pt")

    def checkpoint_paths(self):
        paths = [Path(p.strip()) for p in self.checkpoints.split(",") if p.strip()]
        return [p / "ckpt.pt" if (p / "ckpt.pt").is_file() else p for p in paths]


def main(argv=None):
    """Analyse every checkpoint; returns {checkpoint: results}."""
    (cfg,) = parse_args([AnalyzeConfig], argv, prog="analyze.py", description=__doc__)
    results = {str(path): analyze_checkpoint(path, cfg.split, cfg.num_sequences, cfg.seq_len, cfg.eps,
                                             cfg.batch_size, cfg.device, cfg.seed, cfg.layer, cfg.data)
               for path in cfg.checkpoint_paths()}
    print(format_table(results, cfg.split))
    if cfg.report:
        settings = {k: getattr(cfg, k) for k in ("split", "num_sequences", "seq_len", "eps", "seed")}
        write_report(cfg.report, settings, results)
        print(f"report: {cfg.report}")
    if cfg.fig_dir:
        for path in plot_figures(results, cfg.fig_dir, cfg.layer):
            print(f"figure: {path}")
    return results


if __name__ == "__main__":
    run_main(main)
