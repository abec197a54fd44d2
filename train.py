"""Train a gated (or plain) GPT.

    python train.py                                   # default gated model on the default data
    python train.py --gate=none                       # the same model, ungated: a plain GPT
    python train.py --config=configs/tinyshakespeare_cpu.toml
    python train.py --out_dir=out --resume            # continue exactly where a run stopped
    torchrun --standalone --nproc_per_node=8 train.py --config=configs/shakespeare_gpu.toml

Every setting is listed by `python train.py --help`. From code: train(GPTConfig(...), TrainConfig(...)).
"""

import contextlib
import ctypes
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
    bos_aligned: bool = opt(False, "start every window at a document's BOS token (needs a dataset with "
                                   "document starts, e.g. backcopy)")
    batch_size: int = opt(12, "sequences per micro-batch on each process")
    grad_accum_steps: int = opt(1, "micro-batches per optimizer step, over all processes together")
    max_iters: int = opt(2000, "optimizer steps")
    learning_rate: float = opt(1e-3, "peak learning rate")
    min_lr: float = opt(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = opt(100, "linear warm-up steps")
    lr_decay_iters: int = opt(0, "steps of cosine decay (0: max_iters)")
    optimizer: str = opt("adamw", "adamw | muon (torch.optim.Muon on the blocks' matrices, AdamW on the rest)")
    weight_decay: float = opt(0.1, "weight decay, on matrices only")
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
        if self.optimizer not in ("adamw", "muon"):
            raise ConfigError(f"bad value {self.optimizer!r} for 'optimizer': choose adamw or muon")
        if self.optimizer == "muon" and not hasattr(torch.optim, "Muon"):
            raise ConfigError(f"optimizer=muon needs torch.optim.Muon, new in PyTorch 2.9 (this is {torch.__version__}): "
                              "upgrade torch, or use --optimizer=adamw")
        for key in ("batch_size", "grad_accum_steps", "eval_interval", "eval_iters", "log_interval", "spike_window"):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be at least 1")
        if min(self.max_iters, self.warmup_iters, self.lr_decay_iters) < 0:
            raise ConfigError("max_iters, warmup_iters and lr_decay_iters cannot be negative")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate={self.learning_rate} must be positive")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ConfigError(f"min_lr={self.min_lr} must be between 0 and learning_rate={self.learning_rate}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be in [0, 1)")
        # A negative clip would reverse the gradient; a negative weight decay would grow the weights.
        for key in ("grad_clip", "weight_decay"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"{key}={getattr(self, key)} cannot be negative" + " (0 turns clipping off)" * (key == "grad_clip"))


# ---------------------------------------------------------------------------
# Device, precision and processes: set up here and nowhere else
# ---------------------------------------------------------------------------

DTYPES = ("auto", "float32", "bfloat16", "float16")


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


def check_runtime_settings(device, dtype, threads=0):
    """The device, precision and thread settings every script shares, checked where they are parsed."""
    kind, _, index = device.partition(":")
    if not (device in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and index.isdigit())):
        raise ConfigError(f"bad value {device!r} for 'device': choose auto, cpu, cuda, cuda:N (N a GPU number) or mps")
    if dtype not in DTYPES:
        raise ConfigError(f"bad value {dtype!r} for 'dtype': choose {', '.join(DTYPES)}")
    if threads < 0:
        raise ConfigError(f"threads={threads} cannot be negative (0: PyTorch's choice)")


