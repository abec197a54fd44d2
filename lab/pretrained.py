"""Models for sample.py and analyze.py: this project's checkpoints, nanoGPT's, and OpenAI's GPT-2.

    load_model("out/ckpt.pt")          # a checkpoint of train.py, or nanoGPT's ckpt.pt
    load_model("gpt2")                 # gpt2 | gpt2-medium | gpt2-large | gpt2-xl, downloaded once
    load_model("path/to/folder")       # a run folder, or Hugging Face GPT-2 files (config.json and
                                       # model.safetensors or pytorch_model.bin)

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
import urllib.error
import urllib.request
from pathlib import Path

import torch
from tqdm import tqdm

import prepare_data
import train
from configurable import ConfigError, to_dict
from model import GPTConfig

# OpenAI's four sizes (n_layer, n_head, n_embd); all have a 50257-token vocabulary and 1024 positions.
GPT2_MODELS = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024),
               "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}
HF_URL = "https://huggingface.co/openai-community/{name}/resolve/main/{file}"


def load_model(source, device="cpu", **changes):
    """(model in eval mode, tokenizer, info) for a checkpoint, run folder, GPT-2 name or Hugging
    Face folder. info: "kind" (gated-gpt, nanogpt or gpt2), "config" (the settings, flat),
    "step" (None when unknown) and "meta" (the training dataset's metadata, this project's only).

    `changes` (rope_scaling, rope_factor) apply to this project's RoPE models; nanoGPT's and
    GPT-2's positions are learned, so there they are refused."""
    path = Path(source)
    if path.is_dir() and (path / "ckpt.pt").is_file():
        path = path / "ckpt.pt"
    elif path.is_dir() and (path / "config.json").is_file():
        refuse_changes(changes, path)
        return gpt2_from_folder(path, device)
    elif not path.exists() and str(source) in GPT2_MODELS:
        refuse_changes(changes, source)
        return gpt2_from_folder(download_gpt2(str(source)), device)
    elif not path.is_file() and path.suffix != ".pt":  # a missing .pt: load_checkpoint says how to train one
        raise ConfigError(f"no checkpoint at {path}: give a ckpt.pt, a run folder, a folder of Hugging Face "
                          f"GPT-2 files, or one of {', '.join(GPT2_MODELS)}")
    ckpt = train.load_checkpoint(path, device, keys=("model",))
    if not isinstance(ckpt["model"], dict):
        raise ConfigError(f"{path} is not a checkpoint this project or nanoGPT wrote: its 'model' is not weights")
    if "model_args" in ckpt:
        refuse_changes(changes, path)
        return nanogpt_model(ckpt, path, device)
    if "config" not in ckpt or "meta" not in ckpt:
        raise ConfigError(f"{path} is not a checkpoint this project or nanoGPT wrote: it has no 'config' "
                          "or 'meta' (nanoGPT's have 'model_args')")
    prepare_data.check_meta(ckpt["meta"], f"the dataset metadata in {path}")
    model = train.model_from_checkpoint(ckpt, device, **changes)
    info = {"kind": "gated-gpt", "config": ckpt["config"], "step": ckpt.get("step"), "meta": ckpt["meta"]}
    return model, prepare_data.tokenizer_from_meta(ckpt["meta"]), info


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


def nanogpt_model(ckpt, path, device):
    """A nanoGPT checkpoint: settings in model_args, no gate, weights perhaps saved from a
    torch.compile'd model, and the vocabulary in the dataset's meta.pkl (or GPT-2's)."""
    args = ckpt["model_args"]
    missing = [key for key in NANOGPT_ARGS if not isinstance(args, dict) or key not in args]
    if missing:
        raise ConfigError(f"{path} is not a nanoGPT checkpoint: its model_args lack {', '.join(missing)}")
    model_cfg = GPTConfig(gate="none", **{key: args[key] for key in NANOGPT_ARGS})
    state = {key.removeprefix("_orig_mod."): value for key, value in ckpt["model"].items()}
    # nanoGPT keeps the causal mask as a buffer 'attn.bias' when flash attention is missing.
    state = {key: value for key, value in state.items() if not key.endswith(".attn.bias")}
    model = train.model_from_state(model_cfg, state, device)
    dataset = ckpt.get("config", {}).get("dataset", "")
    meta_pkl = find_meta_pkl(path, dataset)
    if meta_pkl is not None:
        tokenizer = prepare_data.CharTokenizer(read_meta_pkl(meta_pkl))
    elif model_cfg.vocab_size >= 50257:  # nanoGPT's own rule: no meta.pkl means GPT-2's BPE
        tokenizer = gpt2_tokenizer()
    else:
        raise ConfigError(f"no meta.pkl for nanoGPT dataset '{dataset}' next to {path} or in data/{dataset}/, "
                          f"and its {model_cfg.vocab_size} tokens are not GPT-2's: copy the dataset's "
                          f"meta.pkl next to {path.name}")
    info = {"kind": "nanogpt", "config": {**to_dict(model_cfg), "dataset": dataset},
            "step": ckpt.get("iter_num"), "meta": None}
    return model, tokenizer, info


def find_meta_pkl(ckpt_path, dataset):
    """meta.pkl next to the checkpoint, or in nanoGPT's data/DATASET/ beside the run folder
    or under the current folder (where nanoGPT's sample.py looks)."""
    folder = ckpt_path.parent
    candidates = [folder / "meta.pkl"]
    if dataset:
        candidates += [folder.parent / "data" / dataset / "meta.pkl", Path("data") / dataset / "meta.pkl"]
    return next((p for p in candidates if p.is_file()), None)


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: any class or function, the way a
    pickle runs code, is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")


def read_meta_pkl(path):
    """The characters of a nanoGPT character-level meta.pkl ({'vocab_size', 'itos', 'stoi'}), in id order."""
    try:
        meta = PlainDataUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except Exception as e:  # refused or malformed
        raise ConfigError(f"{path} is not a nanoGPT meta.pkl of plain data ({e}): it was not read") from None
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not (isinstance(itos, dict) and sorted(itos) == list(range(len(itos)))
            and all(isinstance(c, str) for c in itos.values())):
        raise ConfigError(f"{path} is not a nanoGPT character meta.pkl: it needs 'itos', ids 0..n-1 -> strings")
    return [itos[i] for i in range(len(itos))]


# ---------------------------------------------------------------------------
# OpenAI's GPT-2, in the Hugging Face format
# ---------------------------------------------------------------------------

# Hugging Face's names for GPT-2's activation -> ours.
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def gpt2_from_folder(folder, device="cpu"):
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
    if (folder / "model.safetensors").is_file():
        hf_state = read_safetensors(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        try:
            hf_state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception:
            raise ConfigError(f"{folder}/pytorch_model.bin cannot be read as plain weights") from None
    else:
        raise ConfigError(f"{folder} has config.json but no model.safetensors or pytorch_model.bin")
    model = train.model_from_state(model_cfg, gpt2_state_dict(hf_state), device)
    info = {"kind": "gpt2", "config": {**to_dict(model_cfg), "weights": str(folder)}, "step": None, "meta": None}
    return model, gpt2_tokenizer(), info


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
    except (OSError, ValueError):
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
        except (ValueError, OSError, MemoryError):
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
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {path.name}") as bar:
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
