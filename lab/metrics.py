"""Measurements from the tensors a model shows an observer: attention sinks, massive
activations, gate statistics, loss and gradient spikes, and what happens when a sink or a
gate is taken away. train.py logs them at every evaluation (through its on_eval hook,
eval_hook below); analyze.py reports them for checkpoints.

The model itself has no observer: `instrumented` (below) hands one the tensors inside
attention by replacing two methods of each attention layer and hooking two modules.

- F-Attn (Qiu et al. 2025): attention probability on token 0, averaged over
  queries, then heads, then layers.
- Sink_1 (Gu et al. 2024): the percentage of (layer, head) pairs whose
  importance alpha_1 of the first token exceeds eps. Gu et al. number key
  positions from 1, so alpha_1 is about token index 0 here: the mean over
  queries t >= 0 of A[t, 0], averaged over the sequences.
- M-Act (Qiu et al.): the max |h| of each layer's output, averaged over
  layers; with the median |h| beside it, as Sun et al. 2024 compare them.
- Gate scores (Qiu et al.): mean, fraction below 0.1 and 0.01, first token
  against the rest; sparsity of the attention output (fraction below 1e-2 and
  1e-3).
- Spike score (OLMo 2): percentage of steps at least 7 standard deviations from
  the rolling mean of the previous window.
- With a dataset's BOS token (Guo et al. 2024, "Active-Dormant Attention Heads"):
  the value-vector norm at BOS against other positions (value-state drain) and the
  residual-stream norm at BOS against other positions (residual-state peak). With its
  trigger tokens too (Bigram-Backcopy), queries are split into classes: "active" at a
  trigger token (the next token copies the one before it), "dormant" at every other
  token except BOS (BOS queries are in neither class); per class, the attention on
  BOS tokens and the mean gate score.
- Functional tests: the loss with key 0 masked (the BOS of BOS-aligned sequences;
  attention renormalised over the other keys) and with every gate forced open.

Fractions are in [0, 1]; Sink_1 and spike scores are percentages.
"""

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

import train
from model import scaled_dot_product_attention

GATE_BINS = 50  # gate-score histogram on [0, 1]
QUERY_CLASSES = ("dormant", "active")  # index 0 and 1 in Stats.query_class; BOS queries are -1


# ---------------------------------------------------------------------------
# Looking inside a model: observe its tensors, mask key 0, open its gates
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def instrumented(model, observe=None, mask_first_key=False, open_gates=False):
    """While inside, `model` (a model.GPT) runs with its attention layers instrumented:

    - observe(layer, name, tensor) receives, layer by layer: "gate" (the gate scores,
      before open_gates), "values" (v after a G2 gate, (B, T, H, D)), "attn_logits" and
      "attn_probs" ((B, H, Tq, Tk): attention runs explicitly instead of through SDPA, in the
      same maths), "attn_output" (the gated heads' output, (B, T, C), the input of c_proj)
      and "hidden" (the block's output, (B, T, C)). Nothing is kept: the observer reduces
      each tensor as it passes, so analysis never holds every layer at once.
    - mask_first_key: every query but token 0 itself (it has no other key) loses key 0, the
      attention sink of BOS-aligned sequences; softmax renormalises over the other keys.
    - open_gates: every gate score is 1, as if there were no gate (multiplicative gates only).

    It replaces each attention's `gate_scores` and `attend` on the instance and hooks
    c_proj (attn_output) and the block (hidden); all of it is undone on leaving, also
    after an exception.
    """
    if open_gates and model.config.gate_mode != "multiplicative":
        raise ValueError("open_gates needs a multiplicative gate: an additive gate has no 'open' score")
    methods = ("gate_scores", "attend")
    replaced, hooks = [], []
    try:
        for layer, block in enumerate(model.transformer.h):
            attn = block.attn
            replaced.append((attn, {name: vars(attn)[name] for name in methods if name in vars(attn)}))
            if observe is not None or open_gates:
                attn.gate_scores = _scores_seen(attn.gate_scores, layer, observe, open_gates)
            if observe is not None or mask_first_key:
                attn.attend = _explicit_attend(attn, layer, observe, mask_first_key)
            if observe is not None:
                hooks.append(attn.c_proj.register_forward_pre_hook(
                    lambda module, args, layer=layer: observe(layer, "attn_output", args[0])))
                hooks.append(block.register_forward_hook(
                    lambda module, args, output, layer=layer: observe(layer, "hidden", output)))
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        for attn, before in replaced:
            for name in methods:
                vars(attn).pop(name, None)
            vars(attn).update(before)


