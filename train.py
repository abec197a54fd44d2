"""Train a gated (or plain) GPT.

    python train.py                                   # default gated model on the default data
    python train.py --gate=none                       # the same model, ungated: a plain GPT
    python train.py --config=configs/tinyshakespeare_cpu.toml
    python train.py --out_dir=out --resume            # continue exactly where a run stopped
    torchrun --standalone --nproc_per_node=8 train.py --config=configs/shakespeare_gpu.toml

Every setting is listed by `python train.py --help`.
"""

import contextlib
import ctypes
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl  # run-folder locks; Windows has none
except ImportError:
    fcntl = None

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import prepare_data
from configurable import ConfigError, format_config, opt, parse_args, pick, run_main, to_dict
from model import GPT, GPTConfig


@dataclass
class TrainConfig:
    out_dir: str = opt("out", "folder for checkpoints and metrics.jsonl")
    resume: bool = opt(False, "continue from out_dir/ckpt.pt (its settings, overridden by the command line)")
    dataset: str = opt("shakespeare", "prepared dataset under data_dir (built-in ones are prepared on first use)")
    data_dir: str = opt("data", "folder holding prepared datasets")
    bos_aligned: bool = opt(False, "start every training and evaluation window at a document's BOS token "
                                   "(needs a dataset with document starts, e.g. backcopy)")
    batch_size: int = opt(12, "sequences per micro-batch on each process")
    grad_accum_steps: int = opt(1, "micro-batches per optimizer step, over all processes together")
    max_iters: int = opt(2000, "optimizer steps")
    learning_rate: float = opt(1e-3, "peak learning rate")
    min_lr: float = opt(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = opt(100, "linear warm-up steps")
    lr_decay_iters: int = opt(0, "steps of cosine decay (0: max_iters)")
    weight_decay: float = opt(0.1, "AdamW weight decay, on matrices only")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.99, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0: off)")
    eval_interval: int = opt(250, "evaluate and checkpoint every this many steps")
    eval_iters: int = opt(20, "batches per evaluation")
    log_interval: int = opt(10, "steps between metric flushes (every step is recorded)")
    spike_window: int = opt(100, "rolling window of the loss and grad-norm spike scores (OLMo 2: 1000)")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = opt("auto", "auto | float32 | bfloat16 | float16 (autocast precision)")
    threads: int = opt(0, "CPU threads for PyTorch (0: PyTorch's choice; 1 on a busy machine)")
    compile: str = opt("auto", "torch.compile the model: auto (on for CUDA) | true | false")
    seed: int = opt(1337, "seed for initialisation, data order and dropout")
    progress: bool = opt(True, "show a progress bar")

    def __post_init__(self):
        check_runtime_settings(self.device, self.dtype, self.threads)
        if self.compile not in ("auto", "true", "false"):
            raise ConfigError(f"bad value {self.compile!r} for 'compile': choose auto, true or false")
        for key in ("batch_size", "grad_accum_steps", "eval_interval", "eval_iters", "log_interval", "spike_window"):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be at least 1")
        if self.max_iters < 0 or self.warmup_iters < 0 or self.lr_decay_iters < 0:
            raise ConfigError("max_iters, warmup_iters and lr_decay_iters cannot be negative")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate={self.learning_rate} must be positive")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ConfigError(f"min_lr={self.min_lr} must be between 0 and learning_rate={self.learning_rate}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be in [0, 1)")
        # A negative clip would reverse the gradient; a negative weight decay would grow the weights.
        if not self.grad_clip >= 0:
            raise ConfigError(f"grad_clip={self.grad_clip} cannot be negative (0 turns clipping off)")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay={self.weight_decay} cannot be negative")


# ---------------------------------------------------------------------------
# Device, precision and processes: set up here and nowhere else
# ---------------------------------------------------------------------------

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; the MFU
# denominator. fp32 runs use TF32 on these GPUs, whose peak is half of this.
GPU_PEAK_BF16 = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "H800": 989e12,
    "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
    "L40": 181e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12, "A6000": 155e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def device_type(self):
        return self.device.type

    @property
    def master(self):
        return self.rank == 0

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_runtime_settings(device, dtype, threads=0):
    """The device, precision and thread settings every script shares, checked where they are parsed."""
    kind, _, index = device.partition(":")
    if not (device in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and index.isdigit())):
        raise ConfigError(f"bad value {device!r} for 'device': choose auto, cpu, cuda, cuda:N (N a GPU number) "
                          "or mps")
    if dtype not in DTYPES:
        raise ConfigError(f"bad value {dtype!r} for 'dtype': choose {', '.join(DTYPES)}")
    if threads < 0:
        raise ConfigError(f"threads={threads} cannot be negative (0: PyTorch's choice)")


