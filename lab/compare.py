"""Train gated and ungated GPTs side by side and compare what the gate changes.

    python -m lab.compare                                        # none vs elementwise on the default data (CPU recipe)
    python -m lab.compare --variants=none,elementwise,headwise,qk_norm
    python -m lab.compare --variants=none,value,output,shared    # the paper's ablations, by name
    python -m lab.compare --max_iters=500 --n_layer=6            # any train.py key applies to every variant
    python -m lab.compare --config=configs/compare_gpu.toml      # one GPU: nanoGPT's GPU Shakespeare recipe
    python -m lab.compare --fresh                                # retrain instead of reusing finished runs

Every variant trains with the same seed (so the same initial draws and data
order), budget and hyperparameters, in its own folder out_dir/VARIANT. A
finished run with the same settings is reused and an interrupted one resumed,
so running the command again only redoes the table and figures; --fresh
retrains. Then one table, side by side (printed, and written to
out_dir/compare.md and compare.json), and figures (with matplotlib):
out_dir/loss.png (loss and gradient-norm curves), out_dir/layers.png
(first-token attention, M-Act and mean gate per layer), out_dir/emergence.png
(F-Attn over training and, on a dataset with query classes such as backcopy,
BOS attention and gate per class) and out_dir/bos_classes.png (BOS attention
and gate per query class, value and residual norms at BOS against the rest).

    python -m lab.compare --config=configs/sink_cpu.toml         # see the sink: Bigram-Backcopy, a few CPU minutes
"""

import time
from dataclasses import dataclass
from pathlib import Path

from lab import analyze, plots, runs
import prepare_data
from configurable import opt, parse_args, run_main
from model import GPTConfig
from train import TrainConfig

ANALYSIS_SEQUENCES = 64  # val sequences for analyze.py's statistics of each final checkpoint


def run_results(run_dir, settings):
    """Training stats plus analyze.py's sink, activation and gate statistics of the final checkpoint.

    Sinks are measured on sequences of Gu et al.'s T = 64 tokens (fewer if the
    context is shorter), since Sink_1 falls as T grows (Gu et al. 2024).
    """
    stats = analyze.analyze_checkpoint(Path(run_dir) / "ckpt.pt", "val", ANALYSIS_SEQUENCES,
                                       min(64, settings["block_size"]), device=settings["device"],
                                       threads=settings["threads"])
    del stats["val_loss"]  # on the analysis sequences; the table reports train.py's evaluation instead
    stats.update(runs.training_stats(runs.read_metrics(run_dir), settings["spike_window"]))
    return stats


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


TABLE_ROWS = [  # (label, key, format); what each means is in the README, "See it yourself"
    ("final val loss", "final_val_loss", "{:.4f}"),
    ("loss spike score (%)", "loss_spike_score", "{:.2f}"),
    ("grad spike score (%)", "grad_spike_score", "{:.2f}"),
    ("max grad norm", "max_grad_norm", "{:.3g}"),
    ("F-Attn (attention on token 0)", "f_attn", "{:.3f}"),
    ("Sink_1 (% heads, eps 0.3)", "sink_1", "{:.1f}"),
    ("M-Act (max abs activation)", "m_act", "{:.2f}"),
    ("max / median activation", "m_act_ratio", "{:.1f}"),
    ("max attention logit", "max_attn_logit", "{:.2f}"),
    ("mean gate", "mean_gate", "{:.3f}"),
    ("tokens/s", "tokens_per_s", "{:,.0f}"),
    ("parameters", "params", "{:,}"),
]


def format_table(results):
    """A markdown table, one column per variant and one row per metric."""
    names = list(results)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, fmt in TABLE_ROWS:
        cells = ["-" if results[name].get(key) is None else fmt.format(results[name][key]) for name in names]
        if key == "final_val_loss":
            cells = [f"diverged at step {results[n]['diverged_at']}" if results[n]["diverged_at"] is not None
                     else cell for n, cell in zip(names, cells)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in analyze.sink_rows(results)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Notes for the table
# ---------------------------------------------------------------------------


def analysis_note(settings):
    start = " starting at a BOS" if settings["bos_aligned"] else ""
    return (f"F-Attn, Sink_1, M-Act, attention logit, gate and the loss changes on {ANALYSIS_SEQUENCES} val "
            f"sequences of {min(64, settings['block_size'])} tokens{start}")




# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


@dataclass
class CompareConfig:
    variants: str = opt("none,elementwise", "comma-separated variants, each trained the same way (listed above)")
    out_dir: str = opt("runs/compare", "folder for one run folder per variant, the table and the figures")
    fresh: bool = opt(False, "retrain every variant instead of reusing finished runs (each old run is replaced "
                             "once every setting has been checked)")


def write_outputs(out_dir, shared, results, description):
    """compare.md (the table and its settings) and compare.json (every number)."""
    table = f"{format_table(results)}\n\n{description}; {analysis_note(shared)}"
    (out_dir / "compare.md").write_text(f"{table}\n")
    analyze.write_report(out_dir / "compare.json", {**shared, "resolved": runs.resolved_runtime(shared)}, results)
    return table


def main(argv=None):
    """Train (or reuse) each variant, then print the table and write it and the figures; returns the results."""
    cmp_cfg, model_cfg, train_cfg = parse_args([CompareConfig, GPTConfig, TrainConfig], argv, prog="-m lab.compare",
                                               description=f"{__doc__}\n{runs.variants_help()}")
    shared = runs.shared_settings(model_cfg, train_cfg)
    variants = {name: runs.run_settings(shared, name) for name in runs.parse_variants(cmp_cfg.variants)}
    runs.check_runs(variants.values())
    with prepare_data.hold(cmp_cfg.out_dir):
        return compare_runs(variants, shared, Path(cmp_cfg.out_dir), cmp_cfg.fresh)


def compare_runs(variants, shared, out_dir, fresh):
    """Train (or reuse) each run in out_dir/VARIANT, then print the table and write it and the figures."""
    runs.print_settings(shared, list(variants))
    for name, settings in variants.items():
        start = time.perf_counter()
        how = runs.run_variant(settings, out_dir / name, fresh)
        print(f"{name}: {how} in {out_dir / name} ({time.perf_counter() - start:.0f} s)", flush=True)
    results = {name: run_results(out_dir / name, settings) for name, settings in variants.items()}
    title = runs.describe_settings(shared)
    table = write_outputs(out_dir, shared, results, title)
    print(f"\n{table}\ntable: {out_dir / 'compare.md'}, {out_dir / 'compare.json'}")
    if plots.has_matplotlib():
        metrics = {name: runs.read_metrics(out_dir / name) for name in variants}
        figures = [plots.plot_losses(out_dir / "loss.png", metrics, title),
                   plots.plot_layers(out_dir / "layers.png", results, min(64, shared["block_size"]), title),
                   plots.plot_emergence(out_dir / "emergence.png", metrics, title),
                   plots.plot_bos_classes(out_dir / "bos_classes.png", results, title)]
        print(f"figures: {', '.join(str(path) for path in figures if path is not None)}")
    return results


if __name__ == "__main__":
    run_main(main)
