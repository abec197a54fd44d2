import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lab import longctx
import prepare_data
import sample
import train
from configurable import ConfigError, parse_args
from model import GPT, GPTConfig, KVCache, ROPE_SCALINGS, rope_attention_scale, rope_frequencies

VOCAB = 37


def rope_model(seed=0, **kw):
    base = dict(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=32, pos_emb="rope", gate="elementwise")
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**base, **kw})).double().eval()


# ---------------------------------------------------------------------------
# The frequencies, against the papers' formulas written out with plain math
# ---------------------------------------------------------------------------


def paper_theta(d, base=10000.0):
    return [base ** (-2 * i / d) for i in range(d // 2)]


def reference_yarn(d, s, L, base=10000.0, beta_fast=32, beta_slow=1):
    """YaRN as its authors' code (jquesnelle/yarn) and transformers compute it: the pairs that turn
    beta_fast and beta_slow times within L, as indices rounded outwards, and a ramp linear in the index."""
    def index(turns):
        return d * math.log(L / (turns * 2 * math.pi)) / (2 * math.log(base))
    low, high = max(math.floor(index(beta_fast)), 0), min(math.ceil(index(beta_slow)), d - 1)
    high += 0.001 if low == high else 0
    out = []
    for j, theta in enumerate(paper_theta(d, base)):
        keep = 1 - min(1.0, max(0.0, (j - low) / (high - low)))
        out.append(theta / s * (1 - keep) + theta * keep)
    return out


def config(d, s, L, method, n_head=2):
    return GPTConfig(vocab_size=VOCAB, block_size=L, n_head=n_head, n_embd=d * n_head, pos_emb="rope",
                     rope_scaling=method, rope_factor=s)


CASES = [(32, 2.0, 64), (64, 8.0, 128), (16, 4.0, 256), (128, 3.0, 2048)]


@pytest.mark.parametrize("d, s, L", CASES)
def test_frequencies_match_the_papers(d, s, L):
    theta = paper_theta(d)
    expected = {
        "pi": [t / s for t in theta],  # Chen et al.: positions m / s
        "ntk": paper_theta(d, 10000.0 * s ** (d / (d - 2))),  # bloc97: base * s^(d/(d-2))
        "yarn": reference_yarn(d, s, L),
    }
    for method, want in expected.items():
        got = rope_frequencies(config(d, s, L, method), length=int(s * L)).double()
        assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=0), method
    # Dynamic NTK (emozilla 2023, as transformers): past L, NTK with s' = s n / L - (s - 1); within L plain RoPE.
    dynamic = config(d, s, L, "dynamic_ntk")
    for n in (3 * L, int(s * L) + 5):
        want = paper_theta(d, 10000.0 * (s * n / L - (s - 1)) ** (d / (d - 2)))
        assert torch.allclose(rope_frequencies(dynamic, n).double(), torch.tensor(want, dtype=torch.float64),
                              rtol=1e-5, atol=0)
    assert torch.allclose(rope_frequencies(dynamic, L).double(), torch.tensor(theta, dtype=torch.float64), rtol=1e-6)
    # YaRN's temperature: sqrt(1/t) = 0.1 ln s + 1 on q and k each.
    assert rope_attention_scale(config(d, s, L, "yarn")) == pytest.approx(0.1 * math.log(s) + 1, rel=1e-12)
    assert rope_attention_scale(config(d, s, L, "pi")) == 1.0


def test_yarn_keeps_fast_dimensions_and_interpolates_slow_ones():
    d, s, L = 64, 4.0, 4096
    theta = paper_theta(d)
    got = rope_frequencies(config(d, s, L, "yarn"), L).double().tolist()
    # Pairs 0 .. 10 turn >= 32 times in 4096 tokens, pairs 23 .. 31 less than once; 11 .. 22 are blended.
    for j, (t, g) in enumerate(zip(theta, got)):
        if j <= 10:
            assert g == pytest.approx(t, rel=1e-6)
        elif j >= 23:
            assert g == pytest.approx(t / s, rel=1e-6)
        else:
            assert t / s < g < t


def test_yarn_at_a_short_trained_length_ramps_over_pair_indices():
    """L = 64, d = 32, s = 8: the correction range is pairs 0 .. 5 (pair 0 turns only 10 times, but the
    range is clamped at 0), so the five fastest pairs keep 1, 0.8, 0.6, 0.4, 0.2 of their frequency and
    the others are interpolated as in PI (the paper's gamma(r) read literally would keep 0.30 .. 0.00)."""
    d, s, L = 32, 8.0, 64
    theta = paper_theta(d)
    got = rope_frequencies(config(d, s, L, "yarn"), L).double().tolist()
    for j, (t, g) in enumerate(zip(theta, got)):
        keep = max(0.0, 1 - j / 5)
        assert g == pytest.approx(t / s * (1 - keep) + t * keep, rel=1e-6), j


@pytest.mark.parametrize("method", ROPE_SCALINGS)
def test_every_method_at_scale_1_is_plain_rope_exactly(method):
    plain = rope_model(rope_scaling="none")
    scaled = rope_model(rope_scaling=method)
    idx = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(plain(idx)[0], scaled(idx)[0])
    assert torch.equal(plain.rope_cos, scaled.rope_cos)


def test_scalings_change_the_model_past_scale_1():
    idx = torch.randint(0, VOCAB, (2, 16))
    plain = rope_model()(idx)[0]
    for method in ("pi", "ntk", "yarn"):
        assert not torch.allclose(plain, rope_model(rope_scaling=method, rope_factor=2.0)(idx)[0]), method


# ---------------------------------------------------------------------------
# Any length: evaluation, cached generation and sampling past block_size
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ROPE_SCALINGS)
def test_rope_model_evaluates_past_block_size(method):
    model = rope_model(rope_scaling=method, rope_factor=1.0 if method in ("none", "dynamic_ntk") else 4.0)
    idx = torch.randint(0, VOCAB, (2, 64))  # 4 x block_size
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 64, VOCAB) and torch.isfinite(loss)
    # Causal: the first 40 positions do not depend on what follows (the tables grew, they did not change).
    # Dynamic NTK is the exception by design: its angles depend on the whole length.
    if method != "dynamic_ntk":
        assert torch.allclose(model(idx[:, :40])[0], logits[:, :40], atol=1e-10)