def setup_runtime(device="auto", dtype="auto", threads=0):
    """Pick the device, precision and CPU threads, and join the process group under torchrun."""
    check_runtime_settings(device, dtype, threads)
    if threads:
        torch.set_num_threads(threads)
    rank, local_rank, world = (int(os.environ.get(key, 0)) for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    world = max(world, 1)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but PyTorch sees no CUDA GPU: use --device=cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but this PyTorch has no MPS support: use --device=cpu")
    device = torch.device(f"cuda:{local_rank}" if device == "cuda" and world > 1 else device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        reuse_freed_memory()
    if dtype == "auto":  # bf16 where the hardware runs it natively, else fp16 on older GPUs, else fp32
        if device.type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, getattr(torch, dtype), rank, local_rank, world)


def cpu_has_native_bf16():
    """x86 CPUs with AVX512-BF16 or AMX run bf16 matmuls 2-3x faster than fp32; elsewhere it is emulated."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                        "_is_amx_tile_supported"))


def reuse_freed_memory():
    """Let glibc keep freed tensors' memory for the next step instead of handing it back to the OS,
    which makes every step fault its pages in again (10-15% of the CPU speedrun's time). PyTorch's
    CPU tuning guide suggests a caching malloc for this; with glibc two settings do it."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # macOS, musl: nothing to do
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


def should_compile(cfg, runtime):
    """compile=auto: on for CUDA only; on a CPU compiling costs more time than it saves."""
    if cfg.compile == "true" and runtime.device_type == "cpu" and not any(
            shutil.which(name) for name in (os.environ.get("CXX"), "g++", "clang++", "c++") if name):
        raise ConfigError("compile=true on a CPU needs a C++ compiler (g++ or clang++): install one, or use --compile=false")
    return runtime.device_type == "cuda" if cfg.compile == "auto" else cfg.compile == "true"


# ---------------------------------------------------------------------------
# Data: random windows from the token files, drawn from a seeded generator
# ---------------------------------------------------------------------------


class Batches:
    """Random (x, y) windows of block_size tokens from train.bin / val.bin.

    The windows of a whole global batch are drawn from one seeded generator, identical on every
    process; process r takes micro-batches r, r + world, ... So the data order depends only on
    the seed and the global batch, and saving the generator's state is enough to resume exactly.
    With `bos_token`, windows start only at that token (document starts).
    """

    def __init__(self, folder, block_size, batch_size, runtime, seed, bos_token=None):
        meta = prepare_data.load_meta(folder)
        self.data = {split: np.memmap(Path(folder) / f"{split}.bin", dtype=meta["dtype"], mode="r")
                     for split in ("train", "val")}
        for split, data in self.data.items():
            if len(data) <= block_size + 1:
                raise ConfigError(f"the {split} split of {folder} has {len(data)} tokens, fewer than "
                                  f"block_size + 1 = {block_size + 1}: use a smaller block_size")
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
        return torch.randint(len(self.data[split]) - self.block_size - 1, (rows, self.batch_size), generator=generator)

    def train_step(self, micro_steps):
        """This process's micro-batches for one optimizer step."""
        starts = self._starts("train", micro_steps, self.generator)
        return [self.windows("train", row) for row in starts[self.runtime.rank::self.runtime.world_size]]

    def eval_set(self, split, batches):
        """The same fixed evaluation batches at every evaluation, shared out over the processes."""
        starts = self._starts(split, batches, torch.Generator().manual_seed(self.seed + 1))
        return [self.windows(split, row) for row in starts[self.runtime.rank::self.runtime.world_size]]


def document_starts(data, bos_token, block_size, folder, split, chunk=1 << 24):
    """Positions of `bos_token` with a whole window after them, found chunk by chunk (bounded memory)."""
    usable = len(data) - block_size - 1
    starts = np.concatenate([np.flatnonzero(data[i:min(i + chunk, usable + 1)] == bos_token) + i
                             for i in range(0, usable + 1, chunk)])
    if len(starts) == 0:
        raise ConfigError(f"the {split} split of {folder} has no BOS token with block_size + 1 = {block_size + 1} "
                          "tokens after it: use a smaller block_size or --bos_aligned=false")
    return torch.from_numpy(starts.astype(np.int64))


def dataset_folder(cfg, runtime):
    """The prepared dataset, preparing a built-in one on first use."""
    folder = prepare_data.dataset_dir(cfg.data_dir, cfg.dataset)
    if not prepare_data.is_prepared(folder):
        if cfg.dataset not in prepare_data.BUILTIN_DATASETS:
            command = prepare_data.LAB_DATASETS.get(cfg.dataset, f"python prepare_data.py --dataset={cfg.dataset} "
                                                                 "--source=PATH")
            raise ConfigError(f"no prepared dataset '{cfg.dataset}' in {folder}: run {command}")
        if runtime.master:
            prepare_data.prepare(prepare_data.DataConfig(dataset=cfg.dataset, data_dir=cfg.data_dir))
        if runtime.world_size > 1:
            dist.barrier()
    return folder


def bos_token(cfg, meta):
    """The BOS id windows start at when cfg.bos_aligned, else None."""
    if not cfg.bos_aligned:
        return None
    if "bos_token" not in meta:
        raise ConfigError(f"bos_aligned=true needs document starts, and dataset '{cfg.dataset}' has no bos_token "
                          "in its meta.json: use --bos_aligned=false or a dataset with them (e.g. --dataset=backcopy)")
    return meta["bos_token"]


# ---------------------------------------------------------------------------
# Checkpoints: the one place they are written and read
# ---------------------------------------------------------------------------

CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "config", "meta", "step", "best_val_loss", "rng", "history")


def save_checkpoint(path, state):
    prepare_data.write_atomically(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path, device="cpu", keys=CHECKPOINT_KEYS):
    """A checkpoint's contents, read without running code stored in it (weights_only), after
    checking that it is a dict with `keys`; anything else is one line of error."""
    path = Path(path)
    if not path.is_file():
        runs = sorted(p.parent.name for p in path.parent.glob(f"*/{path.name}"))
        if runs:  # a folder of runs, such as lab.compare writes
            raise ConfigError(f"no checkpoint at {path}; {path.parent} holds the runs {', '.join(runs)}: pick one, "
                              f"e.g. --out_dir={path.parent / runs[0]}")
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
        raise ConfigError(f"{path} is a nanoGPT checkpoint: train.py cannot resume it; import it for sample.py "
                          f"with python -m lab.pretrained --source={path} --out_dir=DIR")
    if missing:
        raise ConfigError(f"{not_ours}: it has no {', '.join(map(repr, missing))}")
    return ckpt


def model_from_checkpoint(ckpt, device="cpu", **changes):
    """The trained GPT of a checkpoint, in eval mode; `changes` are model settings that need no
    retraining (rope_scaling, rope_factor)."""
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


def check_resume(model_cfg, ckpt, meta, folder):
    """A resumed run keeps the model's settings (dropout aside: they are fixed by its weights) and
    continues on the data it was trained on, with token ids that mean the same."""
    stored = pick(GPTConfig, ckpt["config"])
    fixed = [f.name for f in dataclasses.fields(GPTConfig) if f.name != "dropout"
             and not (f.name == "vocab_size" and model_cfg.vocab_size == 0)]  # 0: the dataset's, checked below
    changed = [f"{key} {getattr(stored, key)!r} -> {getattr(model_cfg, key)!r}"
               for key in fixed if getattr(stored, key) != getattr(model_cfg, key)]
    if changed:
        raise ConfigError(f"--resume cannot change the model's {', '.join(changed)}: drop the override, "
                          "or train a new model in another --out_dir")
    ids = [key for key in ("tokenizer", "chars", "vocab_size", "bos_token") if ckpt["meta"].get(key) != meta.get(key)]
    if ids:
        raise ConfigError(f"--resume on {folder}: its token ids mean something else than the checkpoint's "
                          f"({', '.join(ids)} differ): resume on the dataset the run was trained on")
    text = [key for key in ("source_sha256", "val_fraction") if ckpt["meta"].get(key) != meta.get(key)]
    if text:
        raise ConfigError(f"--resume on {folder}: it holds other data than the run was trained on "
                          f"({', '.join(text)} differ; trained on {ckpt['meta'].get('source')}): resume on that "
                          "data, or train a new model in another --out_dir")


def rng_state(batches, runtime):
    """Every random state the run depends on, so that --resume continues bit for bit."""
    states = [torch.get_rng_state()]
    if runtime.world_size > 1:  # dropout differs per process: keep each one's state
        states = [None] * runtime.world_size
        dist.all_gather_object(states, torch.get_rng_state())
    state = {"torch": states, "data": batches.generator.get_state()}
    if runtime.device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def restore_rng(state, batches, runtime):
    batches.generator.set_state(state["data"])
    if len(state["torch"]) == runtime.world_size:
        torch.set_rng_state(state["torch"][runtime.rank])
    else:
        print(f"note: checkpoint was written by {len(state['torch'])} processes, not {runtime.world_size}; "
              "dropout masks will differ from the original run")
        torch.manual_seed(batches.seed + runtime.rank)
    if "cuda" in state and runtime.device_type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), runtime.device)


