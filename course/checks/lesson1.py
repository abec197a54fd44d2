"""Lesson 1: the KV cache update and top-p filtering."""

import math

import torch

import model
from course.checks import VOCAB, Exercise, Wrong, as_tensor, expect_shape, same, tiny_model


# ---------------------------------------------------------------------------
# 1.1 The KV cache update
# ---------------------------------------------------------------------------


def _check_update_alone(update):
    B, H, capacity, D = 2, 3, 8, 4
    cache_k, cache_v = torch.full((B, H, capacity, D), math.nan), torch.full((B, H, capacity, D), math.nan)
    k1, v1 = torch.randn(B, H, 3, D), torch.randn(B, H, 3, D)
    out = update(cache_k, cache_v, 0, k1, v1)
    if not isinstance(out, tuple) or len(out) != 2:
        raise Wrong("update should return a pair (keys, values)")
    keys, values = out
    if tuple(as_tensor(keys, "the keys you return").shape) == (B, H, capacity, D):
        raise Wrong("you returned all `capacity` positions, including ones not yet written: "
                    "return only the first pos + T")
    expect_shape(keys, (B, H, 3, D), "the keys returned for a 3-token prompt")
    expect_shape(values, (B, H, 3, D), "the values returned for a 3-token prompt")
    if same(keys, v1) and same(values, k1):
        raise Wrong("keys and values are swapped: return (keys, values)")
    if not (same(keys, k1) and same(values, v1)):
        raise Wrong("for the prompt (pos=0) the returned keys and values should be the prompt's own k and v")
    if torch.isnan(cache_k[:, :, :3]).any() or torch.isnan(cache_v[:, :, :3]).any():
        raise Wrong("the buffers cache_k and cache_v were not written: store k and v in them, "
                    "or the next token will not find the earlier keys")
    k2, v2 = torch.randn(B, H, 1, D), torch.randn(B, H, 1, D)
    keys, values = update(cache_k, cache_v, 3, k2, v2)
    if tuple(keys.shape) == (B, H, 1, D):
        raise Wrong("for a new token you returned only its own key and value: attention needs "
                    "every key and value so far, positions 0 .. pos+T-1")
    if tuple(keys.shape) == (B, H, capacity, D):
        raise Wrong("you returned all `capacity` positions, including ones not yet written: "
                    "return only the first pos + T")
    expect_shape(keys, (B, H, 4, D), "the keys returned at pos=3 for one new token")
    if not same(keys[:, :, :3], k1) or not same(values[:, :, :3], v1):
        raise Wrong("after the second call the first 3 positions no longer hold the prompt's keys and values: "
                    "write the new ones after them, at positions pos .. pos+T-1")
    if not same(keys[:, :, 3:], k2) or not same(values[:, :, 3:], v2):
        raise Wrong("the new token's key and value are not at position pos of what you return")
    if keys.data_ptr() != cache_k.data_ptr():
        raise Wrong("the keys you return are a new tensor, not a view of cache_k: slice the buffer "
                    "(cache_k[:, :, :end]) instead of concatenating, so that nothing is copied per token")


def _cached_generation_agrees(update):
    original = model.KVCache.update

    def student_update(self, layer, k, v):
        if self.k[layer] is None:
            shape = (k.size(0), k.size(1), self.capacity, k.size(3))
            self.k[layer], self.v[layer] = k.new_empty(shape), v.new_empty(shape)
        return update(self.k[layer], self.v[layer], self.pos, k, v)

    gpt = tiny_model(seed=1, block_size=12)
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    # Greedy, 30 tokens: past block_size, so the window jumps and the cache is re-filled.
    expected = gpt.generate(prompt, 30, temperature=0, use_cache=False)
    model.KVCache.update = student_update
    try:
        got = gpt.generate(prompt, 30, temperature=0, use_cache=True)
    finally:
        model.KVCache.update = original
    if not torch.equal(got, expected):
        first = int((got != expected).any(0).nonzero()[0])
        raise Wrong(f"inside model.py, generation with your cache differs from generation without a cache "
                    f"from token {first - prompt.size(1)} of 30 on")