def setup_runtime(device="auto", dtype="auto", threads=0):
    """Pick the device, precision and CPU threads, and join the process group under torchrun."""
    check_runtime_settings(device, dtype, threads)
    if threads:
        torch.set_num_threads(threads)
    rank, local_rank, world = (int(os.environ.get(k, d)) for k, d in
                               (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but PyTorch sees no CUDA GPU: use --device=cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but this PyTorch has no MPS support: use --device=cpu")
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        reuse_freed_memory()
    if dtype == "auto":
        if device.type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        elif device.type == "cpu" and cpu_has_native_bf16():
            dtype = "bfloat16"
        else:
            dtype = "float32"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, getattr(torch, dtype), rank, local_rank, world)


def reuse_freed_memory():
    """Let glibc's malloc keep the memory of freed tensors for the next step instead of
    handing it back to the OS.

    By default glibc hands large freed blocks back (blocks over 128 KiB are mmapped, and the
    top of the heap is trimmed), so the activations and gradients of every step fault their
    pages in again: about 3,000 page faults per step of the CPU speedrun, 10-15% of its time.
    PyTorch's CPU tuning guide suggests a caching malloc (jemalloc, tcmalloc) for this; with
    glibc two settings do it: allocations up to 32 MiB come from the heap, and freed memory
    stays there. Elsewhere (macOS, musl) nothing changes.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


def cpu_has_native_bf16():
    """True on x86 CPUs with AVX512-BF16 or AMX, where bf16 matmuls run 2-3x faster than fp32
    (about 420 vs 185 GFLOP/s on 2 cores of an AMD EPYC); elsewhere bf16 is emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@functools.lru_cache
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
    # Its own generator: a draw from the global one would shift dropout after a resume.
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, dtype=dtype, generator=generator) for _ in range(2))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(trials):  # a peak: the best of a few trials, as other work may share the CPU
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 * repeats / best


# ---------------------------------------------------------------------------
# Data: random windows from the token file, drawn from a seeded generator
# ---------------------------------------------------------------------------


class Batches:
    """Random (x, y) windows of block_size tokens from train.bin / val.bin.

    Windows are drawn for the whole global batch of a step from one seeded
    generator, identical on every process; process r takes micro-batches
    r, r + world, ... So the data order depends only on the seed and the
    global batch, not on how many processes share it, and saving the
    generator's state is enough to resume exactly.

    With `bos_token` set, windows start only at that token's positions (document
    starts): the generator draws among them instead of among all positions.
    """

    def __init__(self, folder, block_size, batch_size, runtime, seed, bos_token=None):
        meta = prepare_data.load_meta(folder)
        self.data = {split: np.memmap(Path(folder) / f"{split}.bin", dtype=meta["dtype"], mode="r")
                     for split in ("train", "val")}
        for split, data in self.data.items():
            if len(data) <= block_size + 1:
                raise ConfigError(f"the {split} split of {folder} has {len(data)} tokens, "
                                  f"fewer than block_size + 1 = {block_size + 1}: use a smaller block_size")
        self.block_size, self.batch_size, self.runtime, self.seed = block_size, batch_size, runtime, seed
        self.starts = None if bos_token is None else {
            split: document_starts(data, bos_token, block_size, folder, split) for split, data in self.data.items()}
        self.generator = torch.Generator().manual_seed(seed)

    def windows(self, split, starts):
        offsets = starts.numpy()[:, None] + np.arange(self.block_size + 1)
        chunk = torch.from_numpy(self.data[split][offsets].astype(np.int64))
        x, y = chunk[:, :-1], chunk[:, 1:]
        if self.runtime.device_type == "cuda":
            return (x.pin_memory().to(self.runtime.device, non_blocking=True),
                    y.pin_memory().to(self.runtime.device, non_blocking=True))
        return x.to(self.runtime.device), y.to(self.runtime.device)

    def _starts(self, split, rows, generator):
        if self.starts is not None:
            allowed = self.starts[split]
            return allowed[torch.randint(len(allowed), (rows, self.batch_size), generator=generator)]
        high = len(self.data[split]) - self.block_size - 1
        return torch.randint(high, (rows, self.batch_size), generator=generator)

    def train_step(self, micro_steps):
        """This process's micro-batches for one optimizer step."""
        starts = self._starts("train", micro_steps, self.generator)
        mine = starts[self.runtime.rank::self.runtime.world_size]
        return [self.windows("train", row) for row in mine]

    def eval_set(self, split, batches):
        """The same fixed evaluation batches at every evaluation, shared out over the processes."""
        starts = self._starts(split, batches, torch.Generator().manual_seed(self.seed + 1))
        return [self.windows(split, row) for row in starts[self.runtime.rank::self.runtime.world_size]]


