"""Exercise 1.1: the KV cache update (lesson 1).

When a GPT generates, token by token, every layer needs the keys and values of
all the tokens so far. Recomputing them for the whole context at every step
costs a full forward pass per token; a KV cache keeps them instead. model.py's
`KVCache` allocates, once per layer, two buffers of `capacity` (= block_size)
positions and calls `update` with the keys and values of the new token(s).

Write `update`. The checker puts it inside model.py's KVCache and checks that
cached generation gives exactly the tokens that generation without a cache gives.

    python -m course.check 1.1
"""


def update(cache_k, cache_v, pos, k, v):
    """Store the new keys and values after the cached ones; return all of them so far.

    cache_k, cache_v: (B, H, capacity, D) buffers; positions 0 .. pos-1 hold the
        keys and values of the tokens seen so far, the rest is not yet written.
    pos: how many positions are filled (0 for the prompt).
    k, v: (B, H, T, D), the keys and values of the T new tokens.

    Returns (keys, values), each (B, H, pos + T, D): every key and value so far,
    the new ones included. Write into the buffers (so the next call finds these
    positions filled) and return views of them; do not allocate new tensors.
    """
    raise NotImplementedError
