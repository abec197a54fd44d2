"""Models trained elsewhere, as checkpoints of this project: nanoGPT's and OpenAI's GPT-2.

    python -m lab.pretrained --source=gpt2 --out_dir=out-gpt2   # gpt2 | gpt2-medium | gpt2-large | gpt2-xl
    python -m lab.pretrained --source=../nanoGPT/out-shakespeare-char --out_dir=out-nanogpt
    python -m lab.pretrained --source=path/to/hf-gpt2 --out_dir=out-hf   # Hugging Face GPT-2 files
    python sample.py --out_dir=out-gpt2 --prompt="The attention sink"
    python -m lab.analyze --checkpoints=out-nanogpt --data=data/FOLDER   # a dataset of the model's tokenizer

--source is nanoGPT's run folder or ckpt.pt (with the dataset's meta.pkl next to it or in
data/DATASET/), one of OpenAI's GPT-2 sizes by name (downloaded once, into ~/.cache/gated-gpt/),
or a folder holding config.json and model.safetensors (or pytorch_model.bin). The import writes
DIR/ckpt.pt as train.py writes its checkpoints (model, config, meta, step), so sample.py reads
it like any run. In code, load_model(source) gives the model and its tokenizer for any of these
sources as they are, and for this project's checkpoints.

A plain GPT here (gate="none") has nanoGPT's parameter names, so both load
into the same model; GPT-2 adds biases and the tanh GELU (activation="gelu_tanh").
Nothing is unpickled that could run code: checkpoints are read with
weights_only, nanoGPT's meta.pkl admits only plain data, and safetensors
files are raw numbers.
"""

import io
import http.client
import json
import mmap
import os
import pickle
import reprlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import prepare_data
import train
from configurable import ConfigError, opt, parse_args, run_main, to_dict
from model import GPTConfig

# OpenAI's four sizes (n_layer, n_head, n_embd); all have a 50257-token vocabulary and 1024 positions.
GPT2_MODELS = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024),
               "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}
HF_URL = "https://huggingface.co/openai-community/{name}/resolve/main/{file}"
# The dataset metadata (as prepare_data.py writes it) of a model that reads GPT-2's BPE.
GPT2_META = {"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16"}


def load_model(source, device="cpu", **changes):
    """(model in eval mode, tokenizer, info) for a checkpoint, run folder, GPT-2 name or Hugging
    Face folder. info: "kind" (gated-gpt, nanogpt or gpt2, also for an imported checkpoint),
    "config" (the model's settings, flat), "step" (None when unknown) and "meta" (the dataset metadata).

    `changes` (rope_scaling, rope_factor) apply to this project's RoPE models; nanoGPT's and
    GPT-2's positions are learned, so there they are refused."""
    ckpt, _ = read_source(source)
    kind = imported_kind(ckpt)
    if kind != "gated-gpt":
        refuse_changes(changes, source)
    model = train.model_from_checkpoint(ckpt, device, **changes)
    if kind != "gated-gpt" and ckpt["meta"]["tokenizer"] == "gpt2":
        tokenizer = gpt2_tokenizer()
    else:
        tokenizer = prepare_data.tokenizer_from_meta(ckpt["meta"])
    info = {"kind": kind, "config": ckpt["config"], "step": ckpt.get("step"), "meta": ckpt["meta"]}
    return model, tokenizer, info


def read_source(source):
    """(checkpoint in this project's format, whether it was converted now): a checkpoint of this
    project as stored; nanoGPT's checkpoint or GPT-2's weights converted, marked "imported_from"."""
    path = Path(source)
    if path.is_dir() and (path / "ckpt.pt").is_file():
        path = path / "ckpt.pt"
    elif path.is_dir() and (path / "config.json").is_file():
        return gpt2_checkpoint(path, source), True
    elif not path.exists() and str(source) in GPT2_MODELS:
        return gpt2_checkpoint(download_gpt2(str(source)), source), True
    elif not path.is_file() and path.suffix != ".pt":  # a missing .pt: load_checkpoint says how to train one
        raise ConfigError(f"no checkpoint at {path}: give a ckpt.pt, a run folder, a folder of Hugging Face "
                          f"GPT-2 files, or one of {', '.join(GPT2_MODELS)}")
    ckpt = train.load_checkpoint(path, keys=("model",))
    weights = ckpt["model"]
    if not (isinstance(weights, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in weights.items())):
        raise ConfigError(f"{path} is not a checkpoint this project or nanoGPT wrote: its 'model' is not weights")
    if "model_args" in ckpt:
        return nanogpt_checkpoint(ckpt, path), True
    if "config" not in ckpt or "meta" not in ckpt:
        raise ConfigError(f"{path} is not a checkpoint this project or nanoGPT wrote: it has no 'config' "
                          "or 'meta' (nanoGPT's have 'model_args')")
    prepare_data.check_meta(ckpt["meta"], f"the dataset metadata in {path}")
    return ckpt, False