def document_starts(data, bos_token, block_size, folder, split, chunk=1 << 24):
    """Positions of `bos_token` in `data` with a whole window (block_size + 1 tokens) after them,
    found chunk by chunk so that memory does not grow with the dataset."""
    usable = len(data) - block_size - 1
    found = [np.flatnonzero(data[i:min(i + chunk, usable + 1)] == bos_token) + i
             for i in range(0, usable + 1, chunk)]
    starts = np.concatenate(found)
    if len(starts) == 0:
        raise ConfigError(f"the {split} split of {folder} has no BOS token with block_size + 1 = {block_size + 1} "
                          "tokens after it: use a smaller block_size or --bos_aligned=false")
    return torch.from_numpy(starts.astype(np.int64))


def bos_token(cfg, meta):
    """The BOS id windows start at when cfg.bos_aligned, else None."""
    if not cfg.bos_aligned:
        return None
    if "bos_token" not in meta:
        raise ConfigError(f"bos_aligned=true needs document starts, and dataset '{cfg.dataset}' has no bos_token "
                          "in its meta.json: use --bos_aligned=false or a dataset with them (e.g. --dataset=backcopy)")
    return meta["bos_token"]


def dataset_folder(cfg, runtime):
    """The prepared dataset, preparing a built-in one on first use."""
    folder = prepare_data.dataset_dir(cfg.data_dir, cfg.dataset)
    if not prepare_data.is_prepared(folder):
        if cfg.dataset not in prepare_data.BUILTIN_DATASETS:
            raise ConfigError(f"no prepared dataset '{cfg.dataset}' in {folder}: run "
                              f"python prepare_data.py --dataset={cfg.dataset} --source=PATH")
        if runtime.master:
            prepare_data.prepare(prepare_data.DataConfig(dataset=cfg.dataset, data_dir=cfg.data_dir))
        if runtime.world_size > 1:
            dist.barrier()
    return folder


# ---------------------------------------------------------------------------
# Run folders: one run at a time in each
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def lock_folder(folder):
    """Hold `folder` for this process: a second process that asks for it stops with a message.

    The lock is an flock on `folder/.lock`, which the operating system drops when the process
    ends, however it ends, so a killed run leaves no stale lock behind (the file stays, with the
    last holder's PID). Orphaned checkpoint temporaries of a killed run are removed under the
    lock. Without fcntl (Windows) folders are not locked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise ConfigError(f"{folder} is in use by another run (process {holder}): wait for it to end, "
                              "or choose another folder") from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        for name in ("ckpt.pt.tmp", "metrics.jsonl.tmp"):
            (folder / name).unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------
# Checkpoints: the one place they are written and read
# ---------------------------------------------------------------------------


def save_checkpoint(path, state):
    """Write atomically: a crash mid-write never leaves a broken ckpt.pt."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "config", "meta", "step", "best_val_loss", "rng", "history")


