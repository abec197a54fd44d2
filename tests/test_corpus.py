"""python -m lab.corpus: documents and BOS tokens, streaming in batches, worker processes, JSON Lines,
Hugging Face datasets, up-to-date checks, killed runs. CPU only, no network."""

import gzip
import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tiktoken

import prepare_data
from configurable import ConfigError, run_main
from lab import corpus as lab_corpus
from lab.corpus import CorpusConfig, prepare
from prepare_data import load_meta, tokenizer_from_meta
from test_data import EXPECTED, PLAY, TEXT, decoded, read_split, snapshot, tiny_encoding, write

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
    folder = prepare(CorpusConfig(dataset="notes", source=str(source), data_dir=str(tmp_path), documents="file",
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
    folder = prepare(CorpusConfig(dataset="b", source=str(source), data_dir=str(tmp_path), documents="block"))
    # Blocks are separated by blank lines (spaces allowed); the leading blank lines are no document.
    assert documents_in(folder) == ["first block\nstill first\n\n \t\n", "second\n\n\n", "third\n"]
    meta = load_meta(folder)
    # 10% of the tokens fall inside the last document, and there is no later one: val starts at it.
    assert tokenizer_from_meta(meta).decode(read_split(folder, meta, "val")) == "third\n"
    single = write(tmp_path / "one.txt", "just one document, no blank line\n")
    with pytest.raises(ConfigError, match="the source is a single document: cannot split it"):
        prepare(CorpusConfig(dataset="one", source=str(single), data_dir=str(tmp_path), documents="block"))


def test_documents_in_the_plays(tmp_path):
    write(tmp_path / "plays" / "a.md", PLAY)
    write(tmp_path / "plays" / "b.md", PLAY.replace("RODERIGO", "CASSIO"))
    source, text = str(tmp_path / "plays"), EXPECTED + "\n\n" + EXPECTED.replace("RODERIGO", "CASSIO") + "\n"
    found = {}
    for unit in ("file", "scene", "block"):
        folder = prepare(CorpusConfig(source=source, data_dir=str(tmp_path / unit), documents=unit))
        found[unit] = documents_in(folder)
        assert "".join(found[unit]) == text  # the same text, cut at different places
    assert len(found["file"]) == 2 and found["file"][0] == EXPECTED + "\n\n"
    assert len(found["scene"]) == 4 and found["scene"][1] == EXPECTED[EXPECTED.index("OTHELLO"):] + "\n\n"
    assert len(found["block"]) == 6 and found["block"][:3] == [s + "\n\n" for s in EXPECTED.split("\n\n")]
    assert prepare_data.play_to_text(PLAY) == "\n\n".join(prepare_data.play_to_scenes(PLAY))
    with pytest.raises(ConfigError, match="documents=scene needs the shakespeare plays"):
        CorpusConfig(dataset="mine", documents="scene")
    with pytest.raises(ConfigError, match="bad value 'speech' for 'documents': choose none, file, record, block, "):
        CorpusConfig(documents="speech")


def test_documents_with_tiktoken_use_endoftext(tmp_path, eot_tiktoken):
    source = tmp_path / "notes"
    write(source / "a.txt", "the thin theme\n")
    write(source / "b.txt", "Plain <|endoftext|> in a file is text.\n")
    folder = prepare(CorpusConfig(dataset="bpe", source=str(source), tokenizer="tiny_eot", data_dir=str(tmp_path),
                                documents="file", val_fraction=0.2))
    meta, ids = all_ids(folder)
    assert meta["bos_token"] == 260 and meta["vocab_size"] == 261 and list(ids).count(260) == 2
    tokenizer = tokenizer_from_meta(meta)
    # BOS decodes to the visible "<|endoftext|>"; the same characters in text or a prompt stay plain text.
    assert tokenizer.decode(ids) == ("<|endoftext|>the thin theme\n\n"
                                     "<|endoftext|>Plain <|endoftext|> in a file is text.\n")
    assert 260 not in tokenizer.encode("a prompt with <|endoftext|>")
    with pytest.raises(ConfigError, match="tokenizer 'tiny' has no <|endoftext|> token to mark documents with"):
        prepare(CorpusConfig(dataset="bpe2", source=str(source), tokenizer="tiny", data_dir=str(tmp_path),
                           documents="file"))
    assert not (tmp_path / "bpe2").exists()



def test_documents_none_is_the_text_as_before(tmp_path):
    source = write(tmp_path / "text.txt", TEXT)
    plain = prepare(CorpusConfig(dataset="plain", source=str(source), data_dir=str(tmp_path)))
    blocks = prepare(CorpusConfig(dataset="blocks", source=str(source), data_dir=str(tmp_path), documents="block"))
    meta, ids = all_ids(plain)
    assert "bos_token" not in meta and meta["documents"] == "none"
    assert np.array_equal(ids, prepare_data.CharTokenizer(sorted(set(TEXT))).encode(TEXT))
    bos_meta, bos_ids = all_ids(blocks)
    assert np.array_equal(bos_ids[bos_ids != bos_meta["bos_token"]], ids)  # the same ids, plus the BOS tokens
    assert bos_meta["num_documents"] == 21 == TEXT.count("\n\n") + 1


# ---------------------------------------------------------------------------
# Streaming: any size in batches, worker processes, atomic and idempotent
# ---------------------------------------------------------------------------

def texts_in(folder):
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
    texts = texts_in(tmp_path / "src")
    whole = "\n\n".join(t.strip("\n") for t in texts) + "\n"
    cfg = dict(dataset="s", source=str(tmp_path / "src"), tokenizer=tokenizer, documents=unit, val_fraction=0.25)
    in_one_batch = prepare(CorpusConfig(**cfg, data_dir=str(tmp_path / "one"), workers=1))
    monkeypatch.setattr(lab_corpus, "BATCH_CHARS", 50)  # dozens of batches, documents cut across them
    streamed = prepare(CorpusConfig(**cfg, data_dir=str(tmp_path / "streamed"), workers=2))
    assert snapshot(streamed) == snapshot(in_one_batch)  # byte-identical bins and meta
    if unit == "none":  # ... and the same bins as prepare_data.py, which encodes the whole text at once
        lecture = prepare_data.prepare(prepare_data.DataConfig(dataset="s", source=str(tmp_path / "src"),
                                       tokenizer=tokenizer, val_fraction=0.25, data_dir=str(tmp_path / "lecture")))
        assert {k: v for k, v in snapshot(lecture).items() if k != "meta.json"} == \
            {k: v for k, v in snapshot(streamed).items() if k != "meta.json"}

    # ... and both equal the whole text (or each document) encoded at once, in memory.
    meta, ids = all_ids(streamed)
    tokenizer_ = tokenizer_from_meta(meta)
    if unit == "none":
        expected = tokenizer_.encode(whole)
    else:
        docs = [t.strip("\n") + "\n\n" for t in texts] if unit == "file" else lab_corpus.split_blocks(whole)
        docs[-1] = docs[-1].rstrip("\n") + "\n"
        expected = [i for doc in docs for i in [tokenizer_.bos_token] + list(tokenizer_.encode(doc))]
    assert ids.tolist() == list(expected)
    assert meta["train_tokens"] + meta["val_tokens"] == len(expected) and meta["characters"] == len(whole)


def test_max_tokens_takes_the_first_tokens(tmp_path, monkeypatch):
    source = write(tmp_path / "text.txt", TEXT)
    monkeypatch.setattr(lab_corpus, "BATCH_CHARS", 100)
    folder = prepare(CorpusConfig(dataset="t", source=str(source), data_dir=str(tmp_path), max_tokens=1000,
                                documents="block", workers=2))
    meta, ids = all_ids(folder)
    assert len(ids) == 1000 and meta["max_tokens"] == 1000
    full = prepare(CorpusConfig(dataset="full", source=str(source), data_dir=str(tmp_path), documents="block"))
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
    folder = prepare(CorpusConfig(dataset="web", source=str(dump), data_dir=str(tmp_path), text_field="body",
                                documents="record", val_fraction=0.2))
    meta = load_meta(folder)
    assert meta["source"] == f"2 JSON Lines files from {dump}" and meta["num_documents"] == 3
    assert documents_in(folder) == ["first record\n\n", "second\nrecord\n\n", "third, gzipped \u00e9\n"]
    plain = prepare(CorpusConfig(dataset="web2", source=str(dump / "a.jsonl"), data_dir=str(tmp_path),
                               text_field="body"))
    assert decoded(plain) == "first record\n\nsecond\nrecord\n"


def test_jsonl_errors_are_clear(tmp_path):
    def attempt(records, **settings):
        source = write_jsonl(tmp_path / "bad.jsonl", records)
        return prepare(CorpusConfig(dataset="bad", source=str(source), data_dir=str(tmp_path), **settings))

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
        prepare(CorpusConfig(dataset="mixed", source=str(tmp_path / "mixed"), data_dir=str(tmp_path)))
    assert not (tmp_path / "bad").exists() and not (tmp_path / "mixed" / "mixed").exists()


def test_hf_source_without_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(SystemExit, match=r"^error: --source=hf:org/corpus needs the Hugging Face datasets package: "
                                         r"pip install datasets$"):
        run_main(lab_corpus.main, ["--dataset=web", "--source=hf:org/corpus", f"--data_dir={tmp_path}"])


def test_hf_source_streams_records(tmp_path, monkeypatch, eot_tiktoken):
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": f"record {i} is the thin theme\n"} for i in range(1000)])  # a stream, not a list

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    folder = prepare(CorpusConfig(dataset="web", source="hf:org/corpus", hf_config="sample", tokenizer="tiny_eot",
                                documents="record", max_tokens=500, data_dir=str(tmp_path)))
    meta, ids = all_ids(folder)
    assert calls == [("org/corpus", "sample", "train", True)]
    assert len(ids) == 500 and meta["bos_token"] == 260 and meta["source"] == "hf:org/corpus (sample), split train"
    assert documents_in(folder)[:2] == ["record 0 is the thin theme\n\n", "record 1 is the thin theme\n\n"]

    # The same dataset name, configuration, split and limit: up to date, without streaming again.
    assert prepare(CorpusConfig(dataset="web", source="hf:org/corpus", hf_config="sample", tokenizer="tiny_eot",
                              documents="record", max_tokens=500, data_dir=str(tmp_path))) == folder
    assert len(calls) == 1

    def broken(name, config, split, streaming):
        raise FileNotFoundError("Dataset 'org/nothing' doesn't exist on the Hub\nmore lines")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=broken))
    with pytest.raises(ConfigError, match=r"could not stream hf:org/nothing, split train \(FileNotFoundError: "
                                          r"Dataset 'org/nothing' doesn't exist on the Hub\): check the name"):
        prepare(CorpusConfig(dataset="web2", source="hf:org/nothing", data_dir=str(tmp_path)))


