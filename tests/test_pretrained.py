import io
import json
import os
import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from lab import analyze
import prepare_data
from lab import pretrained
import sample
import train
from configurable import ConfigError, to_dict
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent

CHARS = sorted(set("ROMEO: But soft, what light through yonder window breaks?\n"))


def nanogpt_run(tmp_path, vocab_size=len(CHARS), compiled=True, meta_pkl=True, bias=False):
    """A nanoGPT run as nanoGPT's train.py leaves it: out/ckpt.pt (model_args, weights saved from a
    torch.compile'd model, the causal-mask buffers of its slow attention path) and data/DATASET/meta.pkl."""
    torch.manual_seed(0)
    args = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, bias=bias, vocab_size=vocab_size, dropout=0.1)
    model = GPT(GPTConfig(gate="none", **args)).eval()
    with torch.no_grad():  # no zeros and ones: every tensor must land in the right place
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = dict(model.state_dict())
    for i in range(args["n_layer"]):
        state[f"transformer.h.{i}.attn.bias"] = torch.ones(32, 32).tril().view(1, 1, 32, 32)
    if compiled:
        state = {f"_orig_mod.{k}": v for k, v in state.items()}
    ckpt = {"model": state, "optimizer": {}, "model_args": args, "iter_num": 250,
            "best_val_loss": torch.tensor(1.5), "config": {"dataset": "shakespeare_char", "batch_size": 64}}
    (tmp_path / "out").mkdir()
    torch.save(ckpt, tmp_path / "out" / "ckpt.pt")
    if meta_pkl:
        (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
        meta = {"vocab_size": len(CHARS), "itos": dict(enumerate(CHARS)), "stoi": {c: i for i, c in enumerate(CHARS)}}
        with open(tmp_path / "data" / "shakespeare_char" / "meta.pkl", "wb") as f:
            pickle.dump(meta, f)
    return model


@pytest.mark.parametrize("compiled, bias", [(True, False), (False, True)])
def test_nanogpt_checkpoint_loads_with_its_vocabulary(tmp_path, compiled, bias):
    original = nanogpt_run(tmp_path, compiled=compiled, bias=bias)
    model, tokenizer, info = pretrained.load_model(tmp_path / "out")
    assert info["kind"] == "nanogpt" and info["step"] == 250 and model.config.gate == "none"
    assert tokenizer.chars == CHARS
    idx = torch.tensor([tokenizer.encode("ROMEO: But soft")])
    assert torch.equal(model(idx)[0], original(idx)[0])


def test_rope_scaling_is_refused_for_learned_positions(tmp_path):
    nanogpt_run(tmp_path)
    with pytest.raises(ConfigError, match="rope_scaling applies to RoPE models, and .* has learned positions"):
        pretrained.load_model(tmp_path / "out", rope_scaling="yarn")


def test_sample_and_analyze_read_a_nanogpt_checkpoint(tmp_path, data_dir, capsys):
    nanogpt_run(tmp_path)
    with pytest.raises(ConfigError, match="is a nanoGPT checkpoint"):  # sample.py reads this project's only
        sample.main([f"--out_dir={tmp_path / 'out'}"])
    pretrained.main([f"--source={tmp_path / 'out'}", f"--out_dir={tmp_path / 'imported'}"])
    capsys.readouterr()
    samples = sample.main([f"--out_dir={tmp_path / 'imported'}", "--prompt=ROMEO:", "--num_samples=1",
                           "--max_new_tokens=20", "--device=cpu"])
    assert len(samples[0]) == 20 and capsys.readouterr().out.startswith("ROMEO:")
    source = tmp_path / "text.txt"
    source.write_text("".join(CHARS) * 200)
    prepare_data.prepare(prepare_data.DataConfig(dataset="same_chars", source=str(source), data_dir=str(tmp_path)))
    for checkpoint in (tmp_path / "out", tmp_path / "imported"):  # nanoGPT's as it is, and imported
        with pytest.raises(ConfigError, match="give --data=FOLDER"):
            analyze.analyze_checkpoint(checkpoint, seq_len=16)
        with pytest.raises(ConfigError, match="tokenized differently"):  # other characters than the model's
            analyze.analyze_checkpoint(checkpoint, seq_len=16, data=str(data_dir / "tiny"))
        result = analyze.analyze_checkpoint(checkpoint, seq_len=16, num_sequences=4,
                                            data=str(tmp_path / "same_chars"))
        assert result["step"] == 250 and 0 <= result["f_attn"] <= 1 and result["mean_gate"] is None


def test_nanogpt_meta_pkl_is_never_executed(tmp_path):
    nanogpt_run(tmp_path)
    planted = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {planted}",)

    with open(tmp_path / "data" / "shakespeare_char" / "meta.pkl", "wb") as f:
        pickle.dump({"itos": Payload()}, f)
    refused = r"is not a nanoGPT meta.pkl of plain data \(it refers to (posix|nt)\.system\)"
    with pytest.raises(ConfigError, match=refused):
        pretrained.load_model(tmp_path / "out")
    assert not planted.exists()


def write_meta_pkl(tmp_path, meta, pickler=pickle.Pickler):
    path = tmp_path / "data" / "shakespeare_char" / "meta.pkl"
    with open(path, "wb") as f:
        pickler(f).dump(meta)
    return path


def test_meta_pkl_with_a_persistent_id_is_one_clear_line(tmp_path):
    nanogpt_run(tmp_path)

    class OutsideReference(pickle.Pickler):  # a pickle that points at an object kept elsewhere
        def persistent_id(self, obj):
            return "stored elsewhere" if obj == "elsewhere" else None

    itos = dict(enumerate(CHARS))
    path = write_meta_pkl(tmp_path, {"itos": itos, "stoi": {c: i for i, c in itos.items()}, "x": "elsewhere"},
                          OutsideReference)
    with pytest.raises(ConfigError) as e:
        pretrained.load_model(tmp_path / "out")
    assert str(e.value) == (f"{path} is not a nanoGPT meta.pkl of plain data (it refers to an object outside "
                            "the file, persistent id 'stored elsewhere'): it was not read")


def test_meta_pkl_shorter_than_the_vocabulary_is_refused_when_loaded(tmp_path):
    nanogpt_run(tmp_path, vocab_size=len(CHARS) + 5)  # ids the characters of meta.pkl do not reach
    path = tmp_path / "data" / "shakespeare_char" / "meta.pkl"
    message = (f"^{path} does not fit {tmp_path / 'out' / 'ckpt.pt'}: it has {len(CHARS)} characters and the "
               f"model reads {len(CHARS) + 5} tokens \\(ids {len(CHARS)} to {len(CHARS) + 4} would have no "
               "character\\): give the meta.pkl of the dataset the model was trained on$")
    with pytest.raises(ConfigError, match=message):
        pretrained.load_model(tmp_path / "out")
    with pytest.raises(ConfigError, match=message):
        pretrained.main([f"--source={tmp_path / 'out'}", f"--out_dir={tmp_path / 'imported'}"])
    assert not (tmp_path / "imported").exists()  # nothing written, not even the folder


ITOS = dict(enumerate(CHARS))
STOI = {c: i for i, c in ITOS.items()}


@pytest.mark.parametrize("meta, problem", [
    (list(CHARS), "it holds a list, not a dict with 'itos' and 'stoi'"),
    ({"stoi": STOI}, "it has no 'itos'"),
    ({"itos": ITOS}, "it has no 'stoi'"),
    ({"vocab_size": 3}, "it has no 'itos' and no 'stoi'"),
    ({"itos": "".join(CHARS), "stoi": STOI}, "its 'itos' is a str, not a dict of ids to characters"),
    ({"itos": {str(i): c for i, c in ITOS.items()}, "stoi": STOI}, "its 'itos' is keyed by .*, not by the ids 0 to"),
    ({"itos": {i + 1: c for i, c in ITOS.items()}, "stoi": STOI}, "its 'itos' is keyed by .*, not by the ids 0 to"),
    ({"itos": {i: c for i, c in ITOS.items() if i != 5}, "stoi": STOI}, "its 'itos' is keyed by"),
    ({"itos": {}, "stoi": {}}, "its 'itos' is empty"),
    ({"itos": {**ITOS, 3: 7}, "stoi": STOI}, "its 'itos' maps id 3 to 7, not to one character"),
    ({"itos": {**ITOS, 3: "ab"}, "stoi": STOI}, "its 'itos' maps id 3 to 'ab', not to one character"),
    ({"itos": {**ITOS, 3: None}, "stoi": STOI}, "its 'itos' maps id 3 to None, not to one character"),
    ({"itos": {**ITOS, 3: "\ud800"}, "stoi": STOI}, "its 'itos' maps id 3 to '\\\\ud800', half of a UTF-16 pair"),
    ({"itos": {**ITOS, 4: ITOS[3]}, "stoi": STOI}, f"its 'itos' has {ITOS[3]!r} twice \\(ids 3 and 4\\)"),
    ({"itos": ITOS, "stoi": {**STOI, CHARS[0]: 1}}, "its 'stoi' is not its 'itos' the other way round"),
    ({"itos": ITOS, "stoi": list(CHARS)}, "its 'stoi' is not its 'itos' the other way round"),
    ({"itos": ITOS, "stoi": {**STOI, "x": 99}}, "its 'stoi' is not its 'itos' the other way round"),
    ({"itos": ITOS, "stoi": STOI, "vocab_size": len(CHARS) + 1}, "its vocab_size .* is not the number of characters"),
    ({"itos": ITOS, "stoi": STOI, "vocab_size": "30"}, "its vocab_size .* is not the number of characters"),
])
def test_every_malformed_meta_pkl_is_one_line_naming_it(tmp_path, meta, problem):
    nanogpt_run(tmp_path)
    path = write_meta_pkl(tmp_path, meta)
    with pytest.raises(ConfigError, match=f"^{path} is not a nanoGPT character meta.pkl: {problem}") as e:
        pretrained.load_model(tmp_path / "out")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("data", [b"", b"not a pickle at all", pickle.dumps({"itos": ITOS, "stoi": STOI})[:-9]])
def test_a_meta_pkl_that_is_no_pickle_is_one_line(tmp_path, data):
    nanogpt_run(tmp_path)
    path = tmp_path / "data" / "shakespeare_char" / "meta.pkl"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=f"^{path} cannot be read as a pickle: copy the dataset's meta.pkl again$"):
        pretrained.load_model(tmp_path / "out")


