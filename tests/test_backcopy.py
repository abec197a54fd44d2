"""The Bigram-Backcopy dataset and BOS-aligned training windows."""

import json

import numpy as np
import pytest
import torch

from lab import analyze, backcopy, metrics, runs
import prepare_data
import train
from configurable import ConfigError, parse_args, run_main
from model import GPTConfig

LENGTH = 24  # tokens after each BOS


def backcopy_config(data_dir, **kw):
    settings = dict(dataset="backcopy", data_dir=str(data_dir), backcopy_length=LENGTH,
                    backcopy_train_sequences=300, backcopy_val_sequences=40)
    return backcopy.BackcopyConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def backcopy_dir(tmp_path_factory):
    """A small Bigram-Backcopy dataset, as `data_dir/backcopy/`; returns data_dir."""
    data_dir = tmp_path_factory.mktemp("bb")
    backcopy.prepare(backcopy_config(data_dir))
    return data_dir


@pytest.fixture(scope="module")
def plays_bigrams():
    """Which character follows which in the built-in plays, and how often each occurs."""
    text, _ = backcopy.plays_text()
    tokenizer = prepare_data.CharTokenizer(sorted(set(text)))
    return backcopy.bigram_statistics(np.array(tokenizer.encode(text)), tokenizer.vocab_size)


def read_split(data_dir, split):
    meta = prepare_data.load_meta(data_dir / "backcopy")
    ids = np.fromfile(data_dir / "backcopy" / f"{split}.bin", dtype=meta["dtype"]).astype(np.int64)
    return meta, ids.reshape(-1, LENGTH + 1)


def test_every_sequence_starts_with_bos_and_copies_exactly_after_triggers(backcopy_dir, plays_bigrams):
    bigrams, unigrams = plays_bigrams
    meta, seq = read_split(backcopy_dir, "train")
    bos, triggers = meta["bos_token"], meta["trigger_tokens"]
    assert len(seq) == 300 and meta["train_tokens"] == seq.size
    assert bos == len(meta["chars"]) and meta["vocab_size"] == bos + 1
    assert sorted(triggers) == sorted(np.argsort(-unigrams)[:3].tolist())  # the 3 most frequent characters
    assert sorted(meta["chars"][t] for t in triggers) == [" ", "e", "t"]
    assert (seq[:, 0] == bos).all() and not (seq[:, 1:] == bos).any()
    is_trigger = np.isin(seq, triggers)
    assert not is_trigger[:, 1].any()  # the first token is never a trigger, so copies never chain
    after_trigger = is_trigger[:, 1:-1]
    assert after_trigger.sum() > 1000
    assert (seq[:, 2:][after_trigger] == seq[:, :-2][after_trigger]).all()
    assert not (is_trigger[:, 1:-1] & is_trigger[:, 2:]).any()
    # Elsewhere, every transition is one the plays make.
    chain = ~after_trigger
    assert (bigrams[seq[:, 1:-1][chain], seq[:, 2:][chain]] > 0).all()


def test_the_chain_follows_its_transition_probabilities():
    transitions = np.array([[0.0, 0.7, 0.3], [0.5, 0.0, 0.5], [1.0, 0.0, 0.0]])
    first = np.array([0.2, 0.8, 0.0])
    seq = backcopy.backcopy_sequences(transitions, first, np.array([2]), 3, 20_000, 6,
                                          np.random.default_rng(0))
    assert (seq[:, 0] == 3).all()
    assert np.bincount(seq[:, 1], minlength=3) / 20_000 == pytest.approx([0.2, 0.8, 0.0], abs=0.02)
    prev, nxt = seq[:, 1:-1].ravel(), seq[:, 2:].ravel()
    for state in (0, 1):
        assert np.bincount(nxt[prev == state], minlength=4)[:3] / (prev == state).sum() == \
            pytest.approx(transitions[state], abs=0.02)
    copies = seq[:, 2:][seq[:, 1:-1] == 2]  # token 2 is the trigger: copy, never its row
    assert (copies == seq[:, :-2][seq[:, 1:-1] == 2]).all() and (copies == 1).mean() > 0.5


def test_same_seed_same_files_other_seed_other_files(backcopy_dir, tmp_path, capsys):
    backcopy.prepare(backcopy_config(backcopy_dir))
    assert "is up to date" in capsys.readouterr().out
    backcopy.prepare(backcopy_config(tmp_path / "again"))
    backcopy.prepare(backcopy_config(tmp_path / "seed1", backcopy_seed=1))
    for split in ("train", "val"):
        first = (backcopy_dir / "backcopy" / f"{split}.bin").read_bytes()
        assert (tmp_path / "again" / "backcopy" / f"{split}.bin").read_bytes() == first
        assert (tmp_path / "seed1" / "backcopy" / f"{split}.bin").read_bytes() != first
    # Another setting regenerates the folder.
    backcopy.prepare(backcopy_config(tmp_path / "again", backcopy_triggers=5))
    meta = json.loads((tmp_path / "again" / "backcopy" / "meta.json").read_text())
    assert len(meta["trigger_tokens"]) == 5 and meta["backcopy"]["triggers"] == 5


def test_backcopy_errors(tmp_path):
    with pytest.raises(ConfigError, match="backcopy_triggers=0 must be at least 1"):
        backcopy_config(tmp_path, backcopy_triggers=0)
    with pytest.raises(ConfigError, match="backcopy_length=1"):
        backcopy_config(tmp_path, backcopy_length=1)
    with pytest.raises(SystemExit, match="error: unknown key 'source'"):  # generated, not read
        run_main(backcopy.main, ["--source=x.txt", f"--data_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="must leave some"):
        backcopy.backcopy_chain(np.ones((3, 3)), np.array([5, 4, 3]), 3)
    with pytest.raises(ConfigError, match="backcopy_triggers=100 must leave some of the"):
        backcopy.prepare(backcopy_config(tmp_path, backcopy_triggers=100))
    assert not (tmp_path / "backcopy").exists()


# ---------------------------------------------------------------------------
# BOS-aligned batches
# ---------------------------------------------------------------------------

CPU = train.Runtime(torch.device("cpu"), torch.float32)


def test_bos_aligned_windows_start_at_bos_and_depend_only_on_the_seed(backcopy_dir):
    folder = backcopy_dir / "backcopy"
    bos = prepare_data.load_meta(folder)["bos_token"]
    batches = train.Batches(folder, 16, 8, CPU, seed=3, bos_token=bos)
    steps = [batches.train_step(2) for _ in range(3)]
    for x, y in [pair for step in steps for pair in step] + batches.eval_set("val", 2):
        assert (x[:, 0] == bos).all() and torch.equal(x[:, 1:], y[:, :-1])
    again = train.Batches(folder, 16, 8, CPU, seed=3, bos_token=bos)
    assert all(torch.equal(a[0], b[0]) for step in steps for a, b in zip(step, again.train_step(2)))
    other = train.Batches(folder, 16, 8, CPU, seed=4, bos_token=bos).train_step(2)
    assert not torch.equal(other[0][0], steps[0][0][0])
    # Random windows (the default) do not start at BOS.
    plain = train.Batches(folder, 16, 8, CPU, seed=3).train_step(4)
    assert not all((x[:, 0] == bos).all() for x, _ in plain)


def test_bos_aligned_batches_are_split_over_processes_as_before(backcopy_dir):
    folder = backcopy_dir / "backcopy"
    bos = prepare_data.load_meta(folder)["bos_token"]
    single = train.Batches(folder, 16, 4, CPU, seed=5, bos_token=bos).train_step(4)
    ranks = [train.Batches(folder, 16, 4, train.Runtime(torch.device("cpu"), torch.float32, rank, rank, 2),
                           seed=5, bos_token=bos).train_step(4) for rank in range(2)]
    for i, (x, _) in enumerate(single):
        assert torch.equal(ranks[i % 2][i // 2][0], x)  # rank r takes micro-batches r, r + 2, ...


def test_windows_start_only_at_bos_positions_with_room_after_them(tmp_path):
    # The end of a document, then documents of 3 to 8 tokens: BOS (id 9) then tokens;
    # the last BOS has too little after it.
    stream = [5, 6, 7, 9, 1, 2, 9, 3, 4, 5, 6, 7, 8, 1, 9, 2, 3, 4, 5, 9, 1, 2]
    meta = {"dtype": "uint16", "vocab_size": 10, "bos_token": 9, "tokenizer": "char", "chars": list("abcdefghi")}
    prepare_data.write_dataset(tmp_path, np.array(stream, dtype=np.uint16), np.array(stream, dtype=np.uint16), meta)
    starts = train.document_starts(np.array(stream), 9, 4, tmp_path, "train")
    assert starts.tolist() == [3, 6, 14]  # 19 has only 2 tokens after it, a window needs 5
    x, y = train.Batches(tmp_path, 4, 50, CPU, seed=0, bos_token=9).train_step(1)[0]
    assert (x[:, 0] == 9).all() and len({tuple(row) for row in x.tolist()}) == 3
    with pytest.raises(ConfigError, match="no BOS token with block_size \\+ 1 = 20"):
        train.Batches(tmp_path, 19, 2, CPU, seed=0, bos_token=9)


def test_bos_aligned_training_logs_the_query_classes(backcopy_dir, data_dir, tmp_path):
    common = ["--n_layer=2", "--n_head=1", "--n_embd=16", "--block_size=16", "--batch_size=8", "--max_iters=4",
              "--eval_interval=2", "--eval_iters=1", "--progress=false", "--device=cpu", "--bos_aligned=true"]
    model_cfg, cfg = parse_args([GPTConfig, train.TrainConfig], [f"--data_dir={backcopy_dir}", "--dataset=backcopy",
                                                                 f"--out_dir={tmp_path / 'bb'}", *common])
    train.train(model_cfg, cfg, on_eval=metrics.eval_hook(cfg.spike_window))
    evals = [r for r in map(json.loads, open(tmp_path / "bb" / "metrics.jsonl")) if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    for key in ("bos_attn_dormant", "bos_attn_active", "gate_dormant", "gate_active"):
        assert all(len(r[key]) == 2 and all(0 <= v <= 1 for v in r[key]) for r in evals), key
    # analyze.py measures on BOS-aligned sequences, as the run trained, and splits by class.
    result = analyze.analyze_checkpoint(tmp_path / "bb" / "ckpt.pt", num_sequences=6, seq_len=16, batch_size=4)
    per_layer = result["per_layer"]
    assert result["f_attn"] == pytest.approx(np.mean(per_layer["first_token_attn"]))
    for key in ("bos_attn_dormant", "bos_attn_active", "gate_dormant", "value_norm_bos", "resid_norm_other"):
        assert len(per_layer[key]) == 2, key
    assert np.isfinite(result["loss_first_key_masked_change"]) and np.isfinite(result["loss_gates_open_change"])
    table = analyze.format_table({"bb": result}, num_sequences=6)
    for label in ("BOS attn dormant / active, layer 1", "gate dormant / active, layer 0",
                  "value norm BOS / other, layer 0", "residual norm BOS / other, layer 1",
                  "loss change, BOS key masked", "loss change, gates forced open"):
        assert label in table
    with pytest.raises(ConfigError, match="bos_aligned=true needs document starts, and dataset 'tiny' has no bos"):
        train.main([f"--data_dir={data_dir}", "--dataset=tiny", f"--out_dir={tmp_path / 'tiny'}", *common])


def test_the_lab_generates_the_backcopy_dataset_on_first_use(tmp_path, monkeypatch):
    import dataclasses
    made, real = [], backcopy.prepare

    def small(cfg):  # the real generator, with fewer sequences
        made.append(cfg.data_dir)
        return real(dataclasses.replace(cfg, backcopy_train_sequences=200, backcopy_val_sequences=20))

    monkeypatch.setattr(backcopy, "prepare", small)
    settings = {**runs.run_settings(runs.shared_settings(*parse_args(
        [GPTConfig, train.TrainConfig], [f"--data_dir={tmp_path}", "--dataset=backcopy", "--device=cpu"])), "none")}
    with pytest.raises(ConfigError, match="run python -m lab.backcopy"):
        train.prepare_run(GPTConfig(gate="none"), train.TrainConfig(data_dir=str(tmp_path), dataset="backcopy"))
    runs.check_runs([settings, settings])
    assert made == [str(tmp_path)] and prepare_data.is_prepared(tmp_path / "backcopy")  # once
