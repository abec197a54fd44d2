"""bench.py runs end to end on a tiny model and prints its tables. No timing assertions: speed is
measured by bench.py itself, never by tests."""

import json
import math

import pytest

from lab import bench
import prepare_data
from configurable import ConfigError

# Importing torch.compile's machinery warns about torch.jit internals; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

TINY = ["--preset=tiny", "--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16",
        "--batch_size=4", "--warmup=1", "--steps=2", "--repeats=2", "--gen_tokens=10,40", "--gen_repeats=1",
        "--compile=false"]


def positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bench_prints_every_table(tmp_path, capsys):
    report = bench.main([*TINY, f"--data_dir={tmp_path}", "--dataset=missing", "--dtype=bfloat16",
                         "--paths=float32/false,default", "--variants=none,headwise,elementwise",
                         f"--json={tmp_path / 'bench.json'}"])
    out = capsys.readouterr().out
    for title in ("Training: default path against fp32 eager", "Gate cost per training step", "Generation"):
        assert title in out
    assert "synthetic" in report["data"]  # no prepared dataset: a synthetic one stands in
    assert [r["name"] for r in report["train"]] == ["fp32 eager", "bf16 eager (default)"]
    assert [r["gate"] for r in report["gate"]] == ["none", "headwise", "elementwise"]
    assert report["gate"][2]["ms_per_step"] == report["train"][1]["ms_per_step"]  # one variant, measured once
    for row in report["train"] + report["gate"]:
        assert all(positive(row[k]) for k in ("ms_per_step", "tokens_per_s", "ratio", "mfu", "peak_mib"))
        assert math.isfinite(row["loss"]) and not row["compiled"]
    assert report["train"][0]["ratio"] == 1.0 and report["gate"][0]["cost"] == 0.0
    assert report["gate"][1]["extra_flops"] < report["gate"][2]["extra_flops"]  # headwise adds fewer FLOPs
    assert [r["new_tokens"] for r in report["generate"]] == [10, 40]  # 40 > block_size: past the window
    assert all(positive(r[k]) for r in report["generate"]
               for k in ("cached_tokens_per_s", "uncached_tokens_per_s", "ratio"))
    assert json.loads((tmp_path / "bench.json").read_text())["gate"][2]["gate"] == "elementwise"


def test_bench_single_table_and_presets(tmp_path, capsys):
    report = bench.main([*TINY, f"--data_dir={tmp_path}", "--tables=gate", "--variants=none,elementwise"])
    out = capsys.readouterr().out
    assert "Gate cost" in out and "Training:" not in out and "Generation" not in out
    assert set(report) >= {"gate", "peak_flops", "device"} and "train" not in report
    assert bench.PRESETS["tiny"] == dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12)
    model_cfg, train_cfg, _, preset = bench.load_configs(["--preset=gpt2", "--n_layer=2"])
    assert preset == "gpt2" and model_cfg.n_layer == 2 and model_cfg.block_size == 1024
    with pytest.raises(ConfigError, match="preset"):
        bench.load_configs(["--preset=huge"])
    with pytest.raises(ConfigError, match="unknown table"):
        bench.load_configs(["--tables=train,speed"])


def test_bench_takes_the_runtime_keys():
    _, train_cfg, _, _ = bench.load_configs(["--threads=1", "--device=cpu", "--dtype=float32"])
    assert (train_cfg.threads, train_cfg.device, train_cfg.dtype) == (1, "cpu", "float32")


