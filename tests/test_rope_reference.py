"""The RoPE context extensions against the implementation most people run: transformers' modeling_rope_utils."""

import pytest
import torch

from model import GPTConfig, rope_attention_scale, rope_frequencies

rope_utils = pytest.importorskip("transformers.modeling_rope_utils",
                                 reason="transformers is not installed: pip install transformers to compare "
                                        "yarn and dynamic_ntk with its rope_utils")
from transformers import LlamaConfig  # noqa: E402

BASE = 10000.0
GRID = [(d, s, L) for d in (16, 32, 64) for s in (2.0, 4.0, 8.0) for L in (64, 256)]


def ours(d, s, L, method):
    return GPTConfig(vocab_size=8, block_size=L, n_head=2, n_embd=2 * d, pos_emb="rope", rope_base=BASE,
                     rope_scaling=method, rope_factor=s)


def theirs(d, s, L, rope_type):
    """A transformers 5.x config with head size d, trained length L and RoPE scaling `rope_type` by s."""
    params = {"rope_type": rope_type, "rope_theta": BASE, "factor": s}
    if rope_type == "yarn":
        params["original_max_position_embeddings"] = L
    config = LlamaConfig(hidden_size=2 * d, num_attention_heads=2, head_dim=d, max_position_embeddings=L,
                         rope_parameters=params)
    assert config.head_dim == d and config.rope_parameters["rope_type"] == rope_type
    return config


@pytest.mark.parametrize("d, s, L", GRID)
def test_yarn_matches_transformers(d, s, L):
    inv_freq, attention_factor = rope_utils.ROPE_INIT_FUNCTIONS["yarn"](theirs(d, s, L, "yarn"), "cpu")
    config = ours(d, s, L, "yarn")
    got = rope_frequencies(config, round(s * L))
    assert got.shape == inv_freq.shape
    assert torch.allclose(got.double(), inv_freq.double(), rtol=0, atol=1e-6)
    assert rope_attention_scale(config) == pytest.approx(attention_factor, abs=1e-6)
    # Not a vacuous match: YaRN changes some frequencies and keeps the fastest.
    plain = rope_frequencies(ours(d, 1.0, L, "none"), L)
    assert not torch.equal(got, plain) and got[0] == plain[0]


@pytest.mark.parametrize("d, s, L", GRID)
def test_dynamic_ntk_matches_transformers(d, s, L):
    config, reference = ours(d, s, L, "dynamic_ntk"), theirs(d, s, L, "dynamic")
    for n in (L + 1, 2 * L, round(s * L), 3 * round(s * L)):
        inv_freq, attention_factor = rope_utils.ROPE_INIT_FUNCTIONS["dynamic"](reference, "cpu", seq_len=n)
        assert torch.allclose(rope_frequencies(config, n).double(), inv_freq.double(), rtol=0, atol=1e-6), n
        assert rope_attention_scale(config) == attention_factor == 1.0
    # Up to the trained length both are plain RoPE.
    inv_freq, _ = rope_utils.ROPE_INIT_FUNCTIONS["dynamic"](reference, "cpu", seq_len=L)
    plain = rope_frequencies(ours(d, 1.0, L, "none"), L)
    assert torch.allclose(inv_freq, plain, rtol=0, atol=1e-6)
    assert torch.equal(rope_frequencies(config, L), plain) and torch.equal(rope_frequencies(config, L // 2), plain)


@pytest.mark.parametrize("d, s, L", GRID[::5])
def test_pi_and_ntk_match_transformers(d, s, L):
    """pi is transformers' "linear"; ntk is its "dynamic" at factor 1 and length s L."""
    inv_freq, _ = rope_utils.ROPE_INIT_FUNCTIONS["linear"](theirs(d, s, L, "linear"), "cpu")
    assert torch.allclose(rope_frequencies(ours(d, s, L, "pi"), L).double(), inv_freq.double(), rtol=0, atol=1e-6)
    inv_freq, _ = rope_utils.ROPE_INIT_FUNCTIONS["dynamic"](theirs(d, 1.0, L, "dynamic"), "cpu", seq_len=round(s * L))
    assert torch.allclose(rope_frequencies(ours(d, s, L, "ntk"), L).double(), inv_freq.double(), rtol=0, atol=1e-6)