def imported_kind(ckpt):
    """nanogpt or gpt2 for a checkpoint imported by this module, gated-gpt for one train.py wrote."""
    origin = ckpt.get("imported_from")
    kind = origin.get("kind") if isinstance(origin, dict) else None
    return kind if kind in ("nanogpt", "gpt2") else "gated-gpt"


def imported(kind, source, model_cfg, state, meta, step=None):
    """A checkpoint in this project's format for a model trained elsewhere."""
    ckpt = {"model": state, "config": to_dict(model_cfg), "meta": meta,
            "imported_from": {"kind": kind, "source": str(source)}}
    return ckpt if step is None else {**ckpt, "step": step}


def refuse_changes(changes, source):
    """RoPE scaling needs RoPE: nanoGPT's and GPT-2's positions are learned embeddings."""
    if changes:
        raise ConfigError(f"{', '.join(changes)} applies to RoPE models, and {source} has learned positions: "
                          "leave it out")


def check_dataset_fits(tokenizer, model, meta, folder):
    """Refuse to measure a model on a dataset whose token ids mean something else to it."""
    same = meta["tokenizer"] == tokenizer.name and (tokenizer.name != "char" or meta["chars"] == tokenizer.chars)
    if not same or meta["vocab_size"] > model.config.vocab_size:
        raise ConfigError(f"{folder} is tokenized differently from the model ({meta['tokenizer']} with "
                          f"{meta['vocab_size']} tokens, the model reads {tokenizer.name} with "
                          f"{model.config.vocab_size}): prepare the dataset with the model's tokenizer")


def gpt2_tokenizer():
    try:
        return prepare_data.TiktokenTokenizer(prepare_data.get_tiktoken_encoding("gpt2"))
    except ConfigError:
        raise ConfigError("could not load the GPT-2 tokenizer (tiktoken downloads its 'gpt2' encoding on "
                          "first use): check your network") from None


# ---------------------------------------------------------------------------
# nanoGPT
# ---------------------------------------------------------------------------

NANOGPT_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def nanogpt_checkpoint(ckpt, path):
    """A nanoGPT checkpoint: settings in model_args, no gate, weights perhaps saved from a
    torch.compile'd model, and the vocabulary in the dataset's meta.pkl (or GPT-2's)."""
    args = ckpt["model_args"]
    missing = [key for key in NANOGPT_ARGS if not isinstance(args, dict) or key not in args]
    if missing:
        raise ConfigError(f"{path} is not a nanoGPT checkpoint: its model_args lack {', '.join(missing)}")
    try:
        model_cfg = GPTConfig(gate="none", **{key: args[key] for key in NANOGPT_ARGS})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path} is not a nanoGPT checkpoint: its model_args make no GPT ({e})") from None
    state = {key.removeprefix("_orig_mod."): value for key, value in ckpt["model"].items()}
    # nanoGPT keeps the causal mask as a buffer 'attn.bias' when flash attention is missing.
    state = {key: value for key, value in state.items() if not key.endswith(".attn.bias")}
    config = ckpt.get("config")
    dataset = config.get("dataset", "") if isinstance(config, dict) else ""
    dataset = dataset if isinstance(dataset, str) else ""
    step = ckpt.get("iter_num")
    step = step if type(step) is int else None
    meta_pkl = find_meta_pkl(path, dataset)
    if meta_pkl is not None:
        chars = read_meta_pkl(meta_pkl)
        if len(chars) != model_cfg.vocab_size:
            unused = (f"ids {len(chars)} to {model_cfg.vocab_size - 1} would have no character"
                      if len(chars) < model_cfg.vocab_size else "the model has no id for the others")
            raise ConfigError(f"{meta_pkl} does not fit {path}: it has {len(chars)} characters and the model "
                              f"reads {model_cfg.vocab_size} tokens ({unused}): give the meta.pkl of the "
                              "dataset the model was trained on")
        state, chars = in_code_point_order(state, chars)
        meta = {"tokenizer": "char", "chars": chars, "vocab_size": len(chars),
                "dtype": prepare_data.token_dtype(len(chars))}
    elif model_cfg.vocab_size >= 50257:  # nanoGPT's own rule: no meta.pkl means GPT-2's BPE
        meta = GPT2_META
    else:
        raise ConfigError(f"no meta.pkl for nanoGPT dataset '{dataset}' next to {path} or in data/{dataset}/, "
                          f"and its {model_cfg.vocab_size} tokens are not GPT-2's: copy the dataset's "
                          f"meta.pkl next to {path.name}")
    return imported("nanogpt", path, model_cfg, state, meta, step)


