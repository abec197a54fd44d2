"""Measure training and generation speed, comparing variants side by side.

    python -m lab.bench                  # CPU: 6 layers, 6 heads, 384 dim, context 256, batch 16
                                         # CUDA: GPT-2 124M, context 1024 (--preset=gpt2)
    python -m lab.bench --preset=tiny    # nanoGPT's CPU recipe: 4 layers, 4 heads, 128 dim, context 64, batch 12
    python -m lab.bench --config=configs/tinyshakespeare_cpu.toml    # the shape and batch of any training preset
    python -m lab.bench --variants=none,headwise,elementwise --tables=gate
    python -m lab.bench --config=configs/speedrun_muon_cpu.toml --tables=optimizer   # AdamW and Muon step costs
    python -m lab.bench --speedrun       # the CPU speedrun presets (AdamW, Muon) against nanoGPT's fp32 eager recipe
    python -m lab.bench --prepare        # prepare_data.py on a generated 1 GB corpus against tiktoken's own speed

Training is timed on train.py's own step (train.train_step: forward, backward,
gradient clipping, the optimizers' steps) with batches drawn by train.Batches from the prepared
dataset (a synthetic one when it is missing). Every variant is built first and
warmed up (compiled, if it compiles); then the timed repeats go round-robin,
one repeat of each variant in turn, so that drift of the machine (other jobs,
clock changes) hits all of them alike. Times are medians over the rounds;
ratios are medians of the ratios within each round.

GPU check (GPT-2 124M, context 1024, bf16, compiled, flash attention; the
target is an MFU of at least 45% on H100/H200-class GPUs):

    python -m lab.bench --preset=gpt2 --tables=train --paths=default

Data preparation (--prepare): a JSON Lines corpus of --prepare_mb MB (records of 4 to 40 random
speeches of the plays) is generated, then tiktoken's encode_ordinary_batch (one thread per core)
encodes the first --prepare_reference_mb MB of it, half before and half after `prepare_data.py
--documents=record` prepares the whole corpus with the same BPE in a subprocess (gpt2 when it
loads, else a byte-level BPE trained on the plays). It reports MB of text per second of wall time
and per CPU-second for both, and the peak resident memory of prepare_data.py and its workers.

Tables:
  train     the default path (dtype=auto, compile=auto, as train.py picks them
            for this device) against plain fp32 eager, and the steps between;
            a compiled path is torch.compile of the whole model, as in train.py
  gate      the cost of the gate: none, headwise, elementwise on the default path
  optimizer the optimizer step's share of the training step, for each of
            --optimizers (adamw; muon: torch.optim.Muon on the blocks'
            matrices, whose Newton-Schulz iteration costs the same at any
            batch size): the optimizer.step calls are timed apart from
            forward, backward and clipping, on the default path
  generate  tokens/s sampling with and without the KV cache, within the
            context and far past it (the window jumps by block_size/4 and the
            cache is re-filled)
MFU is the model's training FLOPs (6N + attention) per second over the
device's peak for that precision: a data-sheet table for GPUs, a measured
1024x1024 matmul on CPUs. Peak memory: torch.cuda.max_memory_allocated on CUDA;
on CPU the process's peak resident set size (VmHWM, reset before each
measurement where Linux allows, after handing freed memory back with
malloc_trim). Each variant's peak is counted from just before it is built, so
the variants built before it do not count; "+step" is what one training step
adds on top of what is resident (activations, gradients, temporaries).
"""

import base64
import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import prepare_data
from lab.runs import json_lines
from lab.corpus import split_blocks
from lab.plots import plural
import train
from configurable import ConfigError, opt, parse_args, run_main
from model import CHOICES, GPTConfig

ROOT = Path(__file__).resolve().parents[1]  # the repository: train.py, prepare_data.py, configs/

# Model shape and batch of each preset; keys given on the command line override them.
PRESETS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=16),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=32, vocab_size=50304),
}
NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# train.py keys that do not change how fast a step runs: accepted, so that any training preset
# loads with --config, and ignored.
IGNORED_KEYS = ("out_dir", "resume", "max_iters", "min_lr", "warmup_iters", "lr_decay_iters", "eval_interval",
                "eval_iters", "log_interval", "spike_window", "progress")