def test_learned_positions_past_block_size_say_why():
    model = rope_model(pos_emb="learned")
    with pytest.raises(ValueError, match="learned positions stop there.*pos_emb=rope"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("kw, message", [
    (dict(pos_emb="learned", rope_scaling="yarn", rope_factor=2.0), "use pos_emb=rope"),
    (dict(rope_scaling="pi", rope_factor=0.5), "must be at least 1"),
    (dict(rope_factor=2.0), "no effect with rope_scaling=none"),
    (dict(rope_scaling="linear"), "choose one of none, pi, ntk, dynamic_ntk, yarn"),
])
def test_bad_rope_settings_are_rejected(kw, message):
    with pytest.raises(ConfigError, match=message):
        rope_model(**kw)


@pytest.mark.parametrize("method", ["pi", "ntk", "dynamic_ntk", "yarn"])
def test_cached_generation_with_scaling_equals_uncached_past_block_size(method):
    model = rope_model(rope_scaling=method, rope_factor=2.0)
    prompt = torch.randint(0, VOCAB, (2, 5))
    runs = [model.generate(prompt, 70, temperature=1.0, top_k=20, use_cache=use_cache,
                           generator=torch.Generator().manual_seed(3)) for use_cache in (True, False)]
    assert runs[0].shape == (2, 75)  # past the 32-token context twice over
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_with_scaling_keeps_the_longer_context(use_cache):
    """With pi at s = 2 the 16-token model predicts from up to 32 tokens; without, from a jumped window."""
    seen = []
    for kw, context in [(dict(rope_scaling="pi", rope_factor=2.0), 30), (dict(), 16 - 4 + 1)]:
        model = rope_model(**kw)
        hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].size(1)))
        prompt = torch.randint(0, VOCAB, (2, 30))
        out = model.generate(prompt, 1, temperature=0, use_cache=use_cache)
        assert torch.equal(out[:, 30], model(prompt[:, -context:])[0][:, -1].argmax(-1))
        hook.remove()
    assert seen[0] == 30 and seen[2] == 13  # the calls made by generate (the others are the checks)