def in_code_point_order(state, chars):
    """The char tokenizer's ids are the characters in code-point order (as nanoGPT's prepare.py
    numbers them); characters numbered otherwise have their rows of wte (and of the tied lm_head)
    put in that order, which leaves every probability as it was."""
    order = sorted(range(len(chars)), key=chars.__getitem__)
    if order == list(range(len(chars))):
        return state, chars
    rows = torch.tensor(order)
    state = {key: value[rows] if key in ("transformer.wte.weight", "lm_head.weight") else value
             for key, value in state.items()}
    return state, [chars[i] for i in order]


def find_meta_pkl(ckpt_path, dataset):
    """meta.pkl next to the checkpoint, or in nanoGPT's data/DATASET/ beside the run folder
    or under the current folder (where nanoGPT's sample.py looks)."""
    folder = ckpt_path.parent
    candidates = [folder / "meta.pkl"]
    if dataset:
        candidates += [folder.parent / "data" / dataset / "meta.pkl", Path("data") / dataset / "meta.pkl"]
    return next((p for p in candidates if p.is_file()), None)


class Refused(pickle.UnpicklingError):
    """What PlainDataUnpickler will not load."""


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: any class or function, the way a
    pickle runs code, is refused, and so is any object from outside the file."""

    def find_class(self, module, name):
        raise Refused(f"it refers to {module}.{name}")

    def persistent_load(self, pid):
        raise Refused(f"it refers to an object outside the file, persistent id {reprlib.repr(pid)}")


def read_meta_pkl(path):
    """The characters of a nanoGPT character-level meta.pkl ({'vocab_size', 'itos', 'stoi'}), in id
    order. itos maps ids 0..n-1 to characters: a dict, as nanoGPT's prepare.py writes it, or a list;
    stoi maps them back (nanoGPT encodes with one and decodes with the other, so they must agree)."""
    try:
        meta = PlainDataUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except Refused as e:
        raise ConfigError(f"{path} is not a nanoGPT meta.pkl of plain data ({e}): it was not read") from None
    except Exception:  # truncated, not a pickle at all, unreadable
        raise ConfigError(f"{path} cannot be read as a pickle: copy the dataset's meta.pkl again") from None
    bad = f"{path} is not a nanoGPT character meta.pkl"
    if not isinstance(meta, dict):
        raise ConfigError(f"{bad}: it holds a {type(meta).__name__}, not a dict with 'itos' and 'stoi'")
    missing = [key for key in ("itos", "stoi") if key not in meta]
    if missing:
        raise ConfigError(f"{bad}: it has no {' and no '.join(map(repr, missing))}")
    itos, stoi = meta["itos"], meta["stoi"]
    if isinstance(itos, dict):
        if not (all(type(i) is int for i in itos) and set(itos) == set(range(len(itos)))):
            raise ConfigError(f"{bad}: its 'itos' is keyed by {reprlib.repr(sorted(itos, key=repr))}, "
                              f"not by the ids 0 to {len(itos) - 1}")
        chars = [itos[i] for i in range(len(itos))]
    elif isinstance(itos, list):
        chars = itos
    else:
        raise ConfigError(f"{bad}: its 'itos' is a {type(itos).__name__}, not a dict of ids to characters")
    if not chars:
        raise ConfigError(f"{bad}: its 'itos' is empty")
    for i, c in enumerate(chars):
        if not (isinstance(c, str) and len(c) == 1):
            raise ConfigError(f"{bad}: its 'itos' maps id {i} to {reprlib.repr(c)}, not to one character")
        if "\ud800" <= c <= "\udfff":
            raise ConfigError(f"{bad}: its 'itos' maps id {i} to {c!r}, half of a UTF-16 pair, which no "
                              "text can hold")
    first = {}
    for i, c in enumerate(chars):
        if c in first:
            raise ConfigError(f"{bad}: its 'itos' has {c!r} twice (ids {first[c]} and {i})")
        first[c] = i
    if not (isinstance(stoi, dict) and len(stoi) == len(chars)
            and all(type(stoi.get(c)) is int and stoi[c] == i for c, i in first.items())):
        raise ConfigError(f"{bad}: its 'stoi' is not its 'itos' the other way round (characters to ids 0 to "
                          f"{len(chars) - 1})")
    size = meta.get("vocab_size", len(chars))
    if not (type(size) is int and size == len(chars)):
        raise ConfigError(f"{bad}: its vocab_size {reprlib.repr(size)} is not the number of characters in "
                          f"its 'itos', {len(chars)}")
    return chars


# ---------------------------------------------------------------------------
# OpenAI's GPT-2, in the Hugging Face format
# ---------------------------------------------------------------------------

# Hugging Face's names for GPT-2's activation -> ours.
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def gpt2_checkpoint(folder, source):
    """GPT-2 from Hugging Face files: config.json, and model.safetensors or pytorch_model.bin."""
    cfg = read_json(folder / "config.json")
    if cfg.get("model_type") != "gpt2":
        raise ConfigError(f"{folder} holds a {cfg.get('model_type')!r} model, not GPT-2: only GPT-2 loads here")
    activation = HF_ACTIVATIONS.get(cfg.get("activation_function", "gelu_new"))
    unsupported = [key for key, ok in [
        ("activation_function", activation is not None),
        ("n_inner", cfg.get("n_inner") in (None, 4 * cfg.get("n_embd", 0))),
        ("layer_norm_epsilon", cfg.get("layer_norm_epsilon", 1e-5) == 1e-5),
        ("scale_attn_by_inverse_layer_idx", not cfg.get("scale_attn_by_inverse_layer_idx", False)),
        ("tie_word_embeddings", cfg.get("tie_word_embeddings", True))] if not ok]
    if unsupported:
        raise ConfigError(f"{folder}/config.json: this GPT-2 differs from OpenAI's in {', '.join(unsupported)}, "
                          "which the model here does not have")
    try:
        model_cfg = GPTConfig(vocab_size=cfg["vocab_size"], block_size=cfg["n_positions"], n_layer=cfg["n_layer"],
                              n_head=cfg["n_head"], n_embd=cfg["n_embd"], bias=True, dropout=0.0,
                              activation=activation, gate="none")
    except KeyError as e:
        raise ConfigError(f"{folder}/config.json has no {e.args[0]}: it is not a GPT-2 config") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{folder}/config.json makes no GPT ({e})") from None
    if (folder / "model.safetensors").is_file():
        hf_state = read_safetensors(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        try:
            hf_state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception:
            raise ConfigError(f"{folder}/pytorch_model.bin cannot be read as plain weights") from None
    else:
        raise ConfigError(f"{folder} has config.json but no model.safetensors or pytorch_model.bin")
    if not (isinstance(hf_state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in hf_state.items())):
        raise ConfigError(f"{folder}/pytorch_model.bin cannot be read as plain weights")
    return imported("gpt2", source, model_cfg, gpt2_state_dict(hf_state), GPT2_META)


def gpt2_state_dict(hf_state):
    """Hugging Face GPT-2 names and layouts -> ours. HF's Conv1D stores its weight as
    (in, out), transposed relative to nn.Linear; the output head is tied to wte."""
    state = {}
    for key, tensor in hf_state.items():
        key = key.removeprefix("transformer.")
        if key == "lm_head.weight" or key.endswith((".attn.bias", ".attn.masked_bias")):  # tied; mask buffers
            continue
        if key.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
            tensor = tensor.t()
        state[f"transformer.{key}"] = tensor
    if "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def read_json(path):
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise ConfigError(f"{path} cannot be read as JSON") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} is not a JSON object")
    return value


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path):
    """{name: tensor} of a .safetensors file: an 8-byte header length, a JSON header
    (name -> dtype, shape, byte range) and the raw numbers, mapped rather than read."""
    bad = f"{path} is not a safetensors file of float tensors"
    with open(path, "rb") as f:
        try:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (ValueError, OSError, MemoryError, RecursionError):
            raise ConfigError(bad) from None
    if not isinstance(header, dict):
        raise ConfigError(bad)
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            start, end = entry["data_offsets"]
            count = (end - start) // dtype.itemsize
            if 8 + header_len + end > len(buffer) or count != torch.Size(entry["shape"]).numel():
                raise ValueError
            tensors[name] = torch.frombuffer(buffer, dtype=dtype, count=count,
                                             offset=8 + header_len + start).view(entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{bad}: tensor {name!r} is not one") from None
    return tensors


def cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gated-gpt"


def download_gpt2(name):
    """The folder holding OpenAI's `name` in the Hugging Face format, downloaded on first use."""
    folder = cache_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    for file in ("config.json", "model.safetensors"):
        if not (folder / file).is_file():
            download(HF_URL.format(name=name, file=file), folder / file)
    return folder


