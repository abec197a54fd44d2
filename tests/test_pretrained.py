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