@dataclass
class BenchConfig:
    preset: str = opt("auto", "model shape and batch: tiny | medium | gpt2 | none (auto: gpt2 on CUDA, else medium)")
    tables: str = opt("train,gate,optimizer,generate", "which tables to measure, comma-separated: train, gate, "
                                                        "optimizer, generate")
    paths: str = opt("float32/false,bfloat16/false,float32/true,default",
                     "dtype/compile pairs of the train table, the first the reference; default: what "
                     "train.py picks from --dtype and --compile (auto: bf16 and compile where they pay)")
    variants: str = opt("none,headwise,elementwise", "gates of the gate table; the first is the reference")
    optimizers: str = opt("adamw,muon" if hasattr(torch.optim, "Muon") else "adamw",
                          "optimizers of the optimizer table (adamw, muon); the first is the reference")
    warmup: int = opt(3, "untimed steps per variant before timing (compilation happens here)")
    steps: int = opt(0, "timed training steps per repeat (0: about 2 s of work per repeat, at least 2)")
    repeats: int = opt(5, "timed repeats per variant, round-robin; the median is reported")
    gen_tokens: str = opt("250,1000", "new tokens per generation run, comma-separated")
    gen_repeats: int = opt(3, "timed repeats of each generation run")
    json: str = opt("", "also write every figure to this JSON file")
    speedrun: bool = opt(False, "instead of the tables: time the speedrun presets against nanoGPT's fp32 eager "
                                "CPU recipe, each to the end, interleaved (several minutes)")
    speedrun_configs: str = opt("configs/speedrun_cpu.toml,configs/speedrun_muon_cpu.toml",
                                "the speedrun presets, comma-separated")
    baseline_config: str = opt("configs/tinyshakespeare_cpu.toml", "the recipe the speedrun is timed against")
    speedrun_repeats: int = opt(1, "runs of each (alternating) in the speedrun comparison")
    prepare: bool = opt(False, "instead of the tables: time prepare_data.py on a generated JSON Lines corpus against "
                               "tiktoken's encode_ordinary_batch, with its peak memory (see Data preparation)")
    prepare_mb: float = opt(1024, "size of the generated corpus, in MB of text")
    prepare_reference_mb: float = opt(256, "MB of the corpus that tiktoken's encode_ordinary_batch encodes, half "
                                           "before and half after prepare_data.py runs")
    prepare_tokenizer: str = opt("auto", "the BPE: a tiktoken name or .tiktoken file; auto: gpt2 if it loads, "
                                         "else a byte-level BPE of prepare_vocab tokens trained on the plays")
    prepare_vocab: int = opt(8192, "tokens of the BPE trained when gpt2 cannot be loaded (256 bytes + merges)")
    prepare_dir: str = opt("", "folder for the corpus and the prepared dataset, kept for reruns ('': a temporary "
                               "folder, deleted after)")

    def __post_init__(self):
        if self.preset not in ("auto", "none", *PRESETS):
            raise ConfigError(f"bad value {self.preset!r} for 'preset': choose auto, none, {', '.join(PRESETS)}")
        unknown = set(split(self.tables)) - {"train", "gate", "optimizer", "generate"}
        if unknown:
            raise ConfigError(f"unknown table(s) {', '.join(sorted(unknown))}: choose train, gate, optimizer, generate")
        for key in ("warmup", "repeats", "gen_repeats", "speedrun_repeats"):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be at least 1")
        if self.steps < 0:
            raise ConfigError(f"steps={self.steps} cannot be negative (0: about 2 s of work per repeat)")
        for path in split(self.paths):
            if path != "default":
                dtype, _, compile_ = path.partition("/")
                train.check_runtime_settings("auto", dtype)
                if compile_ not in ("", "auto", "true", "false"):
                    raise ConfigError(f"bad path {path!r} in 'paths': write dtype/compile, e.g. float32/false, "
                                      "with compile auto (the default), true or false")
        for optimizer in split(self.optimizers):
            train.TrainConfig(optimizer=optimizer)  # one line if unknown, or muon without torch.optim.Muon
        if self.speedrun and not split(self.speedrun_configs):
            raise ConfigError("speedrun_configs is empty: give at least one preset, e.g. configs/speedrun_cpu.toml")
        for gate in split(self.variants):
            if gate not in CHOICES["gate"]:
                raise ConfigError(f"bad gate {gate!r} in 'variants': choose from {', '.join(CHOICES['gate'])}")
        if not all(n.isdigit() and int(n) > 0 for n in split(self.gen_tokens)):
            raise ConfigError(f"bad value {self.gen_tokens!r} for 'gen_tokens': give positive token counts, "
                              "e.g. 250,1000")
        if self.prepare_mb <= 0 or self.prepare_reference_mb <= 0 or self.prepare_vocab < 257:
            raise ConfigError("prepare_mb and prepare_reference_mb must be positive, prepare_vocab at least 257")


def split(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def load_configs(argv):
    """Model, training and bench settings: defaults < preset < --config files < --key=value."""
    classes = [GPTConfig, train.TrainConfig, BenchConfig]
    _, train_cfg, bench_cfg = parse_args(classes, argv, prog="-m lab.bench", description=__doc__, ignored=IGNORED_KEYS)
    preset = bench_cfg.preset
    argv = sys.argv[1:] if argv is None else list(argv)
    if preset == "auto" and any(arg.startswith("--config") for arg in argv):
        preset = "none"  # the shape comes from the config file
    if preset == "auto":
        cuda = train_cfg.device.startswith("cuda") or (train_cfg.device == "auto" and torch.cuda.is_available())
        preset = "gpt2" if cuda else "medium"
    base = dict(PRESETS.get(preset, {}))
    model_cfg, train_cfg, bench_cfg = parse_args(classes, argv, base=base)
    return model_cfg, train_cfg, bench_cfg, preset


# ---------------------------------------------------------------------------
# Device facts
# ---------------------------------------------------------------------------


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        return f"{name}, {torch.get_num_threads()} threads"
    return device.type


# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; the MFU
# denominator. fp32 runs use TF32 on these GPUs, whose peak is half of this.
GPU_PEAK_BF16 = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "H800": 989e12,
    "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
    "L40": 181e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12, "A6000": 155e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def peak_flops(device_type, dtype=torch.bfloat16, device_name=None):
    """The device's peak matmul FLOP/s: a data-sheet table for GPUs, a measurement on CPUs."""
    if device_type == "cuda":
        name = device_name or torch.cuda.get_device_name()
        for key, flops in GPU_PEAK_BF16.items():
            if key in name:
                return flops if dtype in (torch.bfloat16, torch.float16) else flops / 2
        return None
    if device_type == "cpu":
        return measure_matmul_flops(dtype)
    return None


def measure_matmul_flops(dtype, n=1024, repeats=8, trials=3):
    """FLOP/s of an n x n matmul on the CPU, the best of a few trials (other work may share the CPU)."""
    # Its own generator: a draw from the global one would shift the dropout of a training in this process.
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, dtype=dtype, generator=generator) for _ in range(2))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 * repeats / best


def mfu(model, tokens_per_s, peak):
    """Model FLOPs utilisation: the training FLOP/s achieved (the model's FLOPs per token) over the peak."""
    return model.flops_per_token() * tokens_per_s / peak