def load_checkpoint(path, device="cpu", keys=CHECKPOINT_KEYS):
    """A checkpoint's contents, read without running any code stored in it (weights_only),
    after checking that it is a dict with `keys`; anything else is one line of error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}: train one with python train.py --out_dir={path.parent}")
    not_ours = f"{path} is not a checkpoint this project or nanoGPT wrote"
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # truncated, not a torch file, or it stores code (torch refuses to run it)
        raise ConfigError(f"{not_ours}: it cannot be read as one") from None
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{not_ours}: it holds a {type(ckpt).__name__}, not a dict")
    missing = [key for key in keys if key not in ckpt]
    if missing and "model_args" in ckpt:
        raise ConfigError(f"{path} is a nanoGPT checkpoint: train.py cannot resume it "
                          "(sample.py and analyze.py read it)")
    if missing:
        raise ConfigError(f"{not_ours}: it has no {', '.join(map(repr, missing))}")
    return ckpt


def check_resume(model_cfg, ckpt):
    """The model's settings (dropout aside) are fixed by its weights: a resumed run keeps them."""
    stored = pick(GPTConfig, ckpt["config"])
    fixed = [f.name for f in dataclasses.fields(GPTConfig) if f.name != "dropout"]
    if model_cfg.vocab_size == 0:  # "from the dataset", which check_same_dataset holds to the stored one
        fixed.remove("vocab_size")
    changed = [f"{key} {getattr(stored, key)!r} -> {getattr(model_cfg, key)!r}"
               for key in fixed if getattr(stored, key) != getattr(model_cfg, key)]
    if changed:
        raise ConfigError(f"--resume cannot change the model's {', '.join(changed)}: drop the override, "
                          "or train a new model in another --out_dir")


def check_same_dataset(stored, meta, folder):
    """A resumed run continues on the data it was trained on, with token ids that mean the same."""
    ids = [key for key in ("tokenizer", "chars", "vocab_size", "bos_token") if stored.get(key) != meta.get(key)]
    if ids:
        raise ConfigError(f"--resume on {folder}: its token ids mean something else than the checkpoint's "
                          f"({', '.join(ids)} differ): resume on the dataset the run was trained on")
    text = [key for key in ("source_sha256", "val_fraction") if stored.get(key) != meta.get(key)]
    if text:
        raise ConfigError(f"--resume on {folder}: it holds other data than the run was trained on "
                          f"({', '.join(text)} differ; trained on {stored.get('source')}): resume on that data, "
                          "or train a new model in another --out_dir")


def model_from_checkpoint(ckpt, device="cpu", **changes):
    """The trained GPT stored in a checkpoint of this project, in eval mode; `changes` are model
    settings that need no retraining (rope_scaling, rope_factor)."""
    return model_from_state(pick(GPTConfig, {**ckpt["config"], **changes}), ckpt["model"], device)


def model_from_state(model_cfg, state_dict, device="cpu"):
    """A GPT with `model_cfg` holding the weights of `state_dict`, in eval mode."""
    model = GPT(model_cfg)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError:
        expected, given = set(model.state_dict()), set(state_dict)
        wrong = sorted(expected ^ given) or [k for k in expected if model.state_dict()[k].shape != state_dict[k].shape]
        raise ConfigError(f"the stored weights do not fit the stored settings ({', '.join(wrong[:3])}"
                          f"{' ...' if len(wrong) > 3 else ''})") from None
    return model.to(device).eval()


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def learning_rate(step, cfg):
    """Linear warm-up, then cosine decay to min_lr (nanoGPT's schedule)."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= decay_iters:
        return cfg.min_lr
    ratio = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


@torch.no_grad()
def evaluate(model, batches, cfg, runtime):
    """Mean loss on the fixed evaluation batches of each split, averaged over processes."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        total = torch.zeros(2, device=runtime.device)
        for x, y in batches.eval_set(split, cfg.eval_iters):
            with runtime.autocast():
                _, loss = model(x, y)
            total += torch.stack([loss.float(), torch.ones((), device=runtime.device)])
        if runtime.world_size > 1:
            dist.all_reduce(total)
        out[split] = (total[0] / total[1]).item()
    model.train()
    return out


class MetricsLog:
    """metrics.jsonl in the run folder: one JSON object per line, written by process 0 only."""

    def __init__(self, path, enabled):
        self.path, self.enabled = Path(path), enabled

    def write(self, **record):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def start_at(self, step):
        """Keep only the history up to a checkpoint taken at `step` (None: a new run keeps nothing).

        The steps after the checkpoint, and a divergence among them, are trained again or
        left behind on resume, so the file holds one run's history, each step once.
        Rewritten atomically, under the run folder's lock.
        """
        if not self.enabled or not self.path.exists():
            return
        kept = []
        if step is not None:
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the last line, cut short by a kill
                    continue
                evaluation = "val_loss" in record and not record.get("diverged")
                if record["step"] < step or (record["step"] == step and evaluation):
                    kept.append(line + "\n")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)