@pytest.mark.skipif(not hasattr(__import__("torch").optim, "Muon"), reason="the Muon preset needs torch.optim.Muon")
def test_speedrun_times_two_training_runs(tmp_path, capsys):
    source = tmp_path / "text.txt"
    source.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 200)
    prepare_data.prepare(prepare_data.DataConfig(dataset="tiny", source=str(source), data_dir=str(tmp_path)))
    shape = ('dataset = "tiny"\nn_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 16\nbatch_size = 4\n'
             'eval_iters = 2\neval_interval = 5\ndevice = "cpu"\n')
    (tmp_path / "base.toml").write_text(shape + "max_iters = 5\n")
    (tmp_path / "fast.toml").write_text(shape + "max_iters = 3\nlearning_rate = 3e-3\n")
    (tmp_path / "fast_muon.toml").write_text(shape + 'max_iters = 2\noptimizer = "muon"\n')
    report = bench.main(["--speedrun", f"--data_dir={tmp_path}", f"--baseline_config={tmp_path / 'base.toml'}",
                         f"--speedrun_configs={tmp_path / 'fast.toml'}", "--threads=1"])
    out = capsys.readouterr().out
    assert "Speedrun" in out and "fp32 eager recipe" in out
    base, fast = report["speedrun"]
    assert (base["steps"], fast["steps"]) == (5, 3)
    assert all(positive(r[k]) for r in (base, fast) for k in ("wall_s", "val_loss", "full_val_loss", "time_ratio"))
    # Several presets: one row each, named by the file, all timed against the same recipe runs.
    report = bench.main(["--speedrun", f"--data_dir={tmp_path}", f"--baseline_config={tmp_path / 'base.toml'}",
                         f"--speedrun_configs={tmp_path / 'fast.toml'},{tmp_path / 'fast_muon.toml'}",
                         "--speedrun_repeats=2"])
    assert [r["run"] for r in report["speedrun"]] == ["fp32 eager recipe", "fast", "fast_muon"]
    assert [r["steps"] for r in report["speedrun"]] == [5, 3, 2]
    assert all(len(r["walls"]) == 2 and positive(r["time_ratio"]) for r in report["speedrun"])
    assert report["speedrun"][0]["time_ratio"] == 1.0
    assert "fast_muon" in capsys.readouterr().out
    assert set(bench.SPEEDRUN_TARGETS) == {"speedrun_cpu", "speedrun_muon_cpu"}


@pytest.mark.skipif(not hasattr(__import__("torch").optim, "Muon"), reason="needs torch.optim.Muon")
def test_optimizer_table_times_the_optimizer_step(tmp_path, capsys):
    report = bench.main([*TINY, f"--data_dir={tmp_path}", "--dataset=missing", "--tables=optimizer",
                         "--optimizers=adamw,muon", "--dtype=float32"])
    out = capsys.readouterr().out
    assert "Optimizer step per training step" in out and "Training:" not in out and "Gate cost" not in out
    adamw, muon = report["optimizer"]
    assert (adamw["optimizer"], muon["optimizer"]) == ("adamw", "muon") and muon["name"].endswith("muon (default)")
    assert adamw["muon_ms"] is None and positive(muon["muon_ms"])  # Muon: the blocks' matrices
    assert positive(adamw["adamw_ms"]) and positive(muon["adamw_ms"])  # AdamW: the rest, in both
    for row in (adamw, muon):
        assert 0 < row["optimizer_share"] < 1 and positive(row["forward_backward_ms"])
        assert row["forward_backward_ms"] + row["adamw_ms"] + (row["muon_ms"] or 0) == pytest.approx(row["ms_per_step"])
    assert adamw["ratio"] == 1.0 and positive(muon["ratio"])


def test_cpu_defaults_pick_bf16_and_stay_eager(monkeypatch):
    import shutil

    import torch

    import train
    runtime = train.setup_runtime("cpu", "auto")
    assert runtime.dtype == (torch.bfloat16 if train.cpu_has_native_bf16() else torch.float32)
    assert train.setup_runtime("cpu", "float32").dtype == torch.float32
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # a C++ compiler is installed
    assert not train.should_compile(train.TrainConfig(max_iters=100_000, batch_size=64), runtime)
    assert train.should_compile(train.TrainConfig(compile="true"), runtime)
    cuda = train.Runtime(torch.device("cuda"), torch.bfloat16, 0, 0, 1)
    assert train.should_compile(train.TrainConfig(), cuda)
    assert not train.should_compile(train.TrainConfig(compile="false"), cuda)
    # Without a C++ compiler torch.compile cannot work on a CPU: compile=true says why.
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="needs a C.. compiler.*--compile=false"):
        train.should_compile(train.TrainConfig(compile="true"), runtime)