def test_kv_cache_refuses_more_than_its_capacity():
    model = rope_model()
    cache = KVCache(model.config, capacity=8)
    with pytest.raises(ValueError, match="do not fit in a KV cache of 8"):
        model(torch.zeros(1, 9, dtype=torch.long), cache=cache)


# ---------------------------------------------------------------------------
# longctx.py: the sink test's window, the evaluation and sampling past block_size
# ---------------------------------------------------------------------------


def test_window_covering_the_whole_text_equals_the_ordinary_forward():
    model = rope_model(gate="none")
    runtime = train.setup_runtime("cpu", "float32")
    x, y = torch.randint(0, VOCAB, (5, 40)), torch.randint(0, VOCAB, (5, 40))  # past block_size too
    full = longctx.position_losses(model, x, y, 2, runtime)
    for sinks in (0, 4):
        streamed = longctx.streamed_losses(model, x, y, 40, sinks, 2, runtime)
        assert np.allclose(streamed, full, rtol=0, atol=1e-6)  # the losses are computed in float32


@pytest.mark.parametrize("sinks", [0, 3])
def test_window_sees_the_sinks_and_the_last_tokens_only(sinks):
    """Changing a token the window has dropped does not change the prediction; changing a kept one does."""
    model = rope_model(n_layer=1)
    x = torch.randint(0, VOCAB, (1, 30))

    def last_logits(idx):
        cache = longctx.WindowCache(model.config, 30, window=8, sinks=sinks)
        for t in range(30):
            logits, _ = model(idx[:, t:t + 1], cache=cache)
        return logits

    base = last_logits(x)
    for position, kept in [(1, sinks > 1), (10, False), (25, True)]:
        changed = x.clone()
        changed[0, position] = (changed[0, position] + 1) % VOCAB
        assert torch.allclose(last_logits(changed), base, atol=1e-12) != kept, position


def test_yarn_regimes_of_the_study_model_follow_the_reference_ramp():
    """Head size 32, trained length 64: the ramp runs over pairs 0 to 5 (the 32-turn bound clamped to 0)."""
    regimes = longctx.yarn_regimes({"config": dict(vocab_size=VOCAB, block_size=64, n_head=4, n_embd=128,
                                                   pos_emb="rope")})
    assert (regimes["kept"], regimes["blended"], regimes["interpolated"]) == (1, 4, 11)
    assert regimes["keep"][:6] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], abs=1e-6)
    assert regimes["rotations"][0] == pytest.approx(64 / (2 * math.pi))


def documents_dataset(folder, bos, lengths, seed=0):
    """A prepared dataset of documents, each a BOS and `length` random tokens, in both splits."""
    rng = np.random.default_rng(seed)
    tokens = np.concatenate([np.concatenate([[bos], rng.integers(0, bos, n)]) for n in lengths]).astype(np.uint16)
    folder.mkdir(parents=True)
    prepare_data.write_dataset(folder, tokens, tokens, {"tokenizer": "char", "vocab_size": bos + 1, "dtype": "uint16",
                                                        "chars": [chr(97 + i) for i in range(bos)],
                                                        "bos_token": bos})
    return tokens


@pytest.mark.parametrize("bos_aligned", [True, False])
def test_bos_aligned_runs_are_evaluated_on_windows_that_start_at_a_bos(tmp_path, bos_aligned):
    """As the run was trained: windows start at a document's BOS, spread over the split's documents."""
    bos = VOCAB - 1
    tokens = documents_dataset(tmp_path / "docs", bos, [60, 35, 90, 70, 120, 64, 80, 50])
    ckpt = {"config": {"data_dir": str(tmp_path), "dataset": "docs", "bos_aligned": bos_aligned}}
    runtime = train.setup_runtime("cpu", "float32")
    x, y, overlap = longctx.val_windows(ckpt, 64, 4, runtime)
    assert x.shape == y.shape == (4, 64) and torch.equal(x[:, 1:], y[:, :-1])
    starts = [i for i in range(len(tokens) - 64) if tokens[i] == bos]  # a BOS with 64 + 1 tokens after it
    if bos_aligned:
        assert x.tolist() == [tokens[starts[j]:starts[j] + 64].tolist() for j in (0, 2, 4, 6)]  # 7 starts
        assert not overlap
    else:  # evenly spaced over the split, wherever they fall
        assert x[0].tolist() == tokens[:64].tolist() and not (x[:, 0] == bos).all()
    with pytest.raises(ConfigError, match="shorter than the longest evaluation, 1000 tokens.*smaller --multiples"):
        longctx.val_windows(ckpt, 1000, 4, runtime)