def _scores_seen(gate_scores, layer, observe, open_gates):
    """An attention's gate_scores, shown to `observe`, then forced to 1 with open_gates."""
    def scores_seen(logits):
        scores = gate_scores(logits)
        if observe is not None:
            observe(layer, "gate", scores)
        return torch.ones_like(scores) if open_gates else scores
    return scores_seen


def _explicit_attend(attn, layer, observe, mask_first_key):
    """An attention's attend (q, k, v: (B, H, T, D)) that hands `observe` the values and the
    attention logits and probabilities, and/or masks key 0. Without an observer it stays on
    SDPA, with the mask."""
    def attend(q, k, v, offset):
        Tq, Tk = q.size(2), k.size(2)
        if observe is not None:  # the new tokens' values (with a KV cache, the last Tq)
            observe(layer, "values", v[:, :, Tk - Tq:].transpose(1, 2))
        dropout = attn.config.dropout if attn.training else 0.0
        mask = None
        if offset > 0 and Tq > 1:  # queries part-way through a cached sequence
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=offset)
        if mask_first_key:  # every query but token 0 itself (it has no other key) loses key 0
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
            mask[max(0, 1 - offset):, 0] = False
        if observe is None:
            return scaled_dot_product_attention(q, k, v, mask, dropout, causal=mask is None and Tq > 1)
        if mask is None:
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
        logits = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
        logits = logits.masked_fill(~mask, float("-inf"))
        observe(layer, "attn_logits", logits)
        probs = F.softmax(logits, dim=-1)  # autocast runs softmax in float32
        observe(layer, "attn_probs", probs)
        return F.dropout(probs, dropout, attn.training) @ v
    return attend


# ---------------------------------------------------------------------------
# Loss and gradient spikes
# ---------------------------------------------------------------------------