class MetricsLog:
    """metrics.jsonl in the run folder: one JSON object per line, written by process 0 only."""

    def __init__(self, path, enabled):
        self.path, self.enabled = Path(path), enabled

    def write(self, **record):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def start_at(self, step):
        """Keep only the history up to a checkpoint taken at `step` (None: a new run keeps nothing),
        so that the file holds one run's history, each step once, after a resume."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines() if step is not None else ():
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # the last line, cut short by a kill
                continue
            evaluation = "val_loss" in record and not record.get("diverged")
            if record["step"] < step or (record["step"] == step and evaluation):
                kept.append(line + "\n")
        prepare_data.write_atomically(self.path, lambda tmp: tmp.write_text("".join(kept)))


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
def mean_loss(model, batches, runtime):
    """The mean loss over (x, y) batches in eval mode, over all processes: every evaluation runs this."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for x, y in batches:
        with runtime.autocast():
            _, loss = model(x, y)
        total += torch.tensor([loss.item() * len(x), len(x)], dtype=torch.float64)
    if runtime.world_size > 1:
        total = total.to(runtime.device, torch.float32)
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


def train_step(model, optimizers, scaler, micro_batches, runtime, params, grad_clip):
    """One optimizer step over this process's micro-batches; returns the mean loss and the gradient
    norm as device tensors, without a host sync."""
    step_loss = torch.zeros((), device=runtime.device)
    for i, (x, y) in enumerate(micro_batches):
        # Under DDP, gradients are averaged across processes only on the last micro-batch.
        sync = i == len(micro_batches) - 1 or runtime.world_size == 1
        with (contextlib.nullcontext() if sync else model.no_sync()), runtime.autocast():
            _, loss = model(x, y)
        step_loss += loss.detach().float() / len(micro_batches)
        scaler.scale(loss / len(micro_batches)).backward()
    if runtime.world_size > 1:
        dist.all_reduce(step_loss, op=dist.ReduceOp.AVG)
    for optimizer in optimizers:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    for optimizer in optimizers:
        scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
    scaler.update()
    return step_loss, norm.float()