def test_cpu_compile_keeps_names_and_leaves_evaluation_eager(tmp_path, monkeypatch):
    """A compiled path wraps the model in torch.compile, which compiles lazily (nothing here runs a
    training step, so no C++ compiler is needed): its parameter names, evaluation and generation
    stay the eager model's."""
    import shutil

    import torch

    import train
    from model import GPT, GPTConfig
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    folder, _ = bench.dataset_folder(train.TrainConfig(data_dir=str(tmp_path), dataset="missing"), tmp_path)
    model_cfg = GPTConfig(vocab_size=prepare_data.load_meta(folder)["vocab_size"], n_layer=2, n_head=2, n_embd=16,
                          block_size=8)
    variant = bench.build(bench.Variant(name="fp32 compiled", gate="elementwise", dtype="float32", compile="true"),
                          model_cfg, train.TrainConfig(device="cpu", batch_size=2), torch.device("cpu"), folder)
    model, compiled = variant.raw.eval(), variant.model
    assert variant.compiled and compiled is not model and compiled._orig_mod is model  # torch.compile of the model
    fresh = GPT(model_cfg).eval()
    fresh.load_state_dict(model.state_dict())  # checkpoints load as before: the same names
    idx = torch.randint(0, model_cfg.vocab_size, (2, 8))
    before, keys = fresh(idx)[0], list(fresh.state_dict())
    assert list(model.state_dict()) == keys
    assert torch.equal(model(idx)[0], before)  # eval mode: the eager forward, nothing compiled
    assert model.generate(idx[:, :1], 12, temperature=0).shape == (2, 13)  # KV cache: eager too


def test_measurements_leave_the_global_generator_alone():
    """The CPU peak measurement draws from its own generator: a training in the same process keeps its dropout."""
    import torch
    before = torch.get_rng_state()
    assert positive(bench.measure_matmul_flops(torch.float32, n=64, repeats=1, trials=1))
    assert torch.equal(torch.get_rng_state(), before)
    assert bench.peak_flops("cuda", torch.bfloat16, "NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_flops("cuda", torch.float32, "NVIDIA H100 80GB HBM3") == 989e12 / 2
    assert bench.peak_flops("cuda", torch.bfloat16, "some unknown GPU") is None


@pytest.mark.parametrize("setting, message", [
    ("--paths=float8/false", "bad value 'float8' for 'dtype'"), ("--paths=float32/maybe", "bad path 'float32/maybe'"),
    ("--variants=none,sometimes", "bad gate 'sometimes'"), ("--gen_tokens=10,x", "give positive token counts"),
    ("--steps=-1", "steps=-1 cannot be negative"), ("--device=tpu", "bad value 'tpu' for 'device'"),
    ("--optimizers=adamw,sgd", "bad value 'sgd' for 'optimizer'"), ("--tables=optimizer,speed", "unknown table"),
])
def test_bad_bench_settings_are_one_line(setting, message):
    with pytest.raises(ConfigError) as err:
        bench.main([*TINY, setting])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_help_lists_only_the_keys_bench_uses(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    text = capsys.readouterr().out
    assert "--batch_size=" in text and "--max_iters=" not in text and "--eval_interval=" not in text
    assert "Accepted but ignored here (so that training presets load): out_dir, resume, max_iters" in text


def test_prepare_bench_measures_throughput_and_memory(tmp_path, capsys):
    report = bench.main(["--prepare", "--prepare_mb=0.3", "--prepare_reference_mb=0.1", "--prepare_vocab=300",
                         f"--prepare_dir={tmp_path}", "--prepare_tokenizer=auto"])
    out = capsys.readouterr().out
    assert "Data preparation" in out and "tiktoken encode_ordinary_batch" in out and "peak resident memory" in out
    row = report["prepare"]
    assert row["corpus_mb"] >= 0.3 and row["documents"] > 10 and row["tokens"] > 10_000
    assert "byte-level BPE of 300 tokens" in row["tokenizer"]
    assert all(positive(row[k]) for k in ("mb_per_s", "reference_mb_per_s", "ratio", "cpu_ratio", "wall_s"))
    assert 10 < row["peak_summed_mib"] < 4096 and row["peak_together_mib"] <= row["peak_summed_mib"] + 1
    assert not (tmp_path / "data").exists()  # the prepared dataset is removed; the corpus and BPE stay for reruns
    assert (tmp_path / "plays-bpe-300.tiktoken").exists() and (tmp_path / "corpus" / "corpus.json").exists()


def test_trained_bpe_round_trips():
    import tiktoken
    text = "the thin theme of them, then the thing: 'tis the theme!\n" * 50
    ranks = bench.train_bpe(text, 270)
    assert len(ranks) == 270 and ranks[b"a"] == ord("a") and max(ranks.values()) == 269
    assert ranks[b"the"] >= 256  # a frequent word became one token
    encoding = tiktoken.Encoding("t", pat_str=prepare_data.GPT2_SPLIT, mergeable_ranks=ranks, special_tokens={})
    ids = encoding.encode_ordinary(text)
    assert encoding.decode(ids) == text and len(ids) < len(text) / 3