def rng_state(batches, runtime):
    """Every random state the run depends on, so that --resume continues bit for bit."""
    torch_state = torch.get_rng_state()
    states = [torch_state]
    if runtime.world_size > 1:  # dropout differs per process: keep each one's state
        states = [None] * runtime.world_size
        dist.all_gather_object(states, torch_state)
    state = {"torch": states, "data": batches.generator.get_state()}
    if runtime.device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def restore_rng(state, batches, runtime):
    batches.generator.set_state(state["data"])
    states = state["torch"]
    if len(states) == runtime.world_size:
        torch.set_rng_state(states[runtime.rank])
    else:
        print(f"note: checkpoint was written by {len(states)} processes, not {runtime.world_size}; "
              "dropout masks will differ from the original run")
        torch.manual_seed(batches.seed + runtime.rank)
    if "cuda" in state and runtime.device_type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), runtime.device)


def load_configs(argv):
    """Parse the command line; with --resume the checkpoint's settings are the base."""
    model_cfg, train_cfg = parse_args([GPTConfig, TrainConfig], argv, prog="train.py", description=__doc__)
    ckpt = None
    if train_cfg.resume:
        ckpt = load_checkpoint(Path(train_cfg.out_dir) / "ckpt.pt")
        model_cfg, train_cfg = parse_args([GPTConfig, TrainConfig], argv, base=ckpt["config"])
        check_resume(model_cfg, ckpt)
    return model_cfg, train_cfg, ckpt


def should_compile(cfg, runtime):
    """compile=auto: on for CUDA only. On a CPU, compiling takes 15-30 s on 2 cores the first
    time and saves about 1% of the step time (bench.py), so even long runs stay eager."""
    if cfg.compile == "true" and runtime.device_type == "cpu" and not has_cpp_compiler():
        raise ConfigError("compile=true on a CPU needs a C++ compiler (g++ or clang++): install one, "
                          "or use --compile=false")
    if cfg.compile != "auto":
        return cfg.compile == "true"
    return runtime.device_type == "cuda"


def has_cpp_compiler():
    """torch.compile on a CPU writes C++ and builds it with the compiler named here."""
    return any(shutil.which(name) for name in (os.environ.get("CXX"), "g++", "clang++", "c++", "cl") if name)


def compile_model(model, runtime):
    """The model to train with, compiled: on CUDA (and MPS) torch.compile of the whole model.

    On a CPU, "regional" compilation instead: only the training forward of each block is
    compiled, and the blocks share one compiled graph, so compiling takes the time of one
    block whatever the depth. Evaluation, analysis hooks and generation (eval mode, an
    observer or a KV cache) run eagerly, which on a CPU costs less than compiling them too.
    Parameters and their names are untouched.
    """
    if runtime.device_type != "cpu":
        return torch.compile(model)
    for block in model.transformer.h:
        compiled, eager = torch.compile(block.forward), block.forward

        def forward(x, rope=None, cache=None, observe=None, block=block, compiled=compiled, eager=eager):
            if block.training and cache is None and observe is None:
                return compiled(x, rope)
            return eager(x, rope, cache, observe)
        block.forward = forward
    return model


def build_training(model_cfg, cfg, runtime, folder):
    """A freshly initialised model (seeded per process), its AdamW, the gradient scaler
    (active for fp16 only) and the batches; bench.py times exactly these."""
    torch.manual_seed(cfg.seed + runtime.rank)
    model = GPT(model_cfg).to(runtime.device)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                          runtime.device_type)
    scaler = torch.amp.GradScaler(runtime.device_type, enabled=runtime.dtype == torch.float16)
    bos = bos_token(cfg, prepare_data.load_meta(folder))
    batches = Batches(folder, model_cfg.block_size, cfg.batch_size, runtime, cfg.seed, bos)
    return model, optimizer, scaler, batches


def train_step(model, optimizer, scaler, micro_batches, runtime, params, grad_clip):
    """One optimizer step over this process's micro-batches (the learning rate is set by the caller).

    Returns the mean loss and the gradient norm as device tensors, without a
    host sync. bench.py times exactly this function.
    """
    micro_steps = len(micro_batches)
    step_loss = torch.zeros((), device=runtime.device)
    for i, (x, y) in enumerate(micro_batches):
        # Under DDP, gradients are averaged across processes only on the last micro-batch.
        sync = i == micro_steps - 1 or runtime.world_size == 1
        with (contextlib.nullcontext() if sync else model.no_sync()), runtime.autocast():
            _, loss = model(x, y)
        step_loss += loss.detach().float() / micro_steps
        scaler.scale(loss / micro_steps).backward()
    if runtime.world_size > 1:
        dist.all_reduce(step_loss, op=dist.ReduceOp.AVG)
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, norm.float()