def device_peaks(device):
    """Peak matmul FLOP/s per precision: a data sheet for GPUs; on a CPU a measurement, taken twice
    and the best kept, since other work may have shared the CPU."""
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16) + ((torch.float16,) if device.type == "cuda" else ()):
        peak = peak_flops(device.type, dtype)
        if device.type == "cpu":
            peak = max(peak, measure_matmul_flops(dtype))
        peaks[NAMES[str(dtype)[6:]]] = peak
    return peaks


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Memory:
    """Peak memory of what runs between start() and stop(), in MiB: (peak, added over the start)."""

    def __init__(self, device):
        self.device = device
        self.kind = ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
                     "process peak RSS (VmHWM)" if Path("/proc/self/status").exists() else "ru_maxrss")

    @staticmethod
    def _status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return 0.0

    def now(self):
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2 ** 20
        if self.kind.startswith("process"):
            return self._status("VmRSS")
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind.startswith("process"):
            gc.collect()
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so RSS counts live memory
            with contextlib.suppress(OSError):
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
        self.before = self.now()

    def stop(self):
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        elif self.kind.startswith("process"):
            peak = self._status("VmHWM")
        else:
            peak = self.now()
        return peak, max(0.0, peak - self.before)


# ---------------------------------------------------------------------------
# Training variants
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class Variant:
    """One model + optimizer + precision + compile setting, trained with train.train_step."""
    name: str
    gate: str
    dtype: str  # as given: auto | float32 | bfloat16 | float16
    compile: str  # as given: auto | true | false
    optimizer: str = "adamw"  # adamw | muon, as train.py's --optimizer
    time_optimizer: bool = False  # time optimizer.step apart (the optimizer table; on CUDA it synchronises)
    times: list = dataclasses.field(default_factory=list)
    optimizer_times: list = dataclasses.field(default_factory=list)  # s per step in optimizer.step, per repeat


