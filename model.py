"""A GPT with gated attention, in one file.

Read top to bottom: the config, the attention (with the gate), the MLP and the
block, the GPT, generation with a KV cache, then RoPE and its context
extension, the config's checks, and one CPU kernel workaround.

The gate follows Qiu et al. 2025, "Gated Attention for Large Language Models"
(arXiv 2505.06708). By default each attention head's output is multiplied,
channel by channel, by a sigmoid score computed from the same normed input X
that feeds q, k and v:

    Y' = SDPA(Q, K, V) * sigmoid(X @ W_g)          (paper, Sec. 2, position G1)

With gate="none" the model is a plain GPT with nanoGPT's parameter names, so
nanoGPT checkpoints and GPT-2's weights load into it (lab/pretrained.py).
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from configurable import ConfigError, opt


@dataclass
class GPTConfig:
    vocab_size: int = opt(0, "vocabulary size; 0 takes it from the dataset")
    block_size: int = opt(64, "context length in tokens")
    n_layer: int = opt(4, "number of transformer blocks")
    n_head: int = opt(4, "attention heads per block")
    n_embd: int = opt(128, "width of the residual stream")
    dropout: float = opt(0.0, "dropout on attention and residual branches")
    bias: bool = opt(False, "biases in Linear and LayerNorm layers")
    pos_emb: str = opt("learned", "position encoding: learned | rope")
    rope_base: float = opt(10000.0, "RoPE base frequency")
    rope_scaling: str = opt("none", "RoPE past block_size without retraining: none | pi | ntk | dynamic_ntk | yarn")
    rope_factor: float = opt(1.0, "the context extended to this many times block_size (the scale s)")
    qk_norm: bool = opt(False, "LayerNorm on queries and keys (the usual fix for high-LR attention-logit growth)")
    activation: str = opt("gelu", "MLP activation: gelu | gelu_tanh (GPT-2's tanh approximation, for its weights)")
    gate: str = opt("elementwise", "attention gate: none | headwise | elementwise")
    gate_position: str = opt("sdpa", "where the gate acts: sdpa (G1) | value (G2) | key (G3) | query (G4) | output (G5)")
    gate_activation: str = opt("sigmoid", "gate activation: sigmoid | silu | ns_sigmoid (0.5 + 0.5 sigmoid)")
    gate_mode: str = opt("multiplicative", "combine with the gated tensor: multiplicative | additive (Y + silu(XW))")
    gate_heads: str = opt("specific", "gate scores per head (specific) or one set shared by all heads (shared)")
    gate_input: str = opt("dependent", "scores from X (dependent) or a learned constant (independent)")

    def __post_init__(self):
        check_config(self)  # at the end of the file

    @property
    def head_size(self):
        return self.n_embd // self.n_head

    @property
    def context_length(self):
        """The longest context generation keeps: block_size, or rope_factor times it with a RoPE scaling."""
        return round(self.block_size * self.rope_factor)

    @property
    def gate_shape(self):
        """Scores per token: (heads, channels) at G1-G4, (n_embd,) at G5; () without a gate."""
        if self.gate == "none":
            return ()
        if self.gate_position == "output":
            return (self.n_embd,)
        heads = self.n_head if self.gate_heads == "specific" else 1
        channels = self.head_size if self.gate == "elementwise" else 1
        return (heads, channels)


# ---------------------------------------------------------------------------
# Attention, with the gate
# ---------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_index):
        super().__init__()
        self.config, self.layer_index = config, layer_index
        self.n_head, self.head_size = config.n_head, config.head_size
        gate_width = math.prod(config.gate_shape) if config.gate != "none" else 0
        # An input-dependent gate is computed in the same matmul as q, k and v, as the
        # paper's released code does: one wider Linear instead of two.
        self.gate_columns = gate_width if config.gate_input == "dependent" else 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd + self.gate_columns, bias=config.bias)
        if config.gate != "none" and config.gate_input == "independent":
            # Input-independent control (Sec. 4.2): one learned score per head and
            # channel, zero-initialised so the gate starts at act(0).
            self.gate_logits = nn.Parameter(torch.zeros(gate_width))
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = LayerNorm(config.head_size, config.bias)
            self.k_norm = LayerNorm(config.head_size, config.bias)

    def forward(self, x, rope=None, cache=None):
        B, T, C = x.shape
        cfg = self.config
        # One split rather than four slices: its backward is one concatenation.
        q, k, v, gate_logits = self.c_attn(x).split([C, C, C, self.gate_columns], dim=-1)
        q, k, v = (t.view(B, T, self.n_head, self.head_size) for t in (q, k, v))
        gate = self.gate_scores(gate_logits) if cfg.gate != "none" else None
        where = cfg.gate_position if gate is not None else None
        # G2-G4, the paper's ablations: gate a projection before attention mixes tokens.
        if where == "query":
            q = self.apply_gate(q, gate)
        if where == "key":
            k = self.apply_gate(k, gate)
        if where == "value":
            v = self.apply_gate(v, gate)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        offset = cache.pos if cache is not None else 0
        if rope is not None:
            cos, sin = rope[0][offset:offset + T], rope[1][offset:offset + T]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
        y = self.attend(q, k, v, offset).transpose(1, 2)  # (B, T, H, D)
        # G1, the paper's choice (Sec. 2): gate each head's output, per query token, so a
        # head can output nothing without parking its attention on a sink token.
        if where == "sdpa":
            y = self.apply_gate(y, gate)
        y = self.c_proj(y.reshape(B, T, C))
        if where == "output":  # G5
            y = self.apply_gate(y, gate)
        return self.resid_dropout(y)

    def gate_scores(self, logits):
        """act(X W_g) for each token, shaped (B, T, heads, channels) to broadcast over the heads'
        (B, T, H, D) outputs ((B, T, C) at G5). An input-independent gate ignores the (empty)
        logits and uses its learned constants."""
        B, T, _ = logits.shape
        if self.config.gate_input == "independent":
            logits = self.gate_logits.to(logits.dtype).expand(B, T, -1)
        name = self.config.gate_activation
        if name == "sigmoid":
            scores = torch.sigmoid(logits)
        elif name == "silu":
            scores = F.silu(logits)
        else:  # NS-sigmoid keeps gates in [0.5, 1]: non-linear but not sparse (Sec. 4.2)
            scores = 0.5 + 0.5 * torch.sigmoid(logits)
        return scores.view(B, T, *self.config.gate_shape)

    def apply_gate(self, x, scores):
        return x + scores if self.config.gate_mode == "additive" else x * scores

    def attend(self, q, k, v, offset):
        """Causal attention of q (B, H, Tq, D) over k, v (B, H, Tk, D), queries starting at `offset`
        (flash attention on GPUs)."""
        mask = None
        if offset > 0 and q.size(2) > 1:  # several queries part-way through a cached sequence
            mask = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=q.device).tril(diagonal=offset)
        dropout = self.config.dropout if self.training else 0.0
        return scaled_dot_product_attention(q, k, v, mask, dropout, causal=mask is None and q.size(2) > 1)


# ---------------------------------------------------------------------------
# MLP and block
# ---------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # OpenAI's GPT-2 was trained with the tanh approximation of GELU ("gelu_new").
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm block: the gate reads ln_1(h), the same X that feeds q, k, v."""

    def __init__(self, config, layer_index):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, cache=None):
        x = x + self.attn(self.ln_1(x), rope, cache)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------
