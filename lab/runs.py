"""Training runs as the lab makes them: variants by name, the settings every run shares, training (or
reusing, or resuming) one run in its folder, and reading back what it recorded. lab.compare, lab.sweep
and lab.longctx train through here."""

import json
import statistics
from pathlib import Path

from lab import backcopy, plots
from lab.metrics import eval_hook, spike_score
import prepare_data
import train
from configurable import ConfigError, format_settings, pick, to_dict
from model import GPTConfig
from train import TrainConfig

# ---------------------------------------------------------------------------
# Variants: a name -> the model keys it changes (paper, Sec. 3.1 and Tables 1, 4)
# ---------------------------------------------------------------------------

VARIANT_KEYS = ("gate", "gate_position", "gate_activation", "gate_mode", "gate_heads", "gate_input", "qk_norm")

VARIANTS = {
    "none": ({"gate": "none"}, "a plain GPT, no gate"),
    "elementwise": ({"gate": "elementwise"}, "G1: after SDPA, one score per head and channel (the paper's best)"),
    "headwise": ({"gate": "headwise"}, "G1: one score per head"),
    "qk_norm": ({"qk_norm": True}, "LayerNorm on q and k, the usual high-LR fix (Wortsman et al. 2023); "
                                   "no gate unless combined"),
    "value": ({"gate_position": "value"}, "G2: gate the value projection"),
    "key": ({"gate_position": "key"}, "G3: gate the key projection"),
    "query": ({"gate_position": "query"}, "G4: gate the query projection"),
    "output": ({"gate_position": "output"}, "G5: gate after the output projection"),
    "shared": ({"gate_heads": "shared"}, "one set of scores shared by all heads"),
    "additive": ({"gate_mode": "additive", "gate_activation": "silu"}, "Y + silu(XW) instead of Y * sigmoid(XW)"),
    "silu": ({"gate_activation": "silu"}, "SiLU instead of sigmoid"),
    "ns_sigmoid": ({"gate_activation": "ns_sigmoid"}, "0.5 + 0.5 sigmoid: gates in [0.5, 1], no sparsity"),
    "independent": ({"gate_input": "independent"}, "a learned constant per head and channel, not computed from X"),
}


def variants_help():
    lines = ["Variants (--variants=a,b,...; join names with + to combine them, e.g. headwise+value;",
             "an ablation name alone means the elementwise gate with that change, as in the paper's Table 1):"]
    lines += [f"  {name:<12} {text}" for name, (_, text) in VARIANTS.items()]
    return "\n".join(lines)


def variant_settings(name):
    """Every gate key of a variant: a plain GPT's values, changed by each '+'-joined name."""
    changes = {}
    for part in name.split("+"):
        if part not in VARIANTS:
            raise ConfigError(f"unknown variant '{part}': choose from {', '.join(VARIANTS)} (join with +)")
        for key, value in VARIANTS[part][0].items():
            if changes.get(key, value) != value:
                raise ConfigError(f"variant '{name}': '{part}' sets {key}={value}, "
                                  f"but another part sets {key}={changes[key]}")
            changes[key] = value
    if "gate" not in changes and set(changes) - {"qk_norm"}:
        changes["gate"] = "elementwise"  # an ablation name gates G1's elementwise default
    defaults = {key: GPTConfig.__dataclass_fields__[key].default for key in VARIANT_KEYS}
    return {**defaults, "gate": "none", **changes}


def parse_variants(text):
    """The listed variant names, in order, once each; each is checked."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise ConfigError(f"no variants: give e.g. --variants=none,elementwise\n{variants_help()}")
    for name in names:
        variant_settings(name)
    return names


def shared_settings(model_cfg, train_cfg):
    """The flat train.py settings every variant shares; the variant adds its gate keys and its folder."""
    settings = to_dict(model_cfg, train_cfg)
    changed = [key for key in VARIANT_KEYS if settings[key] != GPTConfig.__dataclass_fields__[key].default]
    if changed:
        raise ConfigError(f"'{changed[0]}' is set by each variant: choose variants with --variants "
                          f"(e.g. --variants=none,headwise+qk_norm), not --{changed[0]}")
    if train_cfg.resume:
        raise ConfigError("runs are resumed automatically when they are unfinished: drop --resume")
    del settings["out_dir"], settings["resume"]
    return settings


def run_settings(shared, name):
    """The full train.py settings of one variant, checked (e.g. none+value is refused, with its reason)."""
    settings = {**shared, **variant_settings(name)}
    try:
        pick(GPTConfig, settings)
    except ConfigError as e:
        raise ConfigError(f"variant '{name}': {e}") from None
    return settings


def check_runs(runs):
    """Check each run's settings against this machine and the data (train.prepare_run; the Bigram-Backcopy
    dataset is generated on first use, as train.py prepares the built-in ones), so that a
    bad setting stops everything before any run starts and before anything is deleted."""
    for settings in runs:
        folder = prepare_data.dataset_dir(settings["data_dir"], settings["dataset"])
        if settings["dataset"] == "backcopy" and not prepare_data.is_prepared(folder):  # the lab's dataset
            backcopy.prepare(backcopy.BackcopyConfig(data_dir=settings["data_dir"]))
        train.prepare_run(pick(GPTConfig, settings), pick(TrainConfig, settings))


def print_settings(shared, names):
    """The settings every run shares, printed once (the runs themselves train quietly)."""
    common = {key: value for key, value in shared.items() if key not in VARIANT_KEYS}
    print(f"variants: {', '.join(names)}; settings of every run:\n{format_settings(common)}", flush=True)


# ---------------------------------------------------------------------------
# Runs: train, resume or reuse, through train.train
# ---------------------------------------------------------------------------

# Keys that do not change what a run computes, so a finished run is reused whatever they are.
IGNORED_KEYS = ("progress", "log_interval", "compile", "threads", "out_dir", "resume")


def settings_differ(settings, stored):
    """'key: stored -> wanted' for each setting that differs from a checkpoint's stored config.

    A key the checkpoint lacks (added to train.py since) counts as its default.
    """
    defaults = to_dict(GPTConfig(), TrainConfig())
    return [f"{key}: {stored.get(key, defaults.get(key))!r} -> {value!r}" for key, value in settings.items()
            if key not in IGNORED_KEYS and not (key == "vocab_size" and value == 0)
            and stored.get(key, defaults.get(key)) != value]


def run_variant(settings, run_dir, fresh=False):
    """Train one run into run_dir through train.train; returns "trained", "resumed" or "reused".

    A checkpoint with the same settings is reused when the run finished (or
    diverged) and resumed when it was interrupted, bit for bit on CPU (train.py).
    A checkpoint with other settings stops with a message rather than being
    overwritten; fresh=True trains again, and train.train replaces the old run
    only once it has checked every setting.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "ckpt.pt"
    settings = {**settings, "out_dir": str(run_dir)}
    how = "trained"
    if ckpt_path.exists() and not fresh:
        ckpt = train.load_checkpoint(ckpt_path)
        differ = settings_differ(settings, ckpt["config"])
        if differ:
            raise ConfigError(f"{run_dir} holds a run with other settings ({'; '.join(differ[:3])}): "
                              "pass --fresh to retrain it, or choose another --out_dir")
        if ckpt["step"] >= settings["max_iters"] or read_metrics(run_dir)["diverged"]:
            return "reused"
        settings["resume"], how = True, "resumed"
    train.train(pick(GPTConfig, settings), pick(TrainConfig, settings), on_eval=eval_hook(settings["spike_window"]),
                replace=fresh, quiet=True)
    return how


def json_lines(path):
    """The records of a JSON Lines file the runs wrote (metrics.jsonl, results.jsonl); none if it is missing.
    A line that is not JSON is one line of error; a last line cut short by a kill is left out."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except (ValueError, RecursionError):
            if number < len(lines):
                raise ConfigError(f"{path} line {number} is not a JSON record: it was changed by hand or damaged; "
                                  "move the file away to start that history again") from None
    return records


def read_metrics(run_dir):
    """metrics.jsonl as {"steps": [...], "evals": [...], "diverged": record or None}, in step order.

    train.py keeps one history per file (a resume drops the records after its checkpoint); for
    files written otherwise, a step recorded twice counts once (the later record), and a
    divergence counts only if nothing was recorded after it (the run was not resumed past it).
    """
    steps, evals, diverged = {}, {}, None
    for record in json_lines(Path(run_dir) / "metrics.jsonl"):
        if record.get("diverged"):
            diverged = record
        elif "val_loss" in record:
            evals[record["step"]] = record
        elif "loss" in record:
            steps[record["step"]] = record
    if diverged is not None and max([*steps, *evals], default=-1) > diverged["step"]:
        diverged = None
    return {"steps": [steps[s] for s in sorted(steps)], "evals": [evals[s] for s in sorted(evals)],
            "diverged": diverged}


def training_stats(metrics, spike_window):
    """Loss, spike and speed numbers of one run, from its metrics."""
    steps, evals = metrics["steps"], metrics["evals"]
    losses, norms = [r["loss"] for r in steps], [r["grad_norm"] for r in steps]
    logits = [(r["step"], r["max_attn_logit"]) for r in evals if r.get("max_attn_logit") is not None]
    return {
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        # The eval at step 0 measures the loss at initialisation (the same for every learning rate).
        "init_val_loss": evals[0]["val_loss"] if evals and evals[0]["step"] == 0 else None,
        "best_val_loss": min((r["val_loss"] for r in evals), default=None),
        "steps": len(steps),
        "diverged_at": metrics["diverged"]["step"] if metrics["diverged"] else None,
        # OLMo 2's spike scores, with the window the run used.
        "loss_spike_score": spike_score(losses, spike_window),
        "grad_spike_score": spike_score(norms, spike_window),
        "max_grad_norm": max(norms, default=None),
        "max_attn_logit_curve": logits,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps) if steps else None,
    }


def resolved_runtime(settings):
    """What device, dtype and compile=auto become on this machine (train.py decides), for the record."""
    runtime = train.setup_runtime(settings["device"], settings["dtype"])
    compiled = train.should_compile(pick(TrainConfig, settings), runtime)
    resolved = {"device": str(runtime.device), "dtype": str(runtime.dtype).removeprefix("torch."),
                "compile": str(compiled).lower()}
    return {key: value if settings[key] == value else f"{settings[key]}: {value}" for key, value in resolved.items()}


def describe_settings(settings, lr_text=None):
    """One line with what the runs shared; `lr_text` replaces the learning-rate part."""
    s = {**settings, **resolved_runtime(settings)}
    tokens = s["max_iters"] * s["batch_size"] * s["block_size"] * s["grad_accum_steps"]
    lr_text = lr_text or f"lr {s['learning_rate']:g} (cosine to {s['min_lr']:g})"
    return (f"dataset {s['dataset']}, {plots.plural(s['n_layer'], 'layer')} x {s['n_embd']} wide, "
            f"{plots.plural(s['n_head'], 'head')}, context {s['block_size']}, batch {s['batch_size']}x"
            f"{s['grad_accum_steps']}, {plots.plural(s['max_iters'], 'step')} "
            f"({tokens / 1e6:.2f}M tokens), {lr_text}, warm-up {s['warmup_iters']}, weight decay "
            f"{s['weight_decay']:g}, grad clip {s['grad_clip']:g}, dropout {s['dropout']:g}, seed {s['seed']}, "
            f"device {s['device']}, dtype {s['dtype']}, compile {s['compile']}"
            + (f", optimizer {s['optimizer']}" if s.get("optimizer", "adamw") != "adamw" else ""))