def prepare_run(model_cfg, cfg):
    """Check what a run needs from this machine and its data before any file of the run is written;
    returns the runtime, the dataset folder and its meta (vocab_size=0 becomes the dataset's)."""
    runtime = setup_runtime(cfg.device, cfg.dtype, cfg.threads)
    if cfg.grad_accum_steps % runtime.world_size:
        raise ConfigError(f"grad_accum_steps={cfg.grad_accum_steps} must be a multiple of the "
                          f"{runtime.world_size} processes")
    should_compile(cfg, runtime)
    folder = dataset_folder(cfg, runtime)
    meta = prepare_data.load_meta(folder)
    if model_cfg.vocab_size == 0:
        model_cfg.vocab_size = meta["vocab_size"]
    elif model_cfg.vocab_size < meta["vocab_size"]:
        raise ConfigError(f"vocab_size={model_cfg.vocab_size} is smaller than the dataset's {meta['vocab_size']}")
    Batches(folder, model_cfg.block_size, cfg.batch_size, runtime, cfg.seed, bos_token(cfg, meta))  # windows fit
    return runtime, folder, meta


def build_training(model_cfg, cfg, runtime, folder, meta):
    """A fresh model (seeded per process), its optimizers, the gradient scaler (fp16 only) and the batches."""
    torch.manual_seed(cfg.seed + runtime.rank)
    model = GPT(model_cfg).to(runtime.device)
    optimizers = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                            runtime.device_type, cfg.optimizer)
    scaler = torch.amp.GradScaler(runtime.device_type, enabled=runtime.dtype == torch.float16)
    batches = Batches(folder, model_cfg.block_size, cfg.batch_size, runtime, cfg.seed, bos_token(cfg, meta))
    return model, optimizers, scaler, batches