# The GPT
# ---------------------------------------------------------------------------


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.vocab_size < 1:
            raise ConfigError("vocab_size must be set (it is normally taken from the dataset)")
        self.config = config
        # Building a layer draws a default init (more numbers for a gated model's wider
        # c_attn); init_weights draws everything again, so keep these draws off the global
        # generator, where they would shift every draw after them.
        with torch.random.fork_rng(devices=[]):
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, config.bias),
            ))
            if config.pos_emb == "learned":
                self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.pos_emb == "rope":
            cos, sin = rope_tables(config, config.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """GPT-2's init, paired: a gated and a plain model built after the same seed start with
        the same values in every parameter they share, so comparing them measures the gate,
        not two different draws. The gate's rows of c_attn come last, from their own generator.
        """
        shared_rows = 3 * self.config.n_embd  # c_attn's rows: q, k, v, then the gate's
        gate_weights = []
        for name, p in self.named_parameters():  # the tied lm_head is wte, listed once
            if name.endswith("c_attn.weight"):
                nn.init.normal_(p[:shared_rows], mean=0.0, std=0.02)
                gate_weights.append(p[shared_rows:])
            elif name.endswith("c_proj.weight"):
                # GPT-2's scaled init: each residual branch adds to the stream.
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
            elif p.dim() == 2:  # wte, wpe, c_fc
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
        # N(0, 0.02) as in the paper's code, so sigmoid gates start near 0.5. The seed is
        # drawn with or without a gate, so both models leave the global generator alike.
        gate_seed = int(torch.randint(2**62, ()))
        generator = torch.Generator(self.lm_head.weight.device).manual_seed(gate_seed)
        for weight in gate_weights:
            nn.init.normal_(weight, mean=0.0, std=0.02, generator=generator)

    def num_params(self, embeddings=True):
        """Parameters, counting the tied embedding once; embeddings=False leaves out wte and wpe."""
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= sum(m.weight.numel() for name, m in self.transformer.items() if name in ("wte", "wpe"))
        return n

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, T, vocab) and the loss when targets are given. With a `cache`, idx continues
        the cached sequence and only the last position's logits are computed."""
        B, T = idx.shape
        offset = cache.pos if cache is not None else 0
        x, rope = self.transformer.wte(idx), None
        if self.config.pos_emb == "learned":
            if offset + T > self.config.block_size:
                raise ValueError(f"sequence of {offset + T} tokens is longer than block_size="
                                 f"{self.config.block_size}, and learned positions stop there: train with "
                                 "pos_emb=rope to go further")
            x = x + self.transformer.wpe(torch.arange(offset, offset + T, device=idx.device))
        else:
            rope = self.rope(offset + T)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, rope, cache)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += T
            return self.lm_head(x[:, -1:]), None
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def rope(self, length):
        """The RoPE cos/sin tables for at least `length` positions, grown (doubling) when needed."""
        if self.config.rope_scaling == "dynamic_ntk" and length > self.config.block_size:
            # Its angles change with the length, so keys cached at a shorter length were
            # rotated differently: stream() re-fills the cache at every token past block_size.
            return rope_tables(self.config, length, self.rope_cos.device)
        if length > self.rope_cos.size(0):
            self.rope_cos, self.rope_sin = rope_tables(self.config, max(length, 2 * self.rope_cos.size(0)),
                                                       self.rope_cos.device)
        return self.rope_cos, self.rope_sin

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, optimizer="adamw"):
        """AdamW with weight decay on matrices only (not on biases, norms or gate constants). With
        optimizer="muon", torch.optim.Muon takes the blocks' matrices (c_attn with the gate's
        columns, c_proj, c_fc): their momentum is orthogonalised by a Newton-Schulz iteration
        (Jordan et al. 2024), scaled to AdamW's update size so that one learning rate serves both.
        Embeddings, the tied head, norms and biases stay with AdamW."""
        params = [p for p in self.parameters() if p.requires_grad]
        hidden = [p for p in self.transformer.h.parameters() if p.dim() == 2] if optimizer == "muon" else []
        rest = [p for p in params if id(p) not in {id(h) for h in hidden}]
        groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
        optimizers = [torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))]
        if hidden:
            optimizers.append(torch.optim.Muon(hidden, lr=learning_rate, weight_decay=weight_decay,
                                               adjust_lr_fn="match_rms_adamw"))
        return optimizers

    def flops_per_token(self):
        """Training FLOPs per token: 6N for the matmuls plus attention (PaLM, App. B)."""
        cfg = self.config
        n = self.num_params() - (cfg.block_size * cfg.n_embd if cfg.pos_emb == "learned" else 0)
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_size * cfg.block_size

    # -----------------------------------------------------------------------
    # Generation
    # -----------------------------------------------------------------------

    @torch.no_grad()
    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, use_cache=True):
        """Yield new tokens (B, 1) one at a time after the prompt idx (B, T).

        The context is a window of at most config.context_length tokens. When it is full the
        window jumps forward by a quarter of it rather than sliding one token, so the cache is
        re-filled once per context_length / 4 tokens instead of at every token. The uncached
        path uses the same window, so both give the same tokens.
        """
        block = self.config.context_length
        jump = max(1, block // 4)
        stale = self.config.rope_scaling == "dynamic_ntk"  # see GPT.rope
        seq, start, cache = idx, 0, None
        for _ in range(max_new_tokens):
            if seq.size(1) - start > block:
                start = seq.size(1) - (block - jump + 1)
                cache = None
            if stale and seq.size(1) - start > self.config.block_size:
                cache = None
            if not use_cache:
                logits, _ = self(seq[:, start:])
            elif cache is None:
                cache = KVCache(self.config)
                logits, _ = self(seq[:, start:], cache=cache)
            else:
                with matrix_vector_kernels():  # one new token: every matmul is a matrix-vector product
                    logits, _ = self(seq[:, -1:], cache=cache)
            next_token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            seq = torch.cat([seq, next_token], dim=1)
            yield next_token

    def generate(self, idx, max_new_tokens, **kwargs):
        """The prompt followed by max_new_tokens sampled tokens, (B, T + max_new_tokens)."""
        return torch.cat([idx, *self.stream(idx, max_new_tokens, **kwargs)], dim=1)


class KVCache:
    """Keys and values of every layer for the tokens seen so far (at most `capacity`,
    by default the longest context generation keeps, config.context_length)."""

    def __init__(self, config, capacity=None):
        self.capacity = capacity or config.context_length
        self.k, self.v = [None] * config.n_layer, [None] * config.n_layer
        self.pos = 0

    def update(self, layer, k, v):
        """Store k, v (B, H, T, D) after the cached positions; return all keys and values so far."""
        if self.pos + k.size(2) > self.capacity:
            raise ValueError(f"{self.pos + k.size(2)} tokens do not fit in a KV cache of {self.capacity}")
        if self.k[layer] is None:  # allocated lazily, in the dtype attention runs in
            shape = (k.size(0), k.size(1), self.capacity, k.size(3))
            self.k[layer], self.v[layer] = k.new_empty(shape), v.new_empty(shape)
        end = self.pos + k.size(2)
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def filter_logits(logits, top_k=None, top_p=None):
    """Keep the top_k most likely tokens, then the smallest set whose probability reaches top_p."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        top = torch.topk(logits, top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits.float(), dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # the token that crosses top_p is kept
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row from logits (B, vocab); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


# ---------------------------------------------------------------------------
# RoPE, and reaching past the trained length
# ---------------------------------------------------------------------------
# RoPE (Su et al. 2021) rotates channel pair i by the angle m * theta_i at position m,
# theta_i = base^(-2i/d). Attention then depends on positions only through m - n, but a
# model trained at L tokens has never seen |m - n| >= L. The context-extension methods
# change the angles so that a longer sequence looks more like the trained one, with no
# retraining; s = rope_factor = new length / L.

ROPE_SCALINGS = ("none", "pi", "ntk", "dynamic_ntk", "yarn")


def rope_frequencies(config, length):
    """theta_i for a sequence of `length` tokens, after the config's context extension."""
    d, L, s = config.head_size, config.block_size, config.rope_factor
    exponents = torch.arange(d // 2, dtype=torch.float32) / (d // 2)  # 2i / d
    method = config.rope_scaling
    if method == "dynamic_ntk":  # NTK with s grown from the current length n, plain RoPE up to L (emozilla 2023)
        s = s * length / L - (s - 1) if length > L else 1.0
    if method == "none" or s == 1.0:
        return 1.0 / (config.rope_base ** exponents)
    if method in ("ntk", "dynamic_ntk"):  # NTK-aware: base * s^(d / (d - 2)) (Reddit, bloc97 2023)
        return 1.0 / ((config.rope_base * s ** (d / (d - 2))) ** exponents)
    theta = 1.0 / (config.rope_base ** exponents)
    if method == "pi":  # position interpolation: m -> m / s, the same as theta / s (Chen et al. 2023)
        return theta / s
    # YaRN's "NTK-by-parts" (Peng et al. 2023) as its authors' code computes it (and transformers, vLLM,
    # llama.cpp): pairs turning >= 32 times within L keep theta, those turning <= once get theta / s,
    # with the two bounds turned into pair indices and the blend linear in the index.
    def index(turns):  # the pair that turns `turns` times within L
        return d * math.log(L / (turns * 2 * math.pi)) / (2 * math.log(config.rope_base))
    low, high = max(math.floor(index(32)), 0), min(math.ceil(index(1)), d - 1)
    if low == high:
        high += 0.001  # as the reference, to avoid dividing by zero
    keep = 1 - ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    return theta / s * (1 - keep) + theta * keep


def rope_attention_scale(config):
    """YaRN's attention temperature (Peng et al. 2023): q and k times 0.1 ln s + 1; 1 for the other methods."""
    if config.rope_scaling != "yarn":
        return 1.0
    return 0.1 * math.log(config.rope_factor) + 1.0


def rope_tables(config, length, device=None):
    """cos/sin tables for positions 0 .. length - 1, one row per position. YaRN's scale of
    q and k is folded into both: rotating by them scales every rotated vector by it."""
    theta = rope_frequencies(config, length).to(device)
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), theta)
    scale = rope_attention_scale(config)
    if scale == 1.0:
        return angles.cos(), angles.sin()
    return angles.cos() * scale, angles.sin() * scale