def timed_steps(optimizers, device, clock):
    """Wrap each optimizer's step so that clock[its class name] adds up the seconds spent in it (the device
    synchronised before and after, so that queued forward/backward work is not counted)."""
    for optimizer in optimizers:
        name, step = type(optimizer).__name__, optimizer.step

        def timed(*args, _step=step, _name=name, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = _step(*args, **kwargs)
            sync(device)
            clock[_name] = clock.get(_name, 0.0) + time.perf_counter() - start
            return out
        optimizer.step = timed  # GradScaler.step calls optimizer.step: it goes through the wrapper too


def build(variant, model_cfg, train_cfg, device, folder):
    train_cfg = dataclasses.replace(train_cfg, dtype=variant.dtype, compile=variant.compile,
                                    optimizer=variant.optimizer)
    runtime = train.setup_runtime(str(device), variant.dtype)
    variant.resolved_dtype = NAMES.get(str(runtime.dtype).replace("torch.", ""), str(runtime.dtype))
    raw, optimizers, scaler, batches = train.build_training(dataclasses.replace(model_cfg, gate=variant.gate),
                                                           train_cfg, runtime, folder, prepare_data.load_meta(folder))
    variant.compiled = train.should_compile(train_cfg, runtime)
    model = torch.compile(raw) if variant.compiled else raw  # as train.py does: the whole model, on any device
    params = list(raw.parameters())
    variant.raw, variant.model, variant.runtime = raw, model, runtime  # raw: evaluation and generation, eager
    variant.tokens_per_step = train_cfg.batch_size * model_cfg.block_size * train_cfg.grad_accum_steps
    variant.clock = {}  # seconds in each optimizer's step, since the build
    if variant.time_optimizer:
        timed_steps(optimizers, device, variant.clock)

    def step():
        return train.train_step(model, optimizers, scaler, batches.train_step(train_cfg.grad_accum_steps),
                                runtime, params, train_cfg.grad_clip)
    variant.step = step
    return variant


def run_steps(variant, n):
    start, loss = time.perf_counter(), None
    for _ in range(n):
        loss, _ = variant.step()
    loss = loss.item() if loss is not None else None  # waits for the device
    sync(variant.runtime.device)
    return time.perf_counter() - start, loss


def measure_training(variants, model_cfg, train_cfg, bench_cfg, device, folder, memory, log):
    for v in variants:
        memory.start()
        build(v, model_cfg, train_cfg, device, folder)
        start = time.perf_counter()
        run_steps(v, 1)
        v.first_step_s = time.perf_counter() - start  # compilation, if any, happens here
        run_steps(v, max(0, bench_cfg.warmup - 1))
        _, v.peak_mib = memory.stop()  # this variant's own peak: weights, optimizer, activations
        memory.start()
        elapsed, v.loss = run_steps(v, 1)
        _, v.step_mib = memory.stop()
        v.steps = bench_cfg.steps or max(2, min(50, round(2.0 / max(elapsed, 1e-4))))
        log(f"  built {v.name}: {v.resolved_dtype}, {'compiled' if v.compiled else 'eager'}, "
            f"first step {v.first_step_s:.1f} s, {elapsed * 1000:.0f} ms/step, {v.steps} steps per repeat")
    for r in range(bench_cfg.repeats):  # round-robin: one repeat of each variant in turn
        for v in variants:
            before = dict(v.clock)
            elapsed, v.loss = run_steps(v, v.steps)
            v.times.append(elapsed / v.steps)
            v.optimizer_times.append({k: (t - before.get(k, 0.0)) / v.steps for k, t in v.clock.items()})
        log(f"  repeat {r + 1}/{bench_cfg.repeats} done")
    for v in variants:
        v.ms = statistics.median(v.times) * 1000
        v.tokens_per_s = v.tokens_per_step / (v.ms / 1000)
        v.spread = (max(v.times) - min(v.times)) / statistics.median(v.times)
        v.optimizer_ms = {k: statistics.median(t[k] for t in v.optimizer_times) * 1000 for k in v.clock}
        v.optimizer_share = statistics.median(sum(t.values()) / s for t, s in zip(v.optimizer_times, v.times))


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


def measure_generation(variant, counts, repeats, log):
    """Tokens/s of GPT.stream with and without the KV cache, one sequence, from a one-token prompt."""
    model, runtime = variant.raw.eval(), variant.runtime
    prompt = torch.zeros((1, 1), dtype=torch.long, device=runtime.device)
    results = {(n, cached): [] for n in counts for cached in (True, False)}

    def run(n, cached):
        generator = torch.Generator(device=runtime.device).manual_seed(0)
        start = time.perf_counter()
        with runtime.autocast():
            for token in model.stream(prompt, n, generator=generator, use_cache=cached):
                pass
        token.item()
        sync(runtime.device)
        return n / (time.perf_counter() - start)

    run(8, True), run(8, False)  # warm-up
    for r in range(repeats):
        for n in counts:
            for cached in (True, False):
                results[(n, cached)].append(run(n, cached))
        log(f"  generation repeat {r + 1}/{repeats} done")
    model.train()
    return {key: statistics.median(values) for key, values in results.items()}


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def dataset_folder(train_cfg, scratch):
    """The prepared dataset train.py would use, or a synthetic one when it is missing."""
    folder = prepare_data.dataset_dir(train_cfg.data_dir, train_cfg.dataset)
    if prepare_data.is_prepared(folder):
        return folder, f"{train_cfg.dataset} ({folder})"
    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?'\n-"))
    source = Path(scratch) / "synthetic.txt"
    source.write_text("".join(alphabet[rng.integers(0, len(alphabet), 300_000)]))
    with contextlib.redirect_stdout(None):
        folder = prepare_data.prepare(prepare_data.DataConfig(dataset="synthetic", source=str(source),
                                                              data_dir=str(scratch)))
    return folder, "synthetic characters (no prepared dataset found)"


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def paired_ratio(variant, reference):
    """tokens/s of variant over reference: the median over rounds of the ratio within each round,
    so that a slow spell of the machine, which hits both in the same round, cancels."""
    return statistics.median((variant.tokens_per_step / t) / (reference.tokens_per_step / r)
                             for t, r in zip(variant.times, reference.times))


def training_table(title, variants, reference):
    lines = [title,
             f"  {'variant':<24} {'gate':<12} {'ms/step':>9} {'tokens/s':>10} {'ratio':>7} {'MFU':>6} {'peak MiB':>9} "
             f"{'+step MiB':>9} {'1st step s':>10} {'spread':>7}"]
    rows = []
    for v in variants:
        ratio = paired_ratio(v, reference)
        rows.append(dict(name=v.name, gate=v.gate, dtype=v.resolved_dtype, compiled=v.compiled, ms_per_step=v.ms,
                         tokens_per_s=v.tokens_per_s, ratio=ratio, mfu=v.mfu, peak_mib=v.peak_mib,
                         step_mib=v.step_mib, first_step_s=v.first_step_s, spread=v.spread, loss=v.loss))
        mfu = f"{100 * v.mfu:.1f}%" if v.mfu is not None else "-"
        lines.append(f"  {v.name:<24} {v.gate:<12} {v.ms:>9.1f} {v.tokens_per_s:>10,.0f} {ratio:>6.2f}x {mfu:>6} "
                     f"{v.peak_mib:>9,.0f} {v.step_mib:>9,.0f} {v.first_step_s:>10.1f} {100 * v.spread:>6.0f}%")
    return lines, rows


def gate_table(variants, reference):
    lines, rows = training_table(f"Gate cost per training step (default path; ratio: tokens/s over gate="
                                 f"{reference.gate}'s; cost: extra time per step)", variants, reference)
    lines[1] += f" {'cost':>7} {'+FLOPs':>7}"
    for i, v in enumerate(variants):
        # cost: extra time per step; +FLOPs: the gate's extra training FLOPs, from the model's own count.
        cost = 1 / rows[i]["ratio"] - 1
        extra = v.raw.flops_per_token() / reference.raw.flops_per_token() - 1
        rows[i].update(cost=cost, extra_flops=extra)
        lines[2 + i] += f" {100 * cost:>6.1f}% {100 * extra:>6.1f}%"
    return lines, rows


def optimizer_table(variants, reference):
    """The optimizer step's share of the training step: AdamW alone, or Muon on the blocks' matrices and
    AdamW on the rest."""
    lines, rows = training_table(f"Optimizer step per training step (default path; ratio: tokens/s over "
                                 f"{reference.optimizer}'s; optimizer.step timed apart, the device synchronised)",
                                 variants, reference)
    lines[1] = (f"  {'optimizer':<10} {'gate':<12} {'ms/step':>9} {'tokens/s':>10} {'ratio':>7} {'fwd+bwd ms':>11} "
                f"{'AdamW ms':>9} {'Muon ms':>8} {'opt share':>10} {'spread':>7}")
    for i, v in enumerate(variants):
        adamw, muon = v.optimizer_ms.get("AdamW", 0.0), v.optimizer_ms.get("Muon")
        rest = v.ms - sum(v.optimizer_ms.values())  # forward, backward, clipping, zero_grad, batches
        rows[i].update(optimizer=v.optimizer, adamw_ms=adamw, muon_ms=muon, forward_backward_ms=rest,
                       optimizer_share=v.optimizer_share)
        lines[2 + i] = (f"  {v.optimizer:<10} {v.gate:<12} {v.ms:>9.1f} {v.tokens_per_s:>10,.0f} "
                        f"{rows[i]['ratio']:>6.2f}x {rest:>11.1f} {adamw:>9.1f} {fmt(muon, '.1f'):>8} "
                        f"{100 * v.optimizer_share:>9.1f}% {100 * v.spread:>6.0f}%")
    lines.append("  fwd+bwd ms: the rest of the step (forward, backward, gradient clipping, zero_grad, the batch); "
                 "opt share: optimizer.step's time over the step's, median of the rounds.")
    return lines, rows


def generation_table(results, counts, block_size, variant):
    lines = [f"Generation, one sequence, {variant.resolved_dtype}, block_size {block_size} "
             "(past it the window jumps by block_size/4 and the cache is re-filled)",
             f"  {'new tokens':>10} {'cached tok/s':>13} {'uncached tok/s':>15} {'ratio':>7}"]
    rows = []
    for n in counts:
        cached, uncached = results[(n, True)], results[(n, False)]
        rows.append(dict(new_tokens=n, cached_tokens_per_s=cached, uncached_tokens_per_s=uncached,
                         ratio=cached / uncached))
        lines.append(f"  {n:>10} {cached:>13,.1f} {uncached:>15,.1f} {cached / uncached:>6.2f}x")
    return lines, rows


# ---------------------------------------------------------------------------
# The speedrun: wall time of whole training runs
# ---------------------------------------------------------------------------


def val_loss_of(out_dir):
    evals = [r for r in json_lines(Path(out_dir) / "metrics.jsonl") if "val_loss" in r]
    return (evals[-1]["val_loss"], evals[-1]["step"]) if evals else (None, None)


def full_val_loss(out_dir, data_dir):
    """Loss of a run's final model over the whole val split in non-overlapping windows (fp32, not timed)."""
    ckpt = train.load_checkpoint(Path(out_dir) / "ckpt.pt")
    model = train.model_from_checkpoint(ckpt)
    folder = prepare_data.dataset_dir(data_dir, ckpt["config"]["dataset"])
    meta = prepare_data.load_meta(folder)
    data = np.fromfile(Path(folder) / "val.bin", dtype=meta["dtype"]).astype(np.int64)
    T = model.config.block_size
    n = (len(data) - 1) // T
    x = torch.from_numpy(data[:n * T].reshape(n, T))
    y = torch.from_numpy(data[1:n * T + 1].reshape(n, T))
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, n, 64)]
    return train.mean_loss(model, batches, train.Runtime(torch.device("cpu"), torch.float32))