def test_itos_as_a_list_or_out_of_code_point_order_reads_the_same(tmp_path):
    original = nanogpt_run(tmp_path)
    text = "ROMEO: But soft"
    with torch.no_grad():
        expected = original(torch.tensor([[STOI[c] for c in text]]))[0]
    write_meta_pkl(tmp_path, {"vocab_size": len(CHARS), "itos": list(CHARS), "stoi": STOI})
    model, tokenizer, _ = pretrained.load_model(tmp_path / "out")
    assert tokenizer.chars == CHARS and torch.equal(model(torch.tensor([tokenizer.encode(text)]))[0], expected)
    # A dataset whose ids are not the characters in code-point order: the model's embedding rows
    # are put in that order, so every character keeps its probability.
    shuffled = [CHARS[i] for i in torch.randperm(len(CHARS), generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():  # the same weights, read as numbering the characters as `shuffled` does
        expected = original(torch.tensor([[shuffled.index(c) for c in text]]))[0]
    write_meta_pkl(tmp_path, {"itos": dict(enumerate(shuffled)), "stoi": {c: i for i, c in enumerate(shuffled)}})
    model, tokenizer, _ = pretrained.load_model(tmp_path / "out")
    assert tokenizer.chars == CHARS
    logits = model(torch.tensor([tokenizer.encode(text)]))[0]
    assert torch.allclose(logits, expected[..., [shuffled.index(c) for c in CHARS]])
    assert tokenizer.decode(logits.argmax(-1)[0].tolist()) == "".join(shuffled[i] for i in expected.argmax(-1)[0])


def test_nanogpt_without_meta_pkl(tmp_path, monkeypatch):
    nanogpt_run(tmp_path, meta_pkl=False)
    with pytest.raises(ConfigError, match="no meta.pkl for nanoGPT dataset 'shakespeare_char'"):
        pretrained.load_model(tmp_path / "out" / "ckpt.pt")

    def offline(name):
        raise ConfigError("could not load tiktoken encoding 'gpt2'")

    monkeypatch.setattr(prepare_data, "get_tiktoken_encoding", offline)
    (tmp_path / "out" / "ckpt.pt").unlink()
    (tmp_path / "out").rmdir()
    nanogpt_run(tmp_path, vocab_size=50304, meta_pkl=False)  # nanoGPT's padded GPT-2 vocabulary
    with pytest.raises(ConfigError, match=r"^could not load the GPT-2 tokenizer .*check your network$"):
        pretrained.load_model(tmp_path / "out" / "ckpt.pt")


# ---------------------------------------------------------------------------
# GPT-2 in the Hugging Face format
# ---------------------------------------------------------------------------


class StubEncoding:
    """Stands in for tiktoken's gpt2 encoding, which is downloaded on first use."""
    name, n_vocab = "gpt2", 100  # as small as the test model's vocabulary

    def encode_ordinary(self, text):
        return [ord(c) % 100 for c in text]

    def encode_to_numpy(self, text, disallowed_special=()):  # what prepare_data.py's workers call
        return np.array(self.encode_ordinary(text), dtype=np.uint32)

    def decode(self, ids):
        return "".join(chr(65 + i % 26) for i in ids)


@pytest.fixture
def hf_gpt2(tmp_path, monkeypatch):
    """A small random GPT-2 saved by transformers' save_pretrained, and the transformers model."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    monkeypatch.setattr(prepare_data, "get_tiktoken_encoding", lambda name: StubEncoding())
    config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # biases and LayerNorms start at 0 and 1: move them so that each one counts
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path / "hf-gpt2"
    hf.save_pretrained(folder)
    return hf, folder


def test_gpt2_from_hugging_face_files_matches_transformers(hf_gpt2, tmp_path):
    hf, folder = hf_gpt2
    assert (folder / "model.safetensors").is_file()
    model, tokenizer, info = pretrained.load_model(folder)
    assert info["kind"] == "gpt2" and model.config.activation == "gelu_tanh" and model.config.bias
    idx = torch.randint(0, 100, (2, 32))
    with torch.no_grad():
        expected = hf(idx).logits
    assert torch.allclose(model(idx)[0], expected, atol=1e-5)
    # The exact GELU would not do: the activation setting is what makes GPT-2's numbers.
    plain_gelu = train.model_from_state(
        GPTConfig(**{**vars(model.config), "activation": "gelu"}), model.state_dict())
    assert not torch.allclose(plain_gelu(idx)[0], expected, atol=1e-5)
    # pytorch_model.bin instead of safetensors
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "config.json").write_text((folder / "config.json").read_text())
    torch.save(hf.state_dict(), bin_folder / "pytorch_model.bin")
    assert torch.allclose(pretrained.load_model(bin_folder)[0](idx)[0], expected, atol=1e-5)


def test_gpt2_in_the_hub_layout(hf_gpt2, tmp_path):
    """OpenAI's files on the hub name tensors without "transformer.", keep the causal-mask
    buffers and leave out the tied output head."""
    from safetensors.torch import save_file
    hf, folder = hf_gpt2
    state = {k.removeprefix("transformer."): v.contiguous()
             for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.ones(32, 32).tril().view(1, 1, 32, 32)
    hub = tmp_path / "hub"
    hub.mkdir()
    save_file(state, str(hub / "model.safetensors"))
    (hub / "config.json").write_text((folder / "config.json").read_text())
    idx = torch.randint(0, 100, (2, 32))
    with torch.no_grad():
        assert torch.allclose(pretrained.load_model(hub)[0](idx)[0], hf(idx).logits, atol=1e-5)


def test_train_refuses_to_resume_a_nanogpt_checkpoint(tmp_path):
    nanogpt_run(tmp_path)
    with pytest.raises(ConfigError, match="is a nanoGPT checkpoint: train.py cannot resume it"):
        train.main([f"--out_dir={tmp_path / 'out'}", "--resume"])


def test_sample_with_gpt2_weights(hf_gpt2, tmp_path, capsys):
    _, folder = hf_gpt2
    pretrained.main([f"--source={folder}", f"--out_dir={tmp_path / 'out-gpt2'}"])
    samples = sample.main([f"--out_dir={tmp_path / 'out-gpt2'}", "--prompt=hello", "--num_samples=1",
                           "--max_new_tokens=5", "--device=cpu"])
    assert len(samples[0]) == 5 and all(0 <= t < 100 for t in samples[0])


def test_analyze_gpt2_weights_on_a_dataset_with_their_tokenizer(hf_gpt2, tmp_path, data_dir):
    _, folder = hf_gpt2
    source = tmp_path / "text.txt"
    source.write_text("The attention sink is the first token. " * 100)
    prepare_data.prepare(prepare_data.DataConfig(dataset="bpe", source=str(source), tokenizer="gpt2",
                                                 data_dir=str(tmp_path)))
    result = analyze.analyze_checkpoint(folder, seq_len=16, num_sequences=4, data=str(tmp_path / "bpe"))
    assert result["step"] is None and result["params"] > 0 and 0 <= result["f_attn"] <= 1
    with pytest.raises(ConfigError, match="tokenized differently from the model"):  # characters, not GPT-2
        analyze.analyze_checkpoint(folder, seq_len=16, data=str(data_dir / "tiny"))


def serve(folder, calls):
    """urlopen for the Hugging Face resolve URLs, answered from a local folder."""
    def urlopen(url, timeout=None):
        calls.append(url)
        data = (folder / url.rsplit("/", 1)[1]).read_bytes()
        response = io.BytesIO(data)
        response.headers = {"Content-Length": str(len(data))}
        return response
    return urlopen


def test_gpt2_by_name_is_downloaded_once_and_cached(hf_gpt2, tmp_path, monkeypatch):
    hf, folder = hf_gpt2
    calls = []
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained.urllib.request, "urlopen", serve(folder, calls))
    model, _, _ = pretrained.load_model("gpt2")
    assert calls == [pretrained.HF_URL.format(name="gpt2", file=f) for f in ("config.json", "model.safetensors")]
    cached = tmp_path / "cache" / "gated-gpt" / "gpt2"
    assert sorted(p.name for p in cached.iterdir()) == ["config.json", "model.safetensors"]
    idx = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], hf(idx).logits, atol=1e-5)
    pretrained.load_model("gpt2")
    assert len(calls) == 2  # from the cache


def test_gpt2_without_network_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def no_network(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(pretrained.urllib.request, "urlopen", no_network)
    with pytest.raises(ConfigError, match=r"^could not download https://huggingface.co/openai-community/gpt2-xl/"
                                          r"resolve/main/config.json \(.*name resolution\): check your network") as e:
        pretrained.load_model("gpt2-xl")
    assert "\n" not in str(e.value)
    assert list((tmp_path / "gated-gpt" / "gpt2-xl").iterdir()) == []  # nothing half-written


def test_foreign_files_are_refused_clearly(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="holds a 'llama' model, not GPT-2"):
        pretrained.load_model(folder)
    config = {"model_type": "gpt2", "vocab_size": 10, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="no model.safetensors or pytorch_model.bin"):
        pretrained.load_model(folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ConfigError, match="is not a safetensors file"):
        pretrained.load_model(folder)
    (folder / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(ConfigError, match="differs from OpenAI's in activation_function"):
        pretrained.load_model(folder)
    with pytest.raises(ConfigError, match="no checkpoint at .*gpt2-tiny: give a ckpt.pt"):
        pretrained.load_model("gpt2-tiny")


# ---------------------------------------------------------------------------
# The import: python -m lab.pretrained --source=... --out_dir=DIR, then sample.py --out_dir=DIR
# ---------------------------------------------------------------------------


def test_import_a_nanogpt_run_from_the_command_line_then_sample_it(tmp_path, capsys):
    original = nanogpt_run(tmp_path)
    out_dir = tmp_path / "imported"
    done = subprocess.run([sys.executable, "-m", "lab.pretrained", f"--source={tmp_path / 'out'}",
                           f"--out_dir={out_dir}"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(f"-> {out_dir / 'ckpt.pt'}\nsample it with: python sample.py --out_dir={out_dir}\n")
    ckpt = train.load_checkpoint(out_dir / "ckpt.pt", keys=("model", "config", "meta"))
    args = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, bias=False, vocab_size=len(CHARS), dropout=0.1)
    assert ckpt["config"] == to_dict(GPTConfig(gate="none", **args)) and ckpt["step"] == 250
    assert ckpt["meta"] == {"tokenizer": "char", "chars": CHARS, "vocab_size": len(CHARS), "dtype": "uint16"}
    idx = torch.tensor([prepare_data.tokenizer_from_meta(ckpt["meta"]).encode("ROMEO: But soft")])
    assert torch.equal(train.model_from_checkpoint(ckpt)(idx)[0], original.eval()(idx)[0])
    samples = sample.main([f"--out_dir={out_dir}", "--prompt=ROMEO:", "--num_samples=2", "--max_new_tokens=30",
                           "--device=cpu"])
    assert [len(s) for s in samples] == [30, 30] and capsys.readouterr().out.startswith("ROMEO:")
    model, tokenizer, info = pretrained.load_model(out_dir)  # analyze's loader reads the imported folder
    assert all(len(tokenizer.decode(s)) == 30 for s in samples)
    assert info["kind"] == "nanogpt" and info["step"] == 250 and tokenizer.chars == CHARS
    assert torch.equal(model(idx)[0], original(idx)[0])


def test_import_gpt2_files_gives_transformers_logits(hf_gpt2, tmp_path):
    hf, folder = hf_gpt2
    out = pretrained.main([f"--source={folder}", f"--out_dir={tmp_path / 'out-gpt2'}"])
    assert out == tmp_path / "out-gpt2" / "ckpt.pt"
    ckpt = train.load_checkpoint(out, keys=("model", "config", "meta"))  # as sample.py reads it
    assert ckpt["meta"] == {"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16"} and "step" not in ckpt
    assert ckpt["config"] == to_dict(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=32,
                                               bias=True, activation="gelu_tanh", gate="none"))
    idx = torch.randint(0, 100, (2, 32))
    with torch.no_grad():
        expected = hf(idx).logits
        assert torch.allclose(train.model_from_checkpoint(ckpt)(idx)[0], expected, atol=1e-5)
        model, _, info = pretrained.load_model(out.parent)
        assert info["kind"] == "gpt2" and torch.allclose(model(idx)[0], expected, atol=1e-5)
    with pytest.raises(ConfigError, match="rope_scaling applies to RoPE models, and .* has learned positions"):
        pretrained.load_model(out.parent, rope_scaling="yarn")


def test_gpt2_by_name_is_imported_offline_from_the_cache(hf_gpt2, tmp_path, monkeypatch, capsys):
    _, folder = hf_gpt2
    calls = []
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained.urllib.request, "urlopen", serve(folder, calls))
    pretrained.main(["--source=gpt2", f"--out_dir={tmp_path / 'out-gpt2'}"])
    assert len(calls) == 2 and "gpt2 (gpt2, 0." in capsys.readouterr().out
    with pytest.raises(ConfigError, match="out-gpt2/ckpt.pt exists: choose another --out_dir"):  # before a download
        pretrained.main(["--source=gpt2-xl", f"--out_dir={tmp_path / 'out-gpt2'}"])
    assert len(calls) == 2


def test_import_refuses_clearly(tmp_path, capsys):
    nanogpt_run(tmp_path)
    source = f"--source={tmp_path / 'out'}"
    with pytest.raises(SystemExit) as e:
        pretrained.main(["--help"])
    assert e.value.code == 0 and "--out_dir=" in capsys.readouterr().out
    for argv in ([source], [f"--out_dir={tmp_path / 'x'}"], []):
        with pytest.raises(ConfigError, match=r"^give what to import and where: --source=PATH_OR_NAME --out_dir=DIR$"):
            pretrained.main(argv)
    out = pretrained.main([source, f"--out_dir={tmp_path / 'imported'}"])
    written = out.read_bytes()
    with pytest.raises(ConfigError, match=f"^{out} exists: choose another --out_dir, or delete it to import again$"):
        pretrained.main([source, f"--out_dir={tmp_path / 'imported'}"])
    assert out.read_bytes() == written
    with pytest.raises(ConfigError, match=f"is already a checkpoint of this project: sample it as it is, with "
                                          f"python sample.py --out_dir={out.parent}$"):
        pretrained.main([f"--source={out.parent}", f"--out_dir={tmp_path / 'again'}"])
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="a-file is a file, not a folder"):
        pretrained.main([source, f"--out_dir={tmp_path / 'a-file'}"])
    with prepare_data.hold(tmp_path / "busy"):  # a training, or another import, holds the folder
        with pytest.raises(ConfigError, match=f"{tmp_path / 'busy'} is in use by another run"):
            pretrained.main([source, f"--out_dir={tmp_path / 'busy'}"])
    assert not (tmp_path / "busy" / "ckpt.pt").exists()
    with pytest.raises(ConfigError, match="no checkpoint at .*missing: give a ckpt.pt"):
        pretrained.main([f"--source={tmp_path / 'missing'}", f"--out_dir={tmp_path / 'x'}"])