@pytest.mark.parametrize("dynamic_factor, expected", [(0, 4.0), (1, 1.0)])
def test_every_method_is_set_up_for_the_longest_length_and_dynamic_ntk_may_take_its_own_factor(
        monkeypatch, dynamic_factor, expected):
    factors = {}

    def model_from_checkpoint(ckpt, device, rope_scaling, rope_factor):
        factors[rope_scaling] = rope_factor
        return rope_model(rope_scaling=rope_scaling, rope_factor=rope_factor)

    monkeypatch.setattr(train, "model_from_checkpoint", model_from_checkpoint)
    cfg = longctx.LongCtxConfig(multiples="1,4", dynamic_factor=dynamic_factor, batch_size=2)
    x = torch.randint(0, VOCAB, (3, 64))
    out = longctx.extension_results({"config": {"block_size": 16}}, x, x, cfg, train.setup_runtime("cpu", "float32"))
    assert factors == {"none": 1.0, "pi": 4.0, "ntk": 4.0, "dynamic_ntk": expected, "yarn": 4.0}
    assert out["dynamic_ntk"]["loss"][1] == pytest.approx(out["none"]["loss"][1], abs=1e-9)
    with pytest.raises(ConfigError, match="dynamic_factor=0.5 must be 0"):
        longctx.LongCtxConfig(dynamic_factor=0.5)


@pytest.fixture(scope="module")
def rope_runs(data_dir, tmp_path_factory):
    """Two tiny RoPE runs (plain and gated) trained by longctx.py itself, and its results."""
    out = tmp_path_factory.mktemp("longctx")
    results = longctx.main([f"--data_dir={data_dir}", "--dataset=tiny", f"--out_dir={out}", "--pos_emb=rope",
                            "--seeds=1", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16",
                            "--batch_size=8", "--max_iters=30", "--eval_interval=30", "--eval_iters=2",
                            "--learning_rate=3e-3", "--progress=false", "--device=cpu", "--num_windows=6",
                            "--multiples=1,2,4", "--batch_size=4", "--window=6", "--sink_tokens=2"])
    return out, results


def test_evaluation_covers_every_method_and_length(rope_runs):
    out, results = rope_runs
    assert len(results) == 2
    for r in results.values():
        ext = r["extension"]
        assert set(ext) == set(ROPE_SCALINGS)
        assert all(set(ext[m]["loss"]) == {1, 2, 4} and len(ext[m]["per_position"]) == 64 for m in ext)
        # At the trained length the unscaled methods agree: dynamic NTK is plain RoPE there.
        assert ext["dynamic_ntk"]["loss"][1] == pytest.approx(ext["none"]["loss"][1], abs=1e-9)
        assert ext["pi"]["loss"][4] != ext["none"]["loss"][4]
        # The mean loss over the first 16 positions of the 4x windows is the 1x loss (causal attention).
        assert np.mean(ext["none"]["per_position"][:16]) == pytest.approx(ext["none"]["loss"][1], abs=1e-6)
        regimes = r["yarn_regimes"]
        assert regimes["kept"] + regimes["blended"] + regimes["interpolated"] == 8
        sinks = r["sinks"]
        assert 0 <= sinks["f_attn"] <= 1 and sinks["sink_1"] >= 0
        assert sinks["window"] == 6 and sinks["length"] == 16 and len(sinks["per_position"]["window"]) == 16
    table = (out / "longctx.md").read_text()
    assert "| yarn | elementwise |" in table and "Change of the loss at the trained length" in table
    saved = json.loads((out / "longctx.json").read_text())
    assert set(saved["models"]) == set(results)