def test_unchanged_source_is_not_tokenized_again(tmp_path, monkeypatch, eot_tiktoken, capsys):
    texts = texts_in(tmp_path / "src")
    cfg = CorpusConfig(dataset="s", source=str(tmp_path / "src"), tokenizer="tiny_eot", data_dir=str(tmp_path))
    folder = prepare(cfg)
    first = snapshot(folder)

    def no_tokenizing(tokenizer, texts):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(lab_corpus, "encode_texts", no_tokenizing)
    with monkeypatch.context() as patch:
        patch.setattr(lab_corpus, "scan", lambda *args: pytest.fail("read again"))
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
from lab import corpus
when = sys.argv[1]
if when == "tokenizing":  # killed after the first batch's ids are written
    real = corpus.encoded
    def encoded(*args):
        for i, item in enumerate(real(*args)):
            if i == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            yield item
    corpus.encoded = encoded
else:  # killed between the renames of train.bin and val.bin
    real_replace = os.replace
    def replace(a, b):
        if str(b).endswith("val.bin"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(a, b)
    os.replace = replace
corpus.BATCH_CHARS = 100
corpus.main(sys.argv[2:])
"""


@pytest.mark.parametrize("when", ["tokenizing", "renaming"])
def test_killed_run_leaves_the_old_dataset_or_none(tmp_path, when, capsys):
    source = write(tmp_path / "text.txt", TEXT)
    args = ["--dataset=tiny", f"--source={source}", f"--data_dir={tmp_path}", "--workers=1"]
    folder = prepare(CorpusConfig(dataset="tiny", source=str(source), data_dir=str(tmp_path)))
    good = snapshot(folder)
    write(source, TEXT.replace("speak", "SPEAK"))
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, when, *args], cwd=Path(prepare_data.__file__).parent,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    left = snapshot(folder)
    orphans = [name for name in left if name.endswith(".partial")]
    assert orphans and all(name.startswith(".") for name in orphans)
    if when == "tokenizing":
        assert {k: v for k, v in left.items() if k not in orphans} == good  # the old dataset, whole
        assert load_meta(folder) == json.loads(good["meta.json"])
    else:
        assert not prepare_data.is_prepared(folder)  # no meta.json: no dataset, never half of one
        with pytest.raises(ConfigError, match="no prepared data"):
            load_meta(folder)

    prepare(CorpusConfig(dataset="tiny", source=str(source), data_dir=str(tmp_path)))  # cleans up and redoes it
    assert sorted(snapshot(folder)) == ["meta.json", "train.bin", "val.bin"]
    assert decoded(folder) == source.read_text()


def test_failed_run_keeps_the_previous_dataset(tmp_path, monkeypatch):
    source = write(tmp_path / "text.txt", TEXT)
    cfg = CorpusConfig(dataset="tiny", source=str(source), data_dir=str(tmp_path))
    folder = prepare(cfg)
    good = snapshot(folder)
    write(source, TEXT + "new text that needs a rewrite\n")

    def split_off_then_fail(path, val_path, at_byte):
        val_path.write_bytes(b"half")  # the val file was started when the disk filled up
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(lab_corpus, "split_off", split_off_then_fail)
        with pytest.raises(OSError, match="disk full"):
            prepare(cfg)
    assert snapshot(folder) == good  # untouched, and no temporary files left behind

    def failing_encode(tokenizer, texts):
        raise RuntimeError("boom")

    monkeypatch.setattr(lab_corpus, "encode_texts", failing_encode)
    with pytest.raises(RuntimeError, match="boom"):  # raised in a worker process, passed on
        prepare(cfg)
    assert snapshot(folder) == good




def test_jsonl_lone_surrogates_are_replaced_and_said_once(tmp_path, capsys, eot_tiktoken):
    """JSON allows "\\ud800", which is no character: a char vocabulary holding it could not be written as
    UTF-8 (sample.py would fail on its output). Replaced by U+FFFD, as the tiktoken path does."""
    source = write(tmp_path / "s.jsonl", '{"text": "a \\ud800 b"}\n{"text": "plain"}\n{"text": "c \\udfff"}\n')
    folder = prepare(CorpusConfig(dataset="s", source=str(source), data_dir=str(tmp_path), val_fraction=0.2))
    out = capsys.readouterr().out
    assert out.count("lone surrogate") == 1  # once, though the char tokenizer reads the source twice
    assert f"{source} line 1: a lone surrogate escape such as \\ud800 is no character: replaced by U+FFFD" in out
    meta = load_meta(folder)
    assert "\ufffd" in meta["chars"] and not any(0xD800 <= ord(c) <= 0xDFFF for c in meta["chars"])
    assert decoded(folder) == "a \ufffd b\n\nplain\n\nc \ufffd\n"
    decoded(folder).encode("utf-8")  # what sample.py prints
    bpe = prepare(CorpusConfig(dataset="b", source=str(source), tokenizer="tiny_eot", data_dir=str(tmp_path),
                               val_fraction=0.2))
    assert decoded(bpe) == decoded(folder)


def test_jsonl_nested_too_deeply_is_one_line_and_keeps_the_dataset(tmp_path):
    source = write(tmp_path / "deep.jsonl", '{"text": "first record"}\n{"text": "second record"}\n')
    folder = prepare(CorpusConfig(dataset="deep", source=str(source), data_dir=str(tmp_path), documents="record",
                                  val_fraction=0.5))
    good = snapshot(folder)
    write(source, '{"text": "first record"}\n' + "[" * 200_000 + "]" * 200_000 + "\n")
    with pytest.raises(SystemExit) as exit_info:
        run_main(lab_corpus.main, ["--dataset=deep", f"--source={source}", f"--data_dir={tmp_path}",
                                   "--documents=record", "--val_fraction=0.5"])
    message = str(exit_info.value.code)
    assert message == (f"error: {source} line 2 is nested too deeply to read as JSON: give one flat JSON object "
                       "per line")
    assert snapshot(folder) == good