@contextlib.contextmanager
def run_folder(cfg):
    """Hold out_dir from reading its checkpoint to the last write (process 0 under torchrun), so that a
    second run on the folder is refused rather than rolling back what this one finishes."""
    if cfg.resume and not (Path(cfg.out_dir) / "ckpt.pt").is_file():
        load_checkpoint(Path(cfg.out_dir) / "ckpt.pt")  # says there is none, before a folder is made
    with prepare_data.hold(cfg.out_dir) if int(os.environ.get("RANK", 0)) == 0 else contextlib.nullcontext():
        yield


def train(model_cfg, cfg, on_eval=None, replace=False, quiet=False):
    """Train with these settings; returns a summary (final and best val loss, steps, whether it diverged).

    on_eval(model, probe, history, meta), called at each evaluation on process 0, returns a dict of
    numbers to add to the evaluation's record and a text for its log line: the lab's measurements.
    replace=True starts over in a folder that holds a run; quiet=True prints no config and no hints.
    """
    with run_folder(cfg):
        ckpt = load_checkpoint(Path(cfg.out_dir) / "ckpt.pt") if cfg.resume else None
        return run(model_cfg, cfg, ckpt, on_eval, replace, quiet)


def main(argv=None):
    model_cfg, cfg = parse_args([GPTConfig, TrainConfig], argv, prog="train.py", description=__doc__)
    if not cfg.resume:
        return train(model_cfg, cfg)
    with run_folder(cfg):  # the checkpoint's settings are the base, and the command line overrides them
        ckpt = load_checkpoint(Path(cfg.out_dir) / "ckpt.pt")
        model_cfg, cfg = parse_args([GPTConfig, TrainConfig], argv, base=ckpt["config"])
        return run(model_cfg, cfg, ckpt)