def spike_score(values, window=100, threshold=7.0):
    """OLMo 2's spike score: the percentage of steps at least `threshold` standard
    deviations away from the mean of the `window` values before them.

    Only steps with a full window before them, whose window is not constant
    (no spread to measure by), can be judged; they are the denominator, and
    with none the score is 0. Non-finite values are dropped first: a divergence
    is recorded on its own (train.py stops and logs it), and a NaN would poison
    every window it falls in.
    """
    if window < 1 or not threshold > 0:
        raise ValueError(f"spike_score needs window >= 1 and threshold > 0, got {window} and {threshold}")
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) <= window:
        return 0.0
    before = np.lib.stride_tricks.sliding_window_view(x[:-1], window)  # row i: the window before x[window + i]
    rows = max(1, 2 ** 22 // window)  # chunks keep the temporaries of std() to ~32 MB
    spikes = judged = 0
    for start in range(0, len(before), rows):
        past, now = before[start:start + rows], x[window + start:window + start + rows]
        spread = past.max(axis=1) > past.min(axis=1)
        judged += int(spread.sum())
        spikes += int((spread & (np.abs(now - past.mean(axis=1)) >= threshold * past.std(axis=1))).sum())
    return 100.0 * spikes / judged if judged else 0.0


# ---------------------------------------------------------------------------
# The observer: statistics reduced layer by layer, batch by batch
# ---------------------------------------------------------------------------


def _add(acc, key, value):
    acc[key] = acc[key] + value if key in acc else value


class Stats:
    """An observer for `instrumented(model, observe=stats)` that reduces each tensor as it passes.

    Sums, counts and maxima are kept per layer (and head), so memory does not
    grow with the number of batches; only the attention map of `map_layer` is
    kept whole, as a running sum over sequences. `summary(eps)` turns them into
    the metrics.

    With `bos_token` (and `trigger_tokens`), call `tokens(idx)` before each batch:
    the BOS positions and query classes come from the token ids.
    """

    def __init__(self, map_layer=None, bos_token=None, trigger_tokens=()):
        self.map_layer = map_layer
        self.bos_token, self.trigger_tokens = bos_token, list(trigger_tokens)
        if self.trigger_tokens and bos_token is None:
            raise ValueError("query classes need the BOS token too: pass bos_token with trigger_tokens")
        self.is_bos = self.query_class = None
        self.layers = {}  # layer index -> {name: running sum, count or maximum}
        self.overall = {}  # the attention map of map_layer and the gate-score histogram, summed

    def tokens(self, idx):
        """The token ids (B, T) of the batch about to be observed."""
        if self.bos_token is None:
            return
        idx = idx.detach().cpu()
        self.is_bos = idx == self.bos_token
        if self.trigger_tokens:
            active = torch.isin(idx, torch.tensor(self.trigger_tokens))
            self.query_class = torch.where(self.is_bos, -1, active.long())

    def _positions(self, tensor):
        if self.is_bos is None or self.is_bos.shape != tensor.shape[:2]:
            raise ValueError("Stats has a bos_token: call stats.tokens(idx) with each batch's token ids first")
        return self.is_bos

    def __call__(self, layer, name, tensor):
        measure = getattr(self, f"_{name}", None)  # what is not measured here is ignored
        if measure is not None:
            measure(self.layers.setdefault(layer, {}), layer, tensor.detach().float())

    def _attn_probs(self, acc, layer, probs):  # (B, H, T, T)
        B, _, T, _ = probs.shape
        # Every query t >= 0 sees token 0, so alpha_1 is A[:, :, :, 0] averaged
        # over all queries (and sequences): per head, the same number as F-Attn.
        _add(acc, "first_token_attn", probs[..., 0].sum((0, 2)).double().cpu())
        _add(acc, "queries", B * T)
        if self.query_class is not None:
            is_bos = self._positions(probs.transpose(1, 2)).to(probs.device)
            on_bos = (probs * is_bos[:, None, None, :]).sum(-1).transpose(1, 2)  # (B, T, H): each query's mass on BOS
            self._by_class(acc, "bos_attn", on_bos)
        if layer == self.map_layer:
            shape = self.overall["map_sum"].shape if "map_sum" in self.overall else probs.shape[1:]
            if shape != probs.shape[1:]:
                raise ValueError(f"attention maps of shape {tuple(probs.shape[1:])} cannot be averaged "
                                 f"with {tuple(shape)}: use one sequence length")
            _add(self.overall, "map_sum", probs.sum(0).double().cpu())
            _add(self.overall, "map_count", B)

    def _attn_logits(self, acc, layer, logits):  # (B, H, T, T), -inf where masked
        head_max = logits.amax((0, 2, 3)).double().cpu()
        acc["max_attn_logit"] = torch.maximum(acc.get("max_attn_logit", head_max), head_max)

    def _by_class(self, acc, key, values):
        """Sums of `values` (B, T, H) over the queries of each class, per head, and their counts."""
        for index, name in enumerate(QUERY_CLASSES):
            chosen = (self.query_class == index).to(values.device)
            _add(acc, f"{key}_{name}_sum", values[chosen].sum(0).double().cpu())
            _add(acc, f"{key}_{name}_n", int(chosen.sum()))

    def _bos_and_rest(self, acc, key, norms):
        """Sums of `norms` (B, T, ...) at BOS positions and at the others, and their counts."""
        is_bos = self._positions(norms).to(norms.device)
        _add(acc, f"{key}_bos_sum", norms[is_bos].sum(0).double().cpu())
        _add(acc, f"{key}_bos_n", int(is_bos.sum()))
        _add(acc, f"{key}_other_sum", norms[~is_bos].sum(0).double().cpu())
        _add(acc, f"{key}_other_n", int((~is_bos).sum()))

    def _values(self, acc, layer, values):  # (B, T, H, D), the value vectors attention mixes
        if self.bos_token is not None:
            self._bos_and_rest(acc, "value_norm", values.norm(dim=-1))

    def _hidden(self, acc, layer, hidden):  # (B, T, C), the residual stream after the block
        if self.bos_token is not None:
            self._bos_and_rest(acc, "resid_norm", hidden.norm(dim=-1))
        magnitude = hidden.abs()
        top = int(magnitude.argmax())
        peak = magnitude.flatten()[top].item()
        if peak > acc.get("m_act", -1.0):
            _, position, channel = np.unravel_index(top, magnitude.shape)
            acc.update(m_act=peak, m_act_position=int(position), m_act_channel=int(channel))
        # One batch's median stands in for the median over all batches.
        _add(acc, "median_sum", magnitude.median().item())
        _add(acc, "median_batches", 1)

    def _gate(self, acc, layer, gate):
        # (B, T, H, D) or (B, T, H, 1); (B, T, 1, D) or (B, T, 1, 1) when shared by
        # the heads; (B, T, C) after the output projection (G5): one "head" there.
        B, T = gate.shape[:2]
        by_head = gate.reshape(B, T, gate.size(2) if gate.dim() == 4 else 1, -1)
        _add(acc, "gate_sum", by_head.sum((0, 1, 3)).double().cpu())
        if self.query_class is not None:
            self._by_class(acc, "gate", by_head.mean(-1))
        _add(acc, "gate_n", gate.numel())
        _add(acc, "gate_first_sum", gate[:, 0].sum().item())
        _add(acc, "gate_first_n", gate[:, 0].numel())
        # A score near zero shuts the output whatever its sign (SiLU gates dip below 0).
        magnitude = gate.abs()
        _add(acc, "gate_below_0.1", (magnitude < 0.1).sum().item())
        _add(acc, "gate_below_0.01", (magnitude < 0.01).sum().item())
        _add(self.overall, "gate_hist", torch.histc(gate.clamp(0, 1), GATE_BINS, 0, 1).double().cpu())

    def _attn_output(self, acc, layer, output):  # (B, T, C), after the G1 gate, before c_proj
        magnitude = output.abs()
        _add(acc, "attn_output_below_1e-2", (magnitude < 1e-2).sum().item())
        _add(acc, "attn_output_below_1e-3", (magnitude < 1e-3).sum().item())
        _add(acc, "attn_output_n", output.numel())

    def summary(self, eps=0.3):
        """The metrics as plain data: scalars over the model, and "per_layer" lists (per head inside)."""
        if not self.layers:
            raise ValueError("nothing was observed: run the model inside instrumented(model, observe=stats) first")
        accs = [self.layers[layer] for layer in sorted(self.layers)]
        summary, per_layer = {}, {}
        for scalars, lists in (_attention_summary(accs, eps), _logit_summary(accs), _activation_summary(accs),
                               _gate_summary(accs), _output_summary(accs), _class_summary(accs),
                               _bos_summary(accs)):
            summary.update(scalars)
            per_layer.update(lists)
        summary["per_layer"] = per_layer
        hist = self.overall.get("gate_hist")
        summary["gate_hist"] = None if hist is None else (hist / hist.sum()).tolist()
        if "map_sum" in self.overall:
            attn_map = self.overall["map_sum"] / self.overall["map_count"]
            summary["attn_map"] = {"layer": self.map_layer, "per_head": attn_map.tolist()}
        return summary


def _observed(accs, key):
    return all(key in acc for acc in accs)


def _attention_summary(accs, eps):
    if not _observed(accs, "first_token_attn"):
        return dict(f_attn=None, sink_1=None), dict(first_token_attn=None)
    alpha = np.stack([acc["first_token_attn"].numpy() / acc["queries"] for acc in accs])  # (layers, heads)
    return (dict(f_attn=float(alpha.mean(1).mean()), sink_1=float(100 * (alpha > eps).mean())),
            dict(first_token_attn=alpha.tolist()))


def _logit_summary(accs):
    if not _observed(accs, "max_attn_logit"):
        return dict(max_attn_logit=None), dict(max_attn_logit=None)
    logits = np.stack([acc["max_attn_logit"].numpy() for acc in accs])  # (layers, heads)
    return dict(max_attn_logit=float(logits.max())), dict(max_attn_logit=logits.tolist())


def _activation_summary(accs):
    keys = ("m_act", "median_abs", "m_act_ratio", "m_act_position", "m_act_channel")
    if not _observed(accs, "m_act"):
        return dict(m_act=None, m_act_ratio=None), dict.fromkeys(keys)
    peak = [acc["m_act"] for acc in accs]
    median = [acc["median_sum"] / acc["median_batches"] for acc in accs]
    ratio = [p / m if m > 0 else math.inf for p, m in zip(peak, median)]
    return (dict(m_act=float(np.mean(peak)), m_act_ratio=max(ratio)),
            dict(zip(keys, (peak, median, ratio, [acc["m_act_position"] for acc in accs],
                            [acc["m_act_channel"] for acc in accs]))))


def _gate_summary(accs):
    keys = ("mean_gate", "gate_below_0.1", "gate_below_0.01", "gate_first_token", "gate_other_tokens")
    if not _observed(accs, "gate_n"):
        return dict.fromkeys(keys), dict.fromkeys(keys + ("gate_per_head",))
    per_layer = {
        "mean_gate": [acc["gate_sum"].sum().item() / acc["gate_n"] for acc in accs],
        "gate_below_0.1": [acc["gate_below_0.1"] / acc["gate_n"] for acc in accs],
        "gate_below_0.01": [acc["gate_below_0.01"] / acc["gate_n"] for acc in accs],
        "gate_first_token": [acc["gate_first_sum"] / acc["gate_first_n"] for acc in accs],
        "gate_other_tokens": [(acc["gate_sum"].sum().item() - acc["gate_first_sum"])
                              / max(1, acc["gate_n"] - acc["gate_first_n"]) for acc in accs],
    }
    # Every layer has as many scores, so means over layers are means over all scores.
    summary = {key: float(np.mean(values)) for key, values in per_layer.items()}
    per_layer["gate_per_head"] = [(acc["gate_sum"] * len(acc["gate_sum"]) / acc["gate_n"]).tolist() for acc in accs]
    return summary, per_layer


def _class_summary(accs):
    """Per layer and head: BOS attention and mean gate of dormant and active queries.

    A class with no queries in the observed batches gives None."""
    lists = {}
    for key in ("bos_attn", "gate"):
        for name in QUERY_CLASSES:
            sums, counts = f"{key}_{name}_sum", f"{key}_{name}_n"
            lists[f"{key}_{name}"] = ([(acc[sums] / acc[counts]).tolist() if acc[counts] else None for acc in accs]
                                      if _observed(accs, sums) else None)
    return {}, lists


def _bos_summary(accs):
    """Per layer (and head for values): mean norms at BOS positions and at the other positions."""
    lists = {}
    for key in ("value_norm", "resid_norm"):
        for where in ("bos", "other"):
            sums, counts = f"{key}_{where}_sum", f"{key}_{where}_n"
            lists[f"{key}_{where}"] = ([(acc[sums] / acc[counts]).tolist() if acc[counts] else None for acc in accs]
                                       if _observed(accs, sums) else None)
    return {}, lists


def _output_summary(accs):
    keys = ("attn_output_below_1e-2", "attn_output_below_1e-3")
    if not _observed(accs, "attn_output_n"):
        return dict.fromkeys(keys), dict.fromkeys(keys)
    per_layer = {key: [acc[key] / acc["attn_output_n"] for acc in accs] for key in keys}
    return {key: float(np.mean(values)) for key, values in per_layer.items()}, per_layer


# ---------------------------------------------------------------------------
# Running a model
# ---------------------------------------------------------------------------


@torch.no_grad()
def observe(model, batches, stats):
    """Run `model` in eval mode over (x, y) batches (y may be None) with `stats`
    watching every layer; returns the mean loss, or None without targets.

    Observed attention runs explicitly, which has no randomness in eval mode:
    no random state is touched.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with instrumented(model, observe=stats):
        for x, y in batches:
            stats.tokens(x)
            _, loss = model(x, y)
            if loss is not None:
                total, count = total + loss.item() * len(x), count + len(x)
    model.train(was_training)
    return total / count if count else None


def model_stats(model, idx_batches, eps=0.3, layer=None, bos_token=None, trigger_tokens=()):
    """The summary of `Stats` over an iterable of (B, T) token tensors.

    `layer`, when given, also keeps that layer's attention map averaged over
    the sequences (key "attn_map").
    """
    stats = Stats(layer, bos_token, trigger_tokens)
    observe(model, ((idx, None) for idx in idx_batches), stats)
    return stats.summary(eps)


def token_kinds(meta):
    """The BOS and trigger tokens of a dataset's meta.json, as Stats takes them."""
    return {"bos_token": meta.get("bos_token"), "trigger_tokens": meta.get("trigger_tokens", [])}


def eval_record(model, idx, losses, grad_norms, spike_window, bos_token=None, trigger_tokens=()):
    """The numbers train.py adds to each evaluation: sinks, activations and gate on
    one fixed batch, and the spike scores of the steps so far. With query classes,
    also the BOS attention and mean gate per class, per layer (mean over heads)."""
    stats = model_stats(model, [idx], bos_token=bos_token, trigger_tokens=trigger_tokens)
    record = {key: stats[key] for key in ("f_attn", "sink_1", "m_act", "mean_gate", "max_attn_logit")}
    for key in (f"{kind}_{name}" for kind in ("bos_attn", "gate") for name in QUERY_CLASSES):
        per_layer = stats["per_layer"][key]
        if per_layer is not None:
            record[key] = [None if heads is None else float(np.mean(heads)) for heads in per_layer]
    record["loss_spike_score"] = spike_score(losses, spike_window)
    record["grad_spike_score"] = spike_score(grad_norms, spike_window)
    return record


def eval_hook(spike_window):
    """train.py's on_eval callback: eval_record's numbers and eval_line's text at every evaluation."""
    def on_eval(model, idx, history, meta):
        record = eval_record(model, idx, history["loss"], history["grad_norm"], spike_window, **token_kinds(meta))
        return record, eval_line(record)
    return on_eval


def eval_line(record):
    """The evaluation record's sink, activation and gate numbers, for the training log."""
    gate = "" if record["mean_gate"] is None else f", mean gate {record['mean_gate']:.3f}"
    line = f"F-Attn {record['f_attn']:.3f}, Sink_1 {record['sink_1']:.0f}%, M-Act {record['m_act']:.2f}{gate}"
    if "bos_attn_dormant" in record:
        line += ", BOS attn dormant/active " + " ".join(_pair(record, "bos_attn", layer)
                                                         for layer in range(len(record["bos_attn_dormant"])))
    if record.get("gate_dormant"):
        line += ", gate dormant/active " + " ".join(_pair(record, "gate", layer)
                                                     for layer in range(len(record["gate_dormant"])))
    return line


def _pair(record, key, layer):
    values = [record[f"{key}_{name}"][layer] for name in QUERY_CLASSES]
    return "/".join("-" if v is None else f"{v:.2f}" for v in values)


# ---------------------------------------------------------------------------
# Functional tests: does the model rely on its sink, or on its gate?
# ---------------------------------------------------------------------------


def functional_tests(model, batches, runtime=None):
    """Loss changes when key 0 is masked and, for gated models, when every gate is forced open,
    each loss from train.mean_loss over the (x, y) batches (`runtime`: float32 on the model's
    device unless given)."""
    batches = list(batches)
    runtime = runtime or train.Runtime(next(model.parameters()).device, torch.float32)

    def loss(**switches):
        with instrumented(model, **switches):
            return train.mean_loss(model, batches, runtime)

    base = loss()
    gated = model.config.gate != "none" and model.config.gate_mode == "multiplicative"
    return {"loss_first_key_masked_change": loss(mask_first_key=True) - base,
            "loss_gates_open_change": loss(open_gates=True) - base if gated else None}