def find(path):
    """A path as given, else relative to the repository (so the bench runs from any folder)."""
    path = Path(path)
    if not path.exists() and (ROOT / path).exists():
        return ROOT / path
    if not path.exists():
        raise ConfigError(f"config file '{path}' not found")
    return path.resolve()


# The speedrun presets' targets: (which loss, at most this loss, at most this fraction of the recipe's
# wall time). nanoGPT's own train.py, CPU recipe, reaches 1.886 on its 20-batch estimate and 1.898 on the
# whole val split.
SPEEDRUN_TARGETS = {"speedrun_cpu": ("val_loss", 1.886, 0.5), "speedrun_muon_cpu": ("full_val_loss", 1.898, 0.25)}


def speedrun(train_cfg, bench_cfg, log):
    runs = {"fp32 eager recipe": [f"--config={find(bench_cfg.baseline_config)}", "--gate=none",
                                  "--dtype=float32", "--compile=false"]}
    for config in split(bench_cfg.speedrun_configs):
        runs[Path(config).stem] = [f"--config={find(config)}"]
    data_dir = Path(train_cfg.data_dir).resolve()
    common = ["--progress=false", f"--data_dir={data_dir}"] + ([f"--threads={train_cfg.threads}"]
                                                               if train_cfg.threads else [])
    results = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(bench_cfg.speedrun_repeats):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for name in order:
                out_dir = Path(scratch) / f"{name.split()[0]}-{r}"
                command = [sys.executable, str(ROOT / "train.py"), *runs[name], *common, f"--out_dir={out_dir}"]
                log(f"  running {name}: {' '.join(command[1:])}")
                start = time.perf_counter()
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                wall = time.perf_counter() - start
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
                val, step = val_loss_of(out_dir)
                results[name].append(dict(wall_s=wall, val_loss=val, steps=step,
                                          full_val_loss=full_val_loss(out_dir, data_dir)))
                log(f"    {wall:.1f} s, val loss {val:.4f} after {step} steps, full val "
                    f"{results[name][-1]['full_val_loss']:.4f}")
    threads = train_cfg.threads or torch.get_num_threads()
    lines = [f"Speedrun on tinyshakespeare: wall time of the whole run (start-up, evaluation and checkpoint "
             f"included), {bench_cfg.speedrun_repeats} interleaved repeat(s), {threads} thread(s)",
             f"  {'run':<20} {'wall s':>8} {'steps':>6} {'val loss':>9} {'full val':>9} {'time ratio':>11}"]
    rows, base = [], results["fp32 eager recipe"]
    for name, runs_ in results.items():
        wall = statistics.median(r["wall_s"] for r in runs_)
        val = statistics.median(r["val_loss"] for r in runs_)
        full = statistics.median(r["full_val_loss"] for r in runs_)
        # the median over the repeats of the ratio within each repeat (the runs of a repeat are neighbours)
        ratio = statistics.median(r["wall_s"] / b["wall_s"] for r, b in zip(runs_, base))
        rows.append(dict(run=name, wall_s=wall, walls=[r["wall_s"] for r in runs_], steps=runs_[0]["steps"],
                         val_loss=val, full_val_loss=full, full_val_losses=[r["full_val_loss"] for r in runs_],
                         time_ratio=ratio))
        lines.append(f"  {name:<20} {wall:>8.1f} {runs_[0]['steps']:>6} {val:>9.4f} {full:>9.4f} {ratio:>10.2f}x")
    lines.append("  val loss: the run's own last evaluation (eval_iters batches); full val: its final model over "
                 "the whole val split (fp32, not timed); time ratio: median over the repeats of wall time over the "
                 "recipe's in the same repeat. nanoGPT's recipe reaches 1.886 (20 batches), 1.898 (full val).")
    for row in rows[1:]:
        if row["run"] in SPEEDRUN_TARGETS:
            key, loss, ratio = SPEEDRUN_TARGETS[row["run"]]
            row["target_met"] = row[key] <= loss and row["time_ratio"] <= ratio
            lines.append(f"  target of {row['run']} ({'full val' if key == 'full_val_loss' else 'val loss'} <= "
                         f"{loss} in at most {ratio:g}x the recipe's wall time): "
                         f"{'met' if row['target_met'] else 'not met'}")
    return lines, rows