def check_kv_cache(module):
    _check_update_alone(module.update)
    _cached_generation_agrees(module.update)
    return "your cache generates exactly the tokens of uncached generation (30 tokens, past block_size)"


# ---------------------------------------------------------------------------
# 1.2 Top-p filtering
# ---------------------------------------------------------------------------


def _kept(result):
    return [int(i) for i in torch.isfinite(result).nonzero()[:, -1]]


def _check_filter_alone(top_p_filter):
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted: tokens 1, 3, 2, 0
    logits = probs.log()
    result = as_tensor(top_p_filter(logits.clone(), 0.7), "top_p_filter's result")
    expect_shape(result, logits.shape, "top_p_filter's result")
    if torch.isnan(result).any():
        raise Wrong("the result holds NaN: dropped tokens should be -inf")
    if torch.isfinite(result).all() and (result >= 0).all() and (result <= 1).all():
        raise Wrong("the result looks like probabilities: return logits, with -inf for the dropped tokens")
    kept = _kept(result)
    if kept == [1]:
        raise Wrong("with probabilities [0.05, 0.5, 0.15, 0.3] and top_p=0.7 you kept only token 1 (0.5): "
                    "keep the token that carries the total past top_p too (0.5 + 0.3 >= 0.7), tokens 1 and 3")
    if kept == [0, 1] or kept == [1, 2]:
        raise Wrong("you kept the right number of tokens at the wrong places: after sorting, "
                    "put each logit back at its token id (scatter with the sort's indices)")
    if kept != [1, 3]:
        raise Wrong(f"with probabilities [0.05, 0.5, 0.15, 0.3] and top_p=0.7 the nucleus is tokens 1 and 3 "
                    f"(0.5 + 0.3 >= 0.7); you kept tokens {kept}")
    if not same(result[0, [1, 3]], logits[0, [1, 3]], atol=1e-6):
        raise Wrong("the kept logits changed: keep them as they are (softmax renormalises them when sampling)")
    if _kept(top_p_filter(logits.clone(), 0.5)) != [1]:
        raise Wrong("with top_p=0.5 only token 1 (probability 0.5) should be kept: it reaches top_p on its own")
    if _kept(top_p_filter(logits.clone(), 1.0)) != [0, 1, 2, 3]:
        raise Wrong("top_p=1 should keep every token")
    if _kept(top_p_filter(torch.tensor([[0.0, 9.0, 0.0]]), 0.1)) != [1]:
        raise Wrong("a token with almost all the probability should be kept alone when top_p is small")
    two = torch.stack([logits[0], logits[0].flip(0)])
    got = top_p_filter(two.clone(), 0.7)
    expect_shape(got, two.shape, "the result for a batch of 2 rows")
    if _kept(got[:1]) != [1, 3] or _kept(got[1:]) != [0, 2]:
        raise Wrong("with two rows, each row should be filtered on its own (sort and sum along the last dim)")


def _sampling_agrees(top_p_filter):
    gpt_logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(3)) * 2
    original = model.filter_logits

    def student_filter(logits, top_k=None, top_p=None):
        logits = original(logits, top_k=top_k)
        return top_p_filter(logits, top_p) if top_p is not None else logits

    expected = [model.sample_next(gpt_logits, 0.9, None, 0.8, torch.Generator().manual_seed(s)) for s in range(20)]
    model.filter_logits = student_filter
    try:
        got = [model.sample_next(gpt_logits, 0.9, None, 0.8, torch.Generator().manual_seed(s)) for s in range(20)]
    finally:
        model.filter_logits = original
    if not all(torch.equal(a, b) for a, b in zip(got, expected)):
        raise Wrong("inside model.py's sample_next, sampling with your filter (top_p=0.8) picks other tokens "
                    "than the reference with the same seed")


def check_top_p(module):
    _check_filter_alone(module.top_p_filter)
    _sampling_agrees(module.top_p_filter)
    return "your nucleus filter keeps the right tokens and samples as model.py does"


EXERCISES = [
    Exercise("1.1", "l1_kv_cache.py", "the KV cache update", check_kv_cache),
    Exercise("1.2", "l1_top_p.py", "top-p filtering", check_top_p),
]