def run(model_cfg, cfg, ckpt, on_eval=None, replace=False, quiet=False):
    """The training loop, with out_dir held and its checkpoint (when resuming) read."""
    runtime, folder, meta = prepare_run(model_cfg, cfg)
    out_dir = Path(cfg.out_dir)
    if ckpt is not None:
        check_resume(model_cfg, ckpt, meta, folder)
    elif runtime.master and not replace and (out_dir / "ckpt.pt").exists():
        raise ConfigError(f"{out_dir / 'ckpt.pt'} exists: pass --resume to continue it, or choose another --out_dir")
    summary = {"out_dir": str(out_dir), "diverged": False, "val_loss": None}
    if ckpt is not None and ckpt["step"] >= cfg.max_iters:
        print(f"{out_dir} is at step {ckpt['step']}, max_iters={cfg.max_iters}: nothing to train "
              "(raise --max_iters to go on)")
        return {**summary, "step": ckpt["step"], "best_val_loss": ckpt["best_val_loss"]}

    model, optimizers, scaler, batches = build_training(model_cfg, cfg, runtime, folder, meta)
    step, best_val = 0, float("inf")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        states = ckpt["optimizer"] if isinstance(ckpt["optimizer"], list) else [ckpt["optimizer"]]
        if len(states) != len(optimizers):
            raise ConfigError(f"--resume cannot change the optimizer ({ckpt['config'].get('optimizer', 'adamw')} -> "
                              f"{cfg.optimizer}): drop the override, or train a new model in another --out_dir")
        for optimizer, state in zip(optimizers, states):
            optimizer.load_state_dict(state)
        if ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        step, best_val = ckpt["step"], ckpt["best_val_loss"]
        restore_rng(ckpt["rng"], batches, runtime)
    if runtime.master:
        if not quiet:
            print(f"config:\n{format_config(model_cfg, cfg)}")
        print(f"parameters: {model.num_params() / 1e6:.2f}M ({model.num_params(embeddings=False) / 1e6:.2f}M "
              f"without embeddings); device {runtime.device}, {runtime.dtype}, {runtime.world_size} process(es)")
    raw_model, params = model, list(model.parameters())
    if should_compile(cfg, runtime):
        model = torch.compile(model)
    if runtime.world_size > 1:
        model = DDP(model, device_ids=[runtime.local_rank] if runtime.device_type == "cuda" else None)

    log = MetricsLog(out_dir / "metrics.jsonl", runtime.master)
    if replace and runtime.master:
        (out_dir / "ckpt.pt").unlink(missing_ok=True)
    log.start_at(step if ckpt is not None else None)
    tokens_per_step = cfg.batch_size * model_cfg.block_size * cfg.grad_accum_steps
    pending = []  # (step, lr, loss, grad norm) kept on the device until the next flush: no per-step sync
    history = (ckpt or {}).get("history", {"loss": [], "grad_norm": []})  # every step's, for spike scores
    # One fixed val batch, cropped to Gu et al.'s T = 64, for on_eval's sink and activation statistics.
    probe = batches.eval_set("val", 1)[0][0][:, :min(64, model_cfg.block_size)] if runtime.master else None
    last_flush, resumed_at = time.perf_counter(), step if ckpt is not None else None

    def flush():
        """Write the pending steps' metrics; False if any of them was not finite."""
        nonlocal last_flush
        if not pending:
            return True
        values = torch.stack([torch.stack([loss, norm]) for _, _, loss, norm in pending]).tolist()
        tokens_per_s = tokens_per_step * len(pending) / (time.perf_counter() - last_flush)
        for (s, lr, _, _), (loss, norm) in zip(pending, values):
            if not (math.isfinite(loss) and math.isfinite(norm)):
                log.write(step=s, diverged=True, loss=str(loss), grad_norm=str(norm))
                pending.clear()
                return False
            log.write(step=s, loss=loss, lr=lr, grad_norm=norm, tokens_per_s=tokens_per_s)
            history["loss"].append(loss)
            history["grad_norm"].append(norm)
        bar.set_postfix(loss=f"{values[-1][0]:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        pending.clear()
        last_flush = time.perf_counter()
        return True

    def evaluate_and_save(at_step):
        nonlocal best_val
        losses = {split: mean_loss(model, batches.eval_set(split, cfg.eval_iters), runtime) for split in ("train", "val")}
        summary["val_loss"] = losses["val"]
        if not math.isfinite(losses["val"]):
            log.write(step=at_step, diverged=True, val_loss=str(losses["val"]))
            return False
        best_val = min(best_val, losses["val"])
        record, note = dict(step=at_step, train_loss=losses["train"], val_loss=losses["val"]), ""
        if runtime.master and on_eval is not None:
            extra, note = on_eval(raw_model, probe, history, meta)
            record.update(extra)
        log.write(**record)
        state = {"model": raw_model.state_dict(), "optimizer": [optimizer.state_dict() for optimizer in optimizers],
                 "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "config": to_dict(model_cfg, cfg), "meta": meta, "step": at_step, "best_val_loss": best_val,
                 "rng": rng_state(batches, runtime), "history": history}
        if runtime.master:
            save_checkpoint(out_dir / "ckpt.pt", state)
            tqdm.write(f"step {at_step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                       + (f", {note}" if note else ""))
        return True

    # disable=None: no bar when the output is not a terminal (a log file).
    bar = tqdm(total=cfg.max_iters, initial=step, disable=None if runtime.master and cfg.progress else True,
               desc="training", dynamic_ncols=True)
    model.train()
    while step < cfg.max_iters and not summary["diverged"]:
        if step % cfg.eval_interval == 0 and step != resumed_at:
            summary["diverged"] = not (flush() and evaluate_and_save(step))
            if summary["diverged"]:
                break
        lr = learning_rate(step, cfg)
        for group in (group for optimizer in optimizers for group in optimizer.param_groups):
            group["lr"] = lr
        step_loss, norm = train_step(model, optimizers, scaler, batches.train_step(cfg.grad_accum_steps),
                                     runtime, params, cfg.grad_clip)
        pending.append((step, lr, step_loss, norm))
        step += 1
        bar.update(1)
        if step % cfg.log_interval == 0:
            summary["diverged"] = not flush()
    if not summary["diverged"]:
        summary["diverged"] = not (flush() and evaluate_and_save(step))
    bar.close()
    if summary["diverged"] and runtime.master:
        print(f"stopped: the loss or gradient became non-finite by step {step}; the last good checkpoint in "
              f"{out_dir} is kept. Try a lower learning_rate, qk_norm=true, or a gate.")
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