def test_learned_positions_and_bad_settings_are_refused(rope_runs, data_dir, tmp_path):
    out, _ = rope_runs
    train.main([f"--data_dir={data_dir}", "--dataset=tiny", f"--out_dir={tmp_path}", "--n_layer=1", "--n_head=2",
                "--n_embd=16", "--block_size=16", "--max_iters=1", "--eval_iters=1", "--progress=false",
                "--device=cpu"])
    with pytest.raises(ConfigError, match="learned positions.*pos_emb=rope"):
        longctx.main([f"--checkpoints={tmp_path}", f"--out_dir={tmp_path}/eval"])
    with pytest.raises(ConfigError, match="needs RoPE: add --pos_emb=rope"):
        longctx.main([f"--out_dir={tmp_path}/runs"])
    with pytest.raises(ConfigError, match="no effect with --checkpoints"):
        longctx.main([f"--checkpoints={out}/none-seed1337", "--max_iters=5"])
    settings = parse_args([longctx.LongCtxConfig, GPTConfig, train.TrainConfig],
                          [f"--checkpoints={out}/none-seed1337", "--threads=1", "--device=cpu"])
    assert longctx.checkpoint_paths(*settings) == [out / "none-seed1337" / "ckpt.pt"]  # runtime settings apply
    with pytest.raises(ConfigError, match="shorter than the longest evaluation.*smaller --multiples"):
        longctx.main([f"--checkpoints={out}/none-seed1337", f"--out_dir={tmp_path}/eval", "--multiples=1,4096"])
    with pytest.raises(ConfigError, match="'multiples'"):
        longctx.main(["--multiples=1,two"])
    with pytest.raises(ConfigError, match="choose from none, pi"):
        longctx.main(["--methods=none,rope"])
    with pytest.raises(ConfigError, match=r"sink_tokens \(4\) < window \(2\)"):
        longctx.main([f"--checkpoints={out}/none-seed1337", f"--out_dir={tmp_path}/eval", "--window=2"])


def test_evaluating_checkpoints_takes_the_runtime_keys(rope_runs, tmp_path, monkeypatch):
    out, _ = rope_runs
    threads = []
    setup = train.setup_runtime
    monkeypatch.setattr(train, "setup_runtime", lambda device, dtype, n=0: threads.append(n) or setup(device, dtype, 0))
    results = longctx.main([f"--checkpoints={out}/none-seed1337", f"--out_dir={tmp_path}/eval", "--threads=1",
                            "--device=cpu", "--multiples=1", "--methods=none", "--num_windows=2", "--window=6",
                            "--sink_tokens=2"])
    assert len(results) == 1 and threads == [1]


def test_rope_model_samples_past_block_size_with_scaling(rope_runs, capsys):
    out, _ = rope_runs
    common = [f"--out_dir={out}/elementwise-seed1337", "--max_new_tokens=70", "--num_samples=1", "--device=cpu",
              "--prompt=ROMEO:"]
    plain = sample.main(common)
    scaled = sample.main([*common, "--rope_scaling=yarn", "--rope_factor=4"])
    assert len(plain[0]) == len(scaled[0]) == 70  # 76 tokens in all, over 4 x block_size=16
    assert plain != scaled  # same seed, another context: the 64-token window with YaRN
    with pytest.raises(ConfigError, match="add e.g. --rope_factor=4"):
        sample.main([*common, "--rope_scaling=yarn"])
    with pytest.raises(ConfigError, match="needs a rope_scaling"):
        sample.main([*common, "--rope_factor=4"])


def test_study_preset_trains_plain_and_gated_rope_models_with_three_seeds():
    preset = Path(__file__).resolve().parents[1] / "configs" / "longctx_cpu.toml"
    cfg, model_cfg, train_cfg = parse_args([longctx.LongCtxConfig, GPTConfig, train.TrainConfig],
                                           [f"--config={preset}"])
    runs = longctx.training_runs(cfg, model_cfg, train_cfg)
    assert [path.name for path in runs] == [f"{v}-seed{s}" for v in ("none", "elementwise") for s in (1337, 1338, 1339)]
    assert {(s["gate"], s["pos_emb"], s["block_size"]) for s in runs.values()} == {
        ("none", "rope", 64), ("elementwise", "rope", 64)}
    assert max(cfg.multiple_list()) == 8