# ---------------------------------------------------------------------------
# Data preparation: prepare_data.py against tiktoken's own batch encoding
# ---------------------------------------------------------------------------

BPE_TRAINING_MB = 2  # the BPE is trained on the first 2 MB of the plays


def train_bpe(text, vocab_size):
    """A byte-level BPE (GPT-2's pre-tokenizer, then the most frequent pair merged, vocab_size - 256
    times; ties to the smallest pair), as tiktoken's mergeable ranks {token bytes: rank}."""
    import collections
    import heapq

    import regex
    counts = collections.Counter(regex.findall(prepare_data.GPT2_SPLIT, text))
    words, weights = [list(word.encode("utf-8")) for word in counts], list(counts.values())
    pairs, where = collections.Counter(), collections.defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pairs[pair] += weights[i]
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    vocab = [bytes([b]) for b in range(256)]
    while len(vocab) < vocab_size and heap:
        count, pair = heapq.heappop(heap)
        if pairs.get(pair) != -count:
            continue  # a stale entry: the count changed since it was pushed
        new, touched = len(vocab), set()
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
        for i in where.pop(pair):
            word, merged, j = words[i], [], 0
            for old in zip(word, word[1:]):
                pairs[old] -= weights[i]
                touched.add(old)
            while j < len(word):
                if j + 1 < len(word) and word[j] == pair[0] and word[j + 1] == pair[1]:
                    merged.append(new)
                    j += 2
                else:
                    merged.append(word[j])
                    j += 1
            words[i] = merged
            for now in zip(merged, merged[1:]):
                pairs[now] += weights[i]
                where[now].add(i)
                touched.add(now)
        for other in touched:
            if pairs[other] > 0:
                heapq.heappush(heap, (-pairs[other], other))
    return {token: rank for rank, token in enumerate(vocab)}


def bench_tokenizer(bench_cfg, plays, folder, log):
    """The --tokenizer value for prepare_data.py, and a description of it."""
    name = bench_cfg.prepare_tokenizer
    if name == "auto":
        try:
            prepare_data.get_tiktoken_encoding("gpt2")
            return "gpt2", "gpt2 (tiktoken)"
        except ConfigError:
            name = ""
    if name:
        encoding = prepare_data.get_tiktoken_encoding(name)
        return name, f"{name} ({encoding.n_vocab:,} tokens)"
    path = Path(folder) / f"plays-bpe-{bench_cfg.prepare_vocab}.tiktoken"
    if not path.exists():
        log(f"  gpt2 cannot be loaded: training a byte-level BPE of {bench_cfg.prepare_vocab:,} tokens on the plays")
        ranks = train_bpe(plays[:BPE_TRAINING_MB * 10 ** 6], bench_cfg.prepare_vocab)
        path.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items()))
    return str(path), (f"a byte-level BPE of {bench_cfg.prepare_vocab:,} tokens (GPT-2's pre-tokenizer) trained "
                       f"here on the first {BPE_TRAINING_MB} MB of the plays ({path.name})")


def generate_corpus(folder, mb, plays):
    """JSON Lines files of about 64 MB, until `mb` MB of text: each record {"text": ...} is 4 to 40
    speeches of the plays drawn at random (seeded). Reused when it is already there."""
    folder = Path(folder)
    manifest = folder / "corpus.json"
    if manifest.exists() and json.loads(manifest.read_text())["mb"] == mb:
        return json.loads(manifest.read_text())
    speeches = split_blocks(plays)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files, text_bytes, documents, goal = [], 0, 0, int(mb * 10 ** 6)
    while text_bytes < goal:
        path = folder / f"part-{len(files):04d}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            written = 0
            while written < 64 * 10 ** 6 and text_bytes < goal:
                text = "".join(speeches[i] for i in rng.integers(0, len(speeches), rng.integers(4, 41))).strip()
                f.write(json.dumps({"text": text}) + "\n")
                size = len(text.encode("utf-8"))
                written, text_bytes, documents = written + size, text_bytes + size, documents + 1
        files.append(path.name)
    facts = {"mb": mb, "files": files, "text_bytes": text_bytes, "documents": documents}
    manifest.write_text(json.dumps(facts))
    return facts


