import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from configurable import ConfigError
from model import GPT, GPTConfig, KVCache, filter_logits
from lab.metrics import instrumented  # the tests may reach into the lab

VOCAB = 37

VARIANTS = [
    dict(gate="none"),
    dict(gate="none", pos_emb="rope", qk_norm=True),
    dict(gate="elementwise"),
    dict(gate="headwise"),
    dict(gate="elementwise", pos_emb="rope"),
    dict(gate="headwise", gate_heads="shared"),
    dict(gate="elementwise", gate_position="value"),
    dict(gate="elementwise", gate_position="key"),
    dict(gate="headwise", gate_position="query"),
    dict(gate="elementwise", gate_position="output"),
    dict(gate="elementwise", gate_activation="silu"),
    dict(gate="elementwise", gate_activation="ns_sigmoid"),
    dict(gate="elementwise", gate_mode="additive", gate_activation="silu"),
    dict(gate="headwise", gate_input="independent"),
    dict(gate="elementwise", qk_norm=True, bias=True),
]


def tiny(**kw):
    base = dict(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return GPTConfig(**{**base, **kw})


def make(seed=0, **kw):
    torch.manual_seed(seed)
    model = GPT(tiny(**kw)).double().eval()
    if kw.get("gate_input") == "independent":  # move the zero-initialised gate off its start
        for block in model.transformer.h:
            nn.init.normal_(block.attn.gate_logits)
    return model


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_shapes_causality_and_explicit_path(kw):
    model = make(**kw)
    idx = torch.randint(0, VOCAB, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, VOCAB) and loss.ndim == 0
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % VOCAB
    for observe in (None, lambda *a: None):  # SDPA path and explicit path
        with instrumented(model, observe=observe):
            a, _ = model(idx)
            b, _ = model(changed)
        assert torch.allclose(a[:, :9], b[:, :9], atol=1e-12), "a future token changed past logits"
        assert not torch.allclose(a[:, 9:], b[:, 9:])
    with instrumented(model, observe=lambda *a: None):
        explicit, _ = model(idx)
    assert torch.allclose(logits, explicit, atol=1e-10)


class ReferenceGPT(nn.Module):
    """A plain nanoGPT-style GPT written independently of model.py."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        C = cfg.n_embd

        def block():
            return nn.ModuleDict(dict(
                ln_1=nn.LayerNorm(C, bias=False),
                attn=nn.ModuleDict(dict(c_attn=nn.Linear(C, 3 * C, bias=False), c_proj=nn.Linear(C, C, bias=False))),
                ln_2=nn.LayerNorm(C, bias=False),
                mlp=nn.ModuleDict(dict(c_fc=nn.Linear(C, 4 * C, bias=False), c_proj=nn.Linear(4 * C, C, bias=False))),
            ))

        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, C), wpe=nn.Embedding(cfg.block_size, C),
            h=nn.ModuleList([block() for _ in range(cfg.n_layer)]), ln_f=nn.LayerNorm(C, bias=False)))
        self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        B, T = idx.shape
        H, C = self.cfg.n_head, self.cfg.n_embd
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T))
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        for blk in self.transformer.h:
            q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
            att = att.masked_fill(~mask, float("-inf")).softmax(-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, C)
            x = x + blk.attn.c_proj(y)
            x = x + blk.mlp.c_proj(F.gelu(blk.mlp.c_fc(blk.ln_2(x))))
        return self.lm_head(self.transformer.ln_f(x))


def test_gate_off_is_a_plain_gpt():
    model = make(gate="none")
    reference = ReferenceGPT(model.config).double()
    assert sorted(model.state_dict()) == sorted(reference.state_dict())
    assert model.num_params() == sum(p.numel() for p in reference.parameters())
    reference.load_state_dict(model.state_dict())
    idx = torch.randint(0, VOCAB, (3, 16))
    assert torch.allclose(model(idx)[0], reference(idx), atol=1e-10)


@pytest.mark.parametrize("bias", [False, True])
def test_gate_parameter_counts(bias):
    cfg = dict(n_layer=3, n_head=4, n_embd=32, bias=bias)
    plain = GPT(tiny(gate="none", **cfg)).num_params()
    per_layer_bias = lambda n: n if bias else 0  # noqa: E731
    assert GPT(tiny(gate="headwise", **cfg)).num_params() - plain == 3 * (32 * 4 + per_layer_bias(4))
    assert GPT(tiny(gate="elementwise", **cfg)).num_params() - plain == 3 * (32 * 32 + per_layer_bias(32))
    shared = GPT(tiny(gate="elementwise", gate_heads="shared", **cfg)).num_params() - plain
    assert shared == 3 * (32 * 8 + per_layer_bias(8))
    assert GPT(tiny(gate="headwise", gate_input="independent", **cfg)).num_params() - plain == 3 * 4


PAIRED_VARIANTS = [v for v in VARIANTS if v.get("gate", "elementwise") != "none"] + [
    dict(gate="elementwise", qk_norm=True), dict(gate="elementwise", bias=True, dropout=0.1)]


def shared_parameters(model):
    """Every parameter a plain model also has; c_attn restricted to its q, k, v rows."""
    rows = 3 * model.config.n_embd
    return {name: (p[:rows] if name.endswith("c_attn.weight") or name.endswith("c_attn.bias") else p)
            for name, p in model.named_parameters() if "gate_logits" not in name}


@pytest.mark.parametrize("kw", PAIRED_VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_paired_initialisation(kw):
    """A plain and a gated model built after the same seed share every parameter they both have,
    and leave the global generator in the same state, so a comparison measures the gate."""
    plain_kw = {k: v for k, v in kw.items() if k in ("pos_emb", "qk_norm", "bias", "dropout")}
    torch.manual_seed(7)
    plain = GPT(tiny(gate="none", **plain_kw))
    after_plain = torch.get_rng_state()
    torch.manual_seed(7)
    gated = GPT(tiny(**kw))
    assert torch.equal(torch.get_rng_state(), after_plain)
    shared_plain, shared_gated = shared_parameters(plain), shared_parameters(gated)
    assert sorted(shared_plain) == sorted(shared_gated)
    for name, p in shared_plain.items():
        assert torch.equal(p, shared_gated[name]), name
    if kw.get("gate_input") != "independent":  # the gate's own rows are random, N(0, 0.02)
        gate_rows = gated.transformer.h[0].attn.c_attn.weight[3 * 16:]
        assert gate_rows.numel() > 0 and 0.01 < gate_rows.std().item() < 0.03
    # The step-0 difference comes only from the gate: with the gate taken out, same logits.
    idx = torch.randint(0, VOCAB, (2, 16))
    plain.eval(), gated.eval()
    for block in gated.transformer.h:
        block.attn.apply_gate = lambda x, scores: x
    assert torch.equal(plain(idx)[0], gated(idx)[0])


def test_initialisation_follows_the_seed():
    torch.manual_seed(3)
    a = GPT(tiny(gate="elementwise"))
    torch.manual_seed(3)
    b = GPT(tiny(gate="elementwise"))
    torch.manual_seed(4)
    c = GPT(tiny(gate="elementwise"))
    gate_rows = lambda m: m.transformer.h[1].attn.c_attn.weight[48:]  # noqa: E731
    assert torch.equal(gate_rows(a), gate_rows(b)) and not torch.equal(gate_rows(a), gate_rows(c))
    assert not torch.equal(a.transformer.wte.weight, c.transformer.wte.weight)
    # The gate's rows are not a copy of any shared draw.
    assert not torch.equal(gate_rows(a)[:16], a.transformer.h[1].attn.c_attn.weight[:16])


def test_num_params_without_embeddings():
    model = GPT(tiny(gate="none"))
    assert model.num_params() - model.num_params(embeddings=False) == VOCAB * 16 + 16 * 16


def test_gate_starts_near_half_and_observer_sees_everything():
    model = make(gate="elementwise")
    seen = {}
    with instrumented(model, observe=lambda layer, name, t: seen.setdefault((layer, name), t)):
        model(torch.randint(0, VOCAB, (2, 16)))
    assert {name for _, name in seen} == {"gate", "values", "attn_logits", "attn_probs", "attn_output", "hidden"}
    assert seen[(0, "gate")].shape == (2, 16, 2, 8) and seen[(0, "values")].shape == (2, 16, 2, 8)
    assert 0.4 < seen[(0, "gate")].mean().item() < 0.6
    probs = seen[(1, "attn_probs")]
    assert torch.allclose(probs.sum(-1), torch.ones(2, 2, 16, dtype=probs.dtype))
    assert torch.all(probs.triu(diagonal=1) == 0)


@pytest.mark.parametrize("kw", [dict(gate="elementwise"), dict(gate="headwise", pos_emb="rope", qk_norm=True),
                                dict(gate="none")])
def test_cached_forward_matches_uncached(kw):
    model = make(**kw)
    idx = torch.randint(0, VOCAB, (2, 12))
    full, _ = model(idx)
    cache = KVCache(model.config)
    logits, _ = model(idx[:, :5], cache=cache)
    assert torch.allclose(logits[:, -1], full[:, 4], atol=1e-10)
    logits, _ = model(idx[:, 5:8], cache=cache)  # a multi-token step part-way through the cache
    assert torch.allclose(logits[:, -1], full[:, 7], atol=1e-10)
    for t in range(8, 12):
        logits, _ = model(idx[:, t:t + 1], cache=cache)
        assert torch.allclose(logits[:, -1], full[:, t], atol=1e-10)


@pytest.mark.parametrize("kw", [dict(gate="elementwise"), dict(gate="none", pos_emb="rope")])
def test_cached_generation_equals_uncached_past_block_size(kw):
    model = make(**kw)
    prompt = torch.randint(0, VOCAB, (2, 5))
    runs = [model.generate(prompt, 45, temperature=1.0, top_k=20, top_p=0.95, use_cache=use_cache,
                           generator=torch.Generator().manual_seed(7)) for use_cache in (True, False)]
    assert runs[0].shape == (2, 50)  # past block_size=16 three times over
    assert torch.equal(runs[0], runs[1])
    again = model.generate(prompt, 45, temperature=1.0, top_k=20, top_p=0.95, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again, runs[0])


def test_generation_window_sees_block_size_tokens():
    """Greedy generation: each new token must be what the model predicts from its context window."""
    model = make(gate="elementwise")
    prompt = torch.randint(0, VOCAB, (1, 20))  # a prompt longer than block_size
    out = model.generate(prompt, 3, temperature=0)
    window = out[:, :20][:, -(16 - 4 + 1):]  # the window after a quarter-block jump
    assert out[0, 20].item() == model(window)[0][0, -1].argmax().item()


def test_filter_logits_keeps_exactly_the_right_tokens():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    kept = lambda l: torch.isfinite(l[0]).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [1, 3]
    assert kept(filter_logits(logits, top_k=3)) == [1, 3, 4]
    assert kept(filter_logits(logits, top_p=0.4)) == [1]
    assert kept(filter_logits(logits, top_p=0.5)) == [1, 3]
    assert kept(filter_logits(logits, top_p=0.7)) == [1, 3]
    assert kept(filter_logits(logits, top_p=0.71)) == [1, 3, 4]
    assert kept(filter_logits(logits, top_k=2, top_p=0.99)) == [1, 3]
    assert kept(filter_logits(logits)) == [0, 1, 2, 3, 4]
    tied = torch.zeros(1, 5)
    assert len(kept(filter_logits(tied, top_k=2))) == 2


@pytest.mark.parametrize("kw, message", [
    (dict(gate="headwise", gate_position="output"), "use gate=elementwise"),
    (dict(gate_position="output", gate_heads="shared"), "gate_heads=specific"),
    (dict(gate_mode="additive"), "gate_activation=silu"),
    (dict(gate="headwise", gate_position="key", qk_norm=True), "the LayerNorm on q and k removes"),
    (dict(gate="headwise", gate_position="query", qk_norm=True, gate_mode="additive", gate_activation="silu"),
     "does almost nothing with qk_norm=true"),
    (dict(gate="none", gate_position="value"), "has no effect with gate='none'"),
    (dict(gate="sometimes"), "choose one of none, headwise, elementwise"),
    (dict(n_embd=30, n_head=4), "not divisible"),
    (dict(pos_emb="rope", n_embd=18, n_head=2, gate="none"), "even head size"),
])
def test_nonsense_configs_are_rejected(kw, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**kw)


@pytest.mark.parametrize("gate, barely", [("headwise", True), ("elementwise", False)])
def test_qk_norm_undoes_a_headwise_key_gate(gate, barely):
    # Why that combination is refused: built anyway, replacing its gate scores (by 0.5 everywhere,
    # from zeroed gate weights) moves the logits about 50 times less than an elementwise gate's.
    config = tiny(gate=gate, gate_position="key")
    config.qk_norm = True  # past the check
    torch.manual_seed(0)
    model = GPT(config).double().eval()
    idx = torch.randint(VOCAB, (2, 16))
    before, _ = model(idx, idx)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[3 * config.n_embd:] = 0
    after, _ = model(idx, idx)
    assert ((before - after).abs().max() < 1e-4) == barely


def test_sequence_longer_than_block_is_an_error():
    with pytest.raises(ValueError, match="longer than block_size"):
        make()(torch.zeros(1, 17, dtype=torch.long))