def download(url, path):
    """Write `url` to `path` with a progress bar; the file appears only when complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {path.name}", disable=None) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, path)
    except (OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(f"could not download {url} ({reason}): check your network, or give a local "
                          "folder holding GPT-2's config.json and model.safetensors") from None
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# The import: any of these, written as a checkpoint of this project
# ---------------------------------------------------------------------------


@dataclass
class ImportConfig:
    source: str = opt("", "nanoGPT's ckpt.pt or run folder, gpt2 | gpt2-medium | gpt2-large | gpt2-xl, "
                          "or a folder of Hugging Face GPT-2 files")
    out_dir: str = opt("", "folder to write ckpt.pt into (then: python sample.py --out_dir=DIR)")

    def __post_init__(self):
        if not self.source or not self.out_dir:
            raise ConfigError("give what to import and where: --source=PATH_OR_NAME --out_dir=DIR")


def refuse_to_overwrite(path):
    if path.exists() or path.is_symlink():
        raise ConfigError(f"{path} exists: choose another --out_dir, or delete it to import again")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"--out_dir={path.parent} is a file, not a folder: choose a folder")


def main(argv=None):
    """Import --source into --out_dir/ckpt.pt; returns its path."""
    (cfg,) = parse_args([ImportConfig], argv, prog="-m lab.pretrained", description=__doc__)
    out = Path(cfg.out_dir) / "ckpt.pt"
    refuse_to_overwrite(out)  # before a download, and again under the lock
    ckpt, converted = read_source(cfg.source)
    if not converted:
        folder = Path(cfg.source) if Path(cfg.source).is_dir() else Path(cfg.source).parent
        raise ConfigError(f"{cfg.source} is already a checkpoint of this project: sample it as it is, with "
                          f"python sample.py --out_dir={folder}")
    model = train.model_from_checkpoint(ckpt)  # the weights fit the settings, or one line says why not
    ckpt = {**ckpt, "model": model.state_dict()}
    with prepare_data.hold(out.parent, wait=False):
        refuse_to_overwrite(out)
        prepare_data.write_atomically(out, lambda tmp: torch.save(ckpt, tmp))
    meta = ckpt["meta"]
    vocabulary = f"{len(meta['chars'])} characters" if meta["tokenizer"] == "char" else "GPT-2's BPE"
    step = f", step {ckpt['step']}" if "step" in ckpt else ""
    print(f"{cfg.source} ({imported_kind(ckpt)}{step}, {model.num_params() / 1e6:.2f}M parameters, {vocabulary}) "
          f"-> {out}\nsample it with: python sample.py --out_dir={cfg.out_dir}")
    return out


if __name__ == "__main__":
    run_main(main)
