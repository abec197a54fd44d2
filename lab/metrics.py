"""Measurements from the tensors a model shows its observer: attention sinks, massive
activations, gate statistics, loss and gradient spikes, and what happens when a sink or a
gate is taken away. train.py logs them at every evaluation; analyze.py reports them for
checkpoints. This module imports neither.

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

import math

import numpy as np
import torch

from model import ablated

GATE_BINS = 50  # gate-score histogram on [0, 1]
QUERY_CLASSES = ("dormant", "active")  # index 0 and 1 in Stats.query_class; BOS queries are -1


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
    """An observer for `model(idx, observe=stats)` that reduces each tensor as it passes.

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
            raise ValueError("nothing was observed: run the model with observe=stats first")
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

    The observer makes the model take its explicit attention path, which has
    no randomness in eval mode: no random state is touched.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        stats.tokens(x)
        _, loss = model(x, y, observe=stats)
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


@torch.no_grad()
def mean_loss(model, batches, **switches):
    """The mean loss over (x, y) batches in eval mode, with `model.ablated` switches on."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with ablated(model, **switches):
        for x, y in batches:
            _, loss = model(x, y)
            total, count = total + loss.item() * len(x), count + len(x)
    model.train(was_training)
    return total / count


def functional_tests(model, batches):
    """Loss changes when key 0 is masked and, for gated models, when every gate is forced open."""
    batches = list(batches)
    base = mean_loss(model, batches)
    gated = model.config.gate != "none" and model.config.gate_mode == "multiplicative"
    return {"loss_first_key_masked_change": mean_loss(model, batches, mask_first_key=True) - base,
            "loss_gates_open_change": mean_loss(model, batches, open_gates=True) - base if gated else None}


