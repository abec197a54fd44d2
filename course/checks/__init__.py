"""The tests behind `python -m course.check`, one module per lesson, and what they share."""

from dataclasses import dataclass
from typing import Callable

import torch

from model import GPT, GPTConfig

VOCAB = 29


class Wrong(Exception):
    """A check that failed, with a message written for the student."""


@dataclass(frozen=True)
class Exercise:
    id: str  # "lesson.number"
    file: str  # the same name in course/exercises/ (the stub) and course/solutions/
    title: str
    check: Callable  # check(module): raises Wrong with a plain explanation; returns a line on success


def tiny_model(seed=0, **settings):
    """A small random GPT in float64 (exact comparisons), in eval mode."""
    base = dict(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=4, n_embd=32, gate="elementwise")
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**base, **settings})).double().eval()


def as_tensor(value, what):
    if not isinstance(value, torch.Tensor):
        raise Wrong(f"{what} should be a torch.Tensor, but your function returned {type(value).__name__}")
    return value


def expect_shape(value, shape, what):
    as_tensor(value, what)
    if tuple(value.shape) != tuple(shape):
        raise Wrong(f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}")


def same(a, b, atol=1e-9):
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=0)


def expect_number(value, what):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Wrong(f"{what} should be a number, but your function returned {type(value).__name__}") from None