def prepare_run(model_cfg, cfg, ckpt=None):
    """Check what a run needs from this machine and its data, before any file of the run is written:
    device, precision, threads, compilation, the number of processes, the dataset (a built-in one is
    prepared on first use), the vocabulary and the length of each split.

    Returns the runtime, the dataset folder and its meta; vocab_size=0 becomes the dataset's. With the
    checkpoint `ckpt` of a run to resume, the dataset must be the one it was trained on.
    compare.py and sweep.py call it for every run before they start the first.
    """
    runtime = setup_runtime(cfg.device, cfg.dtype, cfg.threads)
    if cfg.grad_accum_steps % runtime.world_size:
        raise ConfigError(f"grad_accum_steps={cfg.grad_accum_steps} must be a multiple of the "
                          f"{runtime.world_size} processes")
    should_compile(cfg, runtime)
    folder = dataset_folder(cfg, runtime)
    meta = prepare_data.load_meta(folder)
    if ckpt is not None:
        check_same_dataset(ckpt["meta"], meta, folder)
    if model_cfg.vocab_size == 0:
        model_cfg.vocab_size = meta["vocab_size"]
    elif model_cfg.vocab_size < meta["vocab_size"]:
        raise ConfigError(f"vocab_size={model_cfg.vocab_size} is smaller than the dataset's {meta['vocab_size']}")
    Batches(folder, model_cfg.block_size, cfg.batch_size, runtime, cfg.seed)  # each split holds a window
    return runtime, folder, meta


def main(argv=None, replace=False, quiet=False, on_eval=None):
    """Train; returns a summary dict (final and best val loss, steps, whether it diverged).

    The run folder is locked while the run owns it. replace=True starts over in a folder that
    holds a run (compare.py --fresh): its checkpoint goes only once every setting has been
    checked. quiet=True leaves out the config and the closing hints (compare.py and sweep.py
    print the settings once for all their runs).
    """
    model_cfg, cfg, ckpt = load_configs(argv)
    runtime, folder, meta = prepare_run(model_cfg, cfg, ckpt)
    with lock_folder(cfg.out_dir) if runtime.master else contextlib.nullcontext():
        return run_training(model_cfg, cfg, ckpt, runtime, folder, meta, replace, quiet, on_eval)