def apply_rope(x, cos, sin):
    """Rotate channel pairs (i, i + D/2) of x (B, H, T, D) by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# ---------------------------------------------------------------------------
# The config's checks: every setting, and the combinations that make no sense
# ---------------------------------------------------------------------------

CHOICES = {"gate": ("none", "headwise", "elementwise"),
           # The paper's positions (Sec. 3.1): G1 after SDPA, G2 after the value projection, G3 after
           # the key projection, G4 after the query projection, G5 after the output projection.
           "gate_position": ("sdpa", "value", "key", "query", "output"),
           "gate_activation": ("sigmoid", "silu", "ns_sigmoid"), "gate_mode": ("multiplicative", "additive"),
           "gate_heads": ("specific", "shared"), "gate_input": ("dependent", "independent"),
           "pos_emb": ("learned", "rope"), "activation": ("gelu", "gelu_tanh"), "rope_scaling": ROPE_SCALINGS}
GATE_KEYS = ("gate_position", "gate_activation", "gate_mode", "gate_heads", "gate_input")


def check_config(cfg):
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"bad value {getattr(cfg, key)!r} for '{key}': choose one of {', '.join(choices)}")
    if min(cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd) < 1:
        raise ConfigError("block_size, n_layer, n_head and n_embd must be positive")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}")
    if cfg.pos_emb == "rope" and cfg.head_size % 2:
        raise ConfigError("RoPE needs an even head size (n_embd / n_head)")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout={cfg.dropout} must be in [0, 1)")
    if cfg.rope_scaling != "none" and cfg.pos_emb != "rope":
        raise ConfigError(f"rope_scaling={cfg.rope_scaling} scales RoPE, and this model has learned "
                          "positions: use pos_emb=rope")
    if cfg.rope_factor < 1.0:
        raise ConfigError(f"rope_factor={cfg.rope_factor} must be at least 1: it is the extended context over block_size")
    if cfg.rope_factor != 1.0 and cfg.rope_scaling == "none":
        raise ConfigError(f"rope_factor={cfg.rope_factor} has no effect with rope_scaling=none: "
                          "choose pi, ntk, dynamic_ntk or yarn")
    check_gate(cfg)


def check_gate(cfg):
    if cfg.gate == "none":
        defaults = {key: GPTConfig.__dataclass_fields__[key].default for key in GATE_KEYS}
        changed = [f"{key}={getattr(cfg, key)}" for key, value in defaults.items() if getattr(cfg, key) != value]
        if changed:
            raise ConfigError(f"{', '.join(changed)} has no effect with gate='none': "
                              "set gate=elementwise or headwise, or drop it")
        return
    if cfg.gate_position == "output" and cfg.gate == "headwise":
        raise ConfigError("a headwise gate needs heads, and there are none after the output projection "
                          "(gate_position=output): use gate=elementwise")
    if cfg.gate_position == "output" and cfg.gate_heads == "shared":
        raise ConfigError("gate_heads=shared needs heads, and there are none after the output projection "
                          "(gate_position=output): use gate_heads=specific")
    if cfg.qk_norm and cfg.gate == "headwise" and cfg.gate_position in ("key", "query"):
        # One score per head scales (or shifts) all of a head's q or k channels alike, and
        # qk_norm's LayerNorm, which comes after the gate, takes it out again.
        raise ConfigError(f"a headwise gate on the {cfg.gate_position} (gate_position={cfg.gate_position}) "
                          "does almost nothing with qk_norm=true: the LayerNorm on q and k removes each "
                          "head's gate score again. Use gate=elementwise, or qk_norm=false")
    if cfg.gate_mode == "additive" and cfg.gate_activation != "silu":
        raise ConfigError("the additive gate is Y + silu(XW) as in the paper: set gate_activation=silu")


# ---------------------------------------------------------------------------
# CPU kernels: the fastest path for each shape (no effect on GPUs)
# ---------------------------------------------------------------------------


def scaled_dot_product_attention(q, k, v, mask, dropout, causal):
    """F.scaled_dot_product_attention, in fp32 under CPU bf16 autocast: PyTorch's CPU flash
    attention is slower in bf16 than in fp32 (2.5x at 4 heads of 32 channels, context 64)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                               dropout_p=dropout, is_causal=causal)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)


@contextlib.contextmanager
def matrix_vector_kernels():
    """CPU matmuls in PyTorch's own kernels rather than oneDNN's while inside: for one token at
    a time they are 2x faster in bf16."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled
