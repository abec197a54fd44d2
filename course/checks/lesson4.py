"""Lesson 4: the Bigram-Backcopy generator."""

from collections import Counter

import numpy as np
import torch

import lab.backcopy
from course.checks import Exercise, Wrong

V, BOS, TRIGGERS = 6, 6, {0, 3}


def _transitions():
    """A sparse bigram chain on 6 tokens: each token has two possible successors, 0.7 and 0.3."""
    t = torch.zeros(V, V, dtype=torch.float64)
    for a in range(V):
        t[a, (a + 1) % V], t[a, (a + 2) % V] = 0.7, 0.3
    return t


def _sequence(backcopy_sequence, transitions, length, seed):
    try:
        seq = backcopy_sequence(transitions, set(TRIGGERS), BOS, length, torch.Generator().manual_seed(seed))
    except IndexError as error:
        _diagnose_index_error(backcopy_sequence, transitions, error)
        raise
    if isinstance(seq, torch.Tensor):
        seq = seq.tolist()
    if not isinstance(seq, (list, tuple)) or not all(isinstance(x, int) for x in seq):
        raise Wrong("return a list of ints (token ids)")
    if len(seq) != length:
        raise Wrong(f"asked for {length} tokens (BOS included), you returned {len(seq)}")
    return list(seq)


def _diagnose_index_error(backcopy_sequence, transitions, error):
    """An IndexError in the student's generator: if it is the trigger-at-position-1 mistake, say so.

    When position 1 is a trigger, position 2 copies position 0, BOS; the chain is then asked for
    row transitions[BOS], one past the last row. Two-token sequences (BOS and position 1) show
    whether position 1 is ever a trigger, without touching the chain.
    """
    for seed in range(300):
        try:
            seq = backcopy_sequence(transitions, set(TRIGGERS), BOS, 2, torch.Generator().manual_seed(seed))
            first = int(list(seq)[1])
        except Exception:  # noqa: BLE001 - the probe failed too: the student sees the original error
            return
        if first in TRIGGERS:
            raise Wrong(f"position 1 is a trigger ({first}, seed {seed}): draw position 1 from the tokens that "
                        "are not triggers. After a trigger at position 1, position 2 copies position 0, BOS, and "
                        f"the chain has no row transitions[BOS]: that is your IndexError ({error})") from error


def _compare_with_repository(sequences, transitions):
    """Token frequencies of the student's sequences against lab.backcopy.backcopy_sequences on the same chain.

    The two draw from different generators (torch here, numpy there), so the sequences
    differ; their statistics must not. A difference above 0.04 is far outside chance
    (the reference solution stays within 0.02 over many seeds).
    """
    plain = sorted(set(range(V)) - TRIGGERS)
    first = np.zeros(V)
    first[plain] = 1.0 / len(plain)
    theirs = lab.backcopy.backcopy_sequences(transitions.numpy(), first, sorted(TRIGGERS), BOS, len(sequences),
                                             len(sequences[0]) - 1, np.random.default_rng(0))
    ours = np.array(sequences)
    mine, repo = (np.bincount(s[:, 1:].ravel(), minlength=V + 1)[:V] / s[:, 1:].size for s in (ours, theirs))
    worst = int(np.abs(mine - repo).argmax())
    if abs(mine[worst] - repo[worst]) > 0.04:
        raise Wrong(f"each rule holds, but token {worst} is {mine[worst]:.1%} of your tokens and {repo[worst]:.1%} "
                    "of those of lab.backcopy.backcopy_sequences (the generator of the lesson's dataset) on the "
                    "same chain: compare the two functions")


def check_backcopy(module):
    transitions = _transitions()
    pairs, starts, sequences = Counter(), Counter(), []
    for seed in range(300):
        seq = _sequence(module.backcopy_sequence, transitions, 40, seed)
        sequences.append(seq)
        if seq[0] != BOS:
            raise Wrong(f"the sequence should start with BOS ({BOS}); yours starts with {seq[0]}")
        if seq[1] in TRIGGERS:
            raise Wrong(f"position 1 is a trigger ({seq[1]}, seed {seed}): draw it from the tokens that are "
                        "not triggers")
        if BOS in seq[1:]:
            raise Wrong("BOS appears after position 0: it starts a sequence and is never drawn again")
        outside = [(t, x) for t, x in enumerate(seq[1:], 1) if not 0 <= x < V]
        if outside:
            raise Wrong(f"token {outside[0][1]} at position {outside[0][0]} is not a token id: tokens are "
                        f"0 .. {V - 1} (the rows of transitions), BOS only at position 0")
        starts[seq[1]] += 1
        for t in range(2, len(seq)):
            prev = seq[t - 1]
            if prev in TRIGGERS:
                if seq[t] != seq[t - 2]:
                    raise Wrong(f"after trigger {prev} at position {t - 1} the token should copy position {t - 2} "
                                f"({seq[t - 2]}), the token before the trigger; you have {seq[t]} (sequence {seq[:t + 1]})")
            elif transitions[prev, seq[t]] == 0:
                raise Wrong(f"token {seq[t]} follows {prev} at position {t}, a transition of probability 0: "
                            f"draw position t from row transitions[token t-1]")
            else:
                pairs[prev, seq[t]] += 1
    if set(starts) != set(range(V)) - TRIGGERS:
        raise Wrong(f"position 1 should be drawn from every non-trigger token; in 300 sequences you drew {sorted(starts)}")
    for a in set(range(V)) - TRIGGERS:
        total = pairs[a, (a + 1) % V] + pairs[a, (a + 2) % V]
        share = pairs[a, (a + 1) % V] / total
        if abs(share - 0.7) > 0.05:
            raise Wrong(f"after token {a} the chain goes to {(a + 1) % V} with probability 0.7; in your sequences "
                        f"{share:.2f} of {total} times: sample from the row with torch.multinomial")
    again = _sequence(module.backcopy_sequence, transitions, 40, 7)
    if again != _sequence(module.backcopy_sequence, transitions, 40, 7):
        raise Wrong("the same seed gave two different sequences: draw every random number from `generator`")
    if all(_sequence(module.backcopy_sequence, transitions, 40, s) == again for s in range(3)):
        raise Wrong("different seeds gave the same sequence: draw the random numbers from `generator`")
    _compare_with_repository(sequences, transitions)
    return ("BOS first, the back-copy after every trigger, bigram statistics within 0.05, seeded, and the "
            "token frequencies of lab.backcopy.backcopy_sequences")


EXERCISES = [Exercise("4.1", "l4_backcopy.py", "the Bigram-Backcopy generator", check_backcopy)]