def run_training(model_cfg, cfg, ckpt, runtime, folder, meta, replace, quiet, on_eval=None):
    out_dir = Path(cfg.out_dir)
    if runtime.master and not (cfg.resume or replace) and (out_dir / "ckpt.pt").exists():
        raise ConfigError(f"{out_dir / 'ckpt.pt'} exists: pass --resume to continue it, "
                          "or choose another --out_dir")

    model, optimizer, scaler, batches = build_training(model_cfg, cfg, runtime, folder)
    step, best_val = 0, float("inf")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        step, best_val = ckpt["step"], ckpt["best_val_loss"]
        restore_rng(ckpt["rng"], batches, runtime)
    config_dict = to_dict(model_cfg, cfg)
    if runtime.master:
        if not quiet:
            print(f"config:\n{format_config(model_cfg, cfg)}")
        print(f"parameters: {model.num_params() / 1e6:.2f}M ({model.num_params(embeddings=False) / 1e6:.2f}M "
              f"without embeddings); device {runtime.device}, {runtime.dtype}, {runtime.world_size} process(es)")

    raw_model, params = model, list(model.parameters())
    if should_compile(cfg, runtime):
        model = compile_model(model, runtime)
    if runtime.world_size > 1:
        model = DDP(model, device_ids=[runtime.local_rank] if runtime.device_type == "cuda" else None)

    log = MetricsLog(out_dir / "metrics.jsonl", runtime.master)
    if replace and runtime.master:
        (out_dir / "ckpt.pt").unlink(missing_ok=True)
    log.start_at(step if ckpt is not None else None)
    tokens_per_step = cfg.batch_size * model_cfg.block_size * cfg.grad_accum_steps
    peak = peak_flops(runtime.device_type, runtime.dtype)
    pending = []  # (step, lr, loss, grad norm) kept on the device until the next flush: no per-step sync
    # Every step's loss and grad norm on the host, for the spike scores (OLMo 2); kept in the checkpoint.
    history = (ckpt or {}).get("history", {"loss": [], "grad_norm": []})
    # One fixed val batch, cropped to Gu et al.'s T = 64, for the sink and activation statistics.
    probe = batches.eval_set("val", 1)[0][0][:, :min(64, model_cfg.block_size)] if runtime.master else None
    last_flush = time.perf_counter()
    resumed_at = step if ckpt is not None else None
    summary = {"out_dir": str(out_dir), "diverged": False, "val_loss": None}

    def flush():
        """Write the pending steps' metrics; False if any of them was not finite."""
        nonlocal last_flush
        if not pending:
            return True
        values = torch.stack([torch.stack([loss, norm]) for _, _, loss, norm in pending]).tolist()
        elapsed = time.perf_counter() - last_flush
        tokens_per_s = tokens_per_step * len(pending) / elapsed
        mfu = raw_model.estimate_mfu(tokens_per_s, peak) if peak else None
        for (s, lr, _, _), (loss, norm) in zip(pending, values):
            if not (math.isfinite(loss) and math.isfinite(norm)):
                log.write(step=s, diverged=True, loss=str(loss), grad_norm=str(norm))
                pending.clear()
                return False
            log.write(step=s, loss=loss, lr=lr, grad_norm=norm, tokens_per_s=tokens_per_s, mfu=mfu)
            history["loss"].append(loss)
            history["grad_norm"].append(norm)
        bar.set_postfix(loss=f"{values[-1][0]:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        pending.clear()
        last_flush = time.perf_counter()
        return True

    def diverge(at_step):
        summary["diverged"] = True
        if runtime.master:
            tqdm.write(f"stopped: the loss or gradient became non-finite by step {at_step}; "
                       f"the last good checkpoint in {out_dir} is kept. Try a lower learning_rate, "
                       "qk_norm=true, or a gate.")

    def evaluate_and_save(at_step):
        nonlocal best_val
        losses = evaluate(model, batches, cfg, runtime)
        summary["val_loss"] = losses["val"]
        if not math.isfinite(losses["val"]):
            log.write(step=at_step, diverged=True, val_loss=str(losses["val"]))
            return False
        best_val = min(best_val, losses["val"])
        record = dict(step=at_step, train_loss=losses["train"], val_loss=losses["val"])
        note = ""
        if runtime.master and on_eval is not None:
            extra, note = on_eval(raw_model, probe, history, meta)
            record.update(extra)
        log.write(**record)
        state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "config": config_dict, "meta": meta, "step": at_step, "best_val_loss": best_val,
                 "rng": rng_state(batches, runtime), "history": history}
        if runtime.master:
            save_checkpoint(out_dir / "ckpt.pt", state)
            tqdm.write(f"step {at_step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                       + (f", {note}" if note else ""))
        return True

    bar = tqdm(total=cfg.max_iters, initial=step, disable=not (runtime.master and cfg.progress),
               desc="training", dynamic_ncols=True)
    model.train()
    while step < cfg.max_iters:
        if step % cfg.eval_interval == 0 and step != resumed_at:
            if not flush() or not evaluate_and_save(step):
                diverge(step)
                break
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss, norm = train_step(model, optimizer, scaler, batches.train_step(cfg.grad_accum_steps),
                                     runtime, params, cfg.grad_clip)
        pending.append((step, lr, step_loss, norm))
        step += 1
        bar.update(1)
        if step % cfg.log_interval == 0 and not flush():
            diverge(step)
            break
    else:
        if not flush() or not evaluate_and_save(step):
            diverge(step)
    bar.close()
    summary.update(step=step, best_val_loss=best_val)
    if runtime.master and not quiet and not summary["diverged"]:
        print(f"checkpoint: {out_dir / 'ckpt.pt'}, metrics: {out_dir / 'metrics.jsonl'}\n"
              f"next: python sample.py --out_dir={out_dir}    (text from the model)\n"
              f"      python -m lab.analyze --checkpoints={out_dir}    (attention sinks, activations, gates)")
    if runtime.world_size > 1:
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    result = run_main(main)
    sys.exit(1 if result["diverged"] else 0)