def records_of(folder, files, text_bytes):
    """The record texts of the corpus, in order, up to about text_bytes bytes of text."""
    seen = 0
    for name in files:
        with open(Path(folder) / name, encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                yield text
                seen += len(text.encode("utf-8"))
                if seen >= text_bytes:
                    return


def reference_throughput(encoding, texts, threads):
    """Wall seconds, CPU seconds and bytes of tiktoken's encode_ordinary_batch over `texts`, in lists of
    about 8 MB; only the encoding is timed (reading and JSON parsing are not)."""
    seconds, cpu, size, batch, batch_size = 0.0, 0.0, 0, [], 0
    for text in [*texts, None]:
        if text is not None:
            batch.append(text)
            batch_size += len(text.encode("utf-8"))
        if batch and (text is None or batch_size >= 8 * 10 ** 6):
            start, cpu_start = time.perf_counter(), time.process_time()
            encoding.encode_ordinary_batch(batch, num_threads=threads)
            seconds, cpu = seconds + time.perf_counter() - start, cpu + time.process_time() - cpu_start
            size, batch, batch_size = size + batch_size, [], 0
    return seconds, cpu, size


def process_tree(pid):
    """A process and all its descendants, from /proc (each thread's list of children)."""
    tree, todo = set(), [pid]
    while todo:
        member = todo.pop()
        tree.add(member)
        for task in Path(f"/proc/{member}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(child) for child in (task / "children").read_text().split()]
    return tree


def memory_of(pid):
    """(resident MiB now, peak resident MiB of this process since its exec) from /proc/PID/status."""
    values = {}
    with contextlib.suppress(OSError):
        for line in open(f"/proc/{pid}/status"):
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def run_watched(command, cwd):
    """Run a command; its wall time, CPU time (its own and its children's), the peak of its process
    tree's resident memory taken together (sampled every 0.1 s), and the sum of each process's own
    peak (VmHWM, exact per process; their sum bounds the tree's peak from above)."""
    import resource
    import threading
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    together, peaks, start = [0.0], {}, time.perf_counter()

    def watch():
        while process.poll() is None:
            now = 0.0
            for pid in process_tree(process.pid):
                rss, hwm = memory_of(pid)
                now += rss
                peaks[pid] = max(peaks.get(pid, 0.0), hwm)
            together[0] = max(together[0], now)
            time.sleep(0.1)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output = process.communicate()[0]
    wall = time.perf_counter() - start
    watcher.join()
    if process.returncode != 0:
        raise SystemExit(f"prepare_data.py failed:\n{output[-3000:]}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(cpu_after, k) - getattr(cpu_before, k) for k in ("ru_utime", "ru_stime"))
    return wall, cpu, together[0], sum(peaks.values()), output


def prepare_bench(train_cfg, bench_cfg, log):
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    plays = prepare_data.plays_text(prepare_data.play_files()[0])
    with contextlib.ExitStack() as stack:
        folder = Path(bench_cfg.prepare_dir or stack.enter_context(tempfile.TemporaryDirectory()))
        tokenizer, tokenizer_note = bench_tokenizer(bench_cfg, plays, folder, log)
        log(f"  generating a corpus of {bench_cfg.prepare_mb:,} MB in {folder / 'corpus'}")
        corpus = generate_corpus(folder / "corpus", bench_cfg.prepare_mb, plays)
        encoding = prepare_data.get_tiktoken_encoding(tokenizer)
        half = bench_cfg.prepare_reference_mb * 10 ** 6 / 2
        texts = list(records_of(folder / "corpus", corpus["files"], half))  # the same texts, before and after

        log(f"  tiktoken encode_ordinary_batch, {threads} threads, on {half / 1e6:,.0f} MB")
        before = reference_throughput(encoding, texts, threads)
        shutil.rmtree(folder / "data", ignore_errors=True)
        command = [sys.executable, "-m", "lab.corpus", "--dataset=bench", f"--source={folder / 'corpus'}",
                   f"--tokenizer={tokenizer}", "--documents=record", f"--data_dir={folder / 'data'}",
                   "--val_fraction=0.01"]
        log(f"  running {' '.join(command[1:])}")
        wall, cpu, together, summed, output = run_watched(command, Path(prepare_data.__file__).parent)
        meta = prepare_data.load_meta(folder / "data" / "bench")
        log(f"  tiktoken encode_ordinary_batch again on the same {half / 1e6:,.0f} MB")
        after = reference_throughput(encoding, texts, threads)
        shutil.rmtree(folder / "data", ignore_errors=True)

    mb, half_mb = corpus["text_bytes"] / 1e6, (before[2] + after[2]) / 1e6
    ours, reference = mb / wall, half_mb / (before[0] + after[0])
    ours_cpu, reference_cpu = mb / cpu, half_mb / (before[1] + after[1])
    tokens = meta["train_tokens"] + meta["val_tokens"]
    rows = dict(corpus_mb=mb, documents=corpus["documents"], tokens=tokens, tokenizer=tokenizer_note,
                threads=threads, load_average=os.getloadavg()[0], wall_s=wall, cpu_s=cpu, mb_per_s=ours,
                mb_per_cpu_s=ours_cpu, reference_mb=half_mb, reference_mb_per_s=reference,
                reference_mb_per_cpu_s=reference_cpu, reference_before_mb_per_s=before[2] / 1e6 / before[0],
                reference_after_mb_per_s=after[2] / 1e6 / after[0], ratio=ours / reference,
                cpu_ratio=ours_cpu / reference_cpu, peak_together_mib=together, peak_summed_mib=summed)
    lines = [f"Data preparation: {mb:,.0f} MB of text in {len(corpus['files'])} JSON Lines files "
             f"({corpus['documents']:,} documents) -> {tokens:,} tokens; {threads} cores, load average "
             f"{rows['load_average']:.1f} at the end",
             f"  tokenizer: {tokenizer_note}",
             f"  {'':<46} {'MB/s':>7} {'ratio':>6} {'MB/CPU-s':>9} {'ratio':>6}",
             f"  {'tiktoken encode_ordinary_batch, ' + format(half_mb, ',.0f') + ' MB':<46} {reference:>7.2f} "
             f"{1:>5.2f}x {reference_cpu:>9.2f} {1:>5.2f}x   (before {rows['reference_before_mb_per_s']:.2f}, "
             f"after {rows['reference_after_mb_per_s']:.2f} MB/s)",
             f"  {'prepare_data.py, the whole command, ' + format(wall, ',.0f') + ' s':<46} {ours:>7.2f} "
             f"{ours / reference:>5.2f}x {ours_cpu:>9.2f} {ours_cpu / reference_cpu:>5.2f}x",
             f"  peak resident memory of prepare_data.py and its workers: {together:,.0f} MiB together (sampled "
             f"every 0.1 s); {summed:,.0f} MiB summing each process's own peak (an upper bound)",
             f"  targets: at least 0.80x tiktoken's MB/s: {'met' if ours / reference >= 0.8 else 'not met'}; "
             f"under 1,024 MiB: {'met' if summed < 1024 else 'not met'}",
             "  MB: of record text (UTF-8). prepare_data.py's time is the whole command (start-up, reading, JSON, "
             "hashing, tokenizing, writing, the val split); tiktoken's is encode_ordinary_batch alone on texts "
             "already in memory. MB/CPU-s: per second of CPU time of all processes and threads."]
    return lines, rows


# ---------------------------------------------------------------------------


def main(argv=None):
    """Run the benchmark; returns every figure as a dict (also printed as tables)."""
    model_cfg, train_cfg, bench_cfg, preset = load_configs(argv)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    if bench_cfg.speedrun or bench_cfg.prepare:
        lines, rows = (speedrun if bench_cfg.speedrun else prepare_bench)(train_cfg, bench_cfg, log)
        print("\n".join(lines))
        report = {"speedrun" if bench_cfg.speedrun else "prepare": rows}
        if bench_cfg.json:
            Path(bench_cfg.json).write_text(json.dumps(report, indent=2))
        return report

    torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)  # one graph per variant
    default_runtime = train.setup_runtime(train_cfg.device, train_cfg.dtype, train_cfg.threads)
    device = default_runtime.device
    tables = split(bench_cfg.tables)
    report = {"preset": preset, "device": device_name(device), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as scratch:
        folder, data_note = dataset_folder(train_cfg, scratch)
        if model_cfg.vocab_size == 0:
            model_cfg.vocab_size = prepare_data.load_meta(folder)["vocab_size"]
        variants, train_rows, gate_rows = {}, [], []

        def variant(gate, path, optimizer=train_cfg.optimizer):
            """The variant for a gate, a 'dtype/compile' path ('default': train.py's choice) and an optimizer,
            shared between tables when two of them ask for the same thing."""
            dtype, compile_ = ((train_cfg.dtype, train_cfg.compile) if path == "default" else
                               tuple((path.split("/") + ["auto"])[:2]))
            runtime = train.setup_runtime(str(device), dtype)
            compiled = train.should_compile(dataclasses.replace(train_cfg, compile=compile_), runtime)
            key = (gate, runtime.dtype, compiled, optimizer)
            if key not in variants:
                name = f"{NAMES.get(str(runtime.dtype)[6:], runtime.dtype)} {'compiled' if compiled else 'eager'}"
                if optimizer != train_cfg.optimizer:
                    name += f" {optimizer}"
                variants[key] = Variant(name=name, gate=gate, dtype=dtype, compile=compile_, optimizer=optimizer)
            if path == "default" and not variants[key].name.endswith("(default)"):
                variants[key].name += " (default)"
            return variants[key]

        gen_variant = variant(model_cfg.gate, "default") if "generate" in tables else None
        if "gate" in tables:
            gate_rows = [variant(g, "default") for g in split(bench_cfg.variants)]
        if "train" in tables:
            train_rows = list(dict.fromkeys(variant(model_cfg.gate, p) for p in split(bench_cfg.paths)))
        optimizer_rows = ([variant(model_cfg.gate, "default", o) for o in split(bench_cfg.optimizers)]
                          if "optimizer" in tables else [])
        for v in optimizer_rows:
            v.time_optimizer = True
        header = [f"bench: preset {preset}: {plural(model_cfg.n_layer, 'layer')}, {plural(model_cfg.n_head, 'head')}, "
                  f"{model_cfg.n_embd} dim, context {model_cfg.block_size}, batch {train_cfg.batch_size}"
                  f"{' x ' + str(train_cfg.grad_accum_steps) if train_cfg.grad_accum_steps > 1 else ''}, "
                  f"vocab {model_cfg.vocab_size}",
                  f"device: {report['device']}; torch {torch.__version__}; data: {data_note}"]
        print("\n".join(header), flush=True)
        memory = Memory(device)
        all_variants = list(variants.values())
        timed = {"train", "gate", "optimizer"} & set(tables)
        if all_variants and timed:
            log(f"training: {len(all_variants)} variants, {bench_cfg.repeats} repeats, round-robin")
            measure_training(all_variants, model_cfg, train_cfg, bench_cfg, device, folder, memory, log)
        peaks = device_peaks(device)
        for v in all_variants:
            peak = peaks.get(NAMES[str(v.runtime.dtype)[6:]]) if hasattr(v, "ms") else None
            v.mfu = mfu(v.raw, v.tokens_per_s, peak) if peak else None
        out = ["peak matmul FLOP/s (" + ("data sheet" if device.type == "cuda" else "measured, best of two "
               "measurements") + "): " + ", ".join(f"{k} {v / 1e12:.3g} T" if v else f"{k} unknown"
                                                    for k, v in peaks.items()), ""]
        report.update(peak_flops=peaks, data=data_note)
        if "train" in tables:
            lines, rows = training_table("Training: default path against fp32 eager (ratio: tokens/s over the "
                                         "first row's, median of the rounds)", train_rows, train_rows[0])
            out += lines + [""]
            report["train"] = rows
        if "gate" in tables:
            lines, rows = gate_table(gate_rows, gate_rows[0])
            out += lines + [""]
            report["gate"] = rows
        if all_variants and timed:
            out.append(f"  peak MiB: the variant's own peak (weights, optimizer state, activations, compile "
                       f"workspace), from {memory.kind}; +step MiB: what one training step adds on top of "
                       "what is resident. spread: (max - min) / median of ms/step over the rounds.")
            if any(v.compiled for v in all_variants):
                out.append("  compiled: torch.compile of the whole model, as train.py --compile=true does (on a CPU "
                           "too); its 1st step s includes the compilation.")
            out.append("")
        if "optimizer" in tables:
            lines, rows = optimizer_table(optimizer_rows, optimizer_rows[0])
            out += lines + [""]
            report["optimizer"] = rows
        if gen_variant is not None:
            if not hasattr(gen_variant, "raw"):
                build(gen_variant, model_cfg, train_cfg, device, folder)
            counts = [int(n) for n in split(bench_cfg.gen_tokens)]
            log(f"generation: {counts} new tokens, cached and uncached, {bench_cfg.gen_repeats} repeats")
            results = measure_generation(gen_variant, counts, bench_cfg.gen_repeats, log)
            lines, rows = generation_table(results, counts, model_cfg.block_size, gen_variant)
            out += lines + [""]
            report["generate"] = rows
        print("\n".join(out).rstrip())
    if bench_cfg.json:
        Path(bench_cfg.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run_main(main)
