import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import analyze
import sample
import train
from configurable import ConfigError
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]


def args(data_dir, out_dir, *extra):
    return [f"--data_dir={data_dir}", "--dataset=tiny", f"--out_dir={out_dir}", "--n_layer=2", "--n_head=2",
            "--n_embd=32", "--block_size=32", "--batch_size=8", "--learning_rate=3e-3", "--warmup_iters=5",
            "--eval_iters=4", "--log_interval=1", "--progress=false", "--device=cpu", *extra]


def read_metrics(out_dir):
    """step -> record for training steps (the last record wins, as after a resume)."""
    records = [json.loads(line) for line in open(Path(out_dir) / "metrics.jsonl")]
    return records, {r["step"]: r for r in records if "loss" in r}


def test_tiny_run_lowers_the_loss_and_writes_everything(data_dir, tmp_path):
    summary = train.main(args(data_dir, tmp_path, "--max_iters=60", "--eval_interval=30"))
    records, steps = read_metrics(tmp_path)
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert summary["val_loss"] == evals[-1]["val_loss"] and not summary["diverged"]
    assert sorted(steps) == list(range(60))
    assert all(k in steps[59] for k in ("lr", "grad_norm", "tokens_per_s", "mfu"))
    ckpt = train.load_checkpoint(tmp_path / "ckpt.pt")  # weights_only=True
    assert ckpt["step"] == 60 and ckpt["config"]["gate"] == "elementwise"
    assert json.loads(json.dumps(ckpt["config"])) == ckpt["config"]  # plain data


def test_resumed_run_equals_uninterrupted(data_dir, tmp_path, interrupted_after):
    common = ("--max_iters=20", "--eval_interval=5", "--dropout=0.1", "--grad_accum_steps=2")
    train.main(args(data_dir, tmp_path / "straight", *common))

    with interrupted_after(13):
        train.main(args(data_dir, tmp_path / "resumed", *common))
    assert train.load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["step"] == 10
    train.peak_flops.cache_clear()  # a resumed run is a new process: nothing is cached
    train.main([f"--out_dir={tmp_path / 'resumed'}", "--resume"])

    straight, resumed = read_metrics(tmp_path / "straight")[1], read_metrics(tmp_path / "resumed")[1]
    assert sorted(resumed) == list(range(20))
    assert [straight[s]["loss"] for s in range(20)] == [resumed[s]["loss"] for s in range(20)]
    a = train.load_checkpoint(tmp_path / "straight" / "ckpt.pt")
    b = train.load_checkpoint(tmp_path / "resumed" / "ckpt.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_measurements_and_evaluation_leave_the_global_generator_alone(data_dir):
    """Only training draws from the global generator (dropout), so resuming restores it exactly."""
    runtime = train.setup_runtime("cpu", "float32")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.2))
    batches = train.Batches(data_dir / "tiny", 16, 4, runtime, seed=1)
    cfg = train.TrainConfig(eval_iters=2)
    before = torch.get_rng_state()
    train.measure_matmul_flops(torch.float32, n=64, repeats=1, trials=1)
    train.evaluate(model, batches, cfg, runtime)
    analyze.eval_record(model, batches.eval_set("val", 1)[0][0], [2.0, 1.0], [1.0, 1.0], 10)
    assert torch.equal(torch.get_rng_state(), before)


def test_resume_can_extend_a_finished_run(data_dir, tmp_path):
    train.main(args(data_dir, tmp_path, "--max_iters=10", "--eval_interval=5", "--lr_decay_iters=20"))
    summary = train.main([f"--out_dir={tmp_path}", "--resume", "--max_iters=20"])
    assert summary["step"] == 20
    assert sorted(read_metrics(tmp_path)[1]) == list(range(20))


def test_nonfinite_loss_stops_cleanly_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    original = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        logits, loss = original(self, idx, targets, **kw)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] > 7:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    summary = train.main(args(data_dir, tmp_path, "--max_iters=20", "--eval_interval=5"))
    assert summary["diverged"] and summary["step"] < 20
    records, steps = read_metrics(tmp_path)
    assert records[-1]["diverged"] is True and records[-1]["step"] == 7
    ckpt = train.load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 5
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_ddp_two_processes_equal_one_process(data_dir, tmp_path):
    common = ["--max_iters=6", "--eval_interval=3", "--grad_accum_steps=2"]
    train.main(args(data_dir, tmp_path / "single", *common))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(ROOT / "train.py"), *args(data_dir, tmp_path / "ddp", *common)],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=300)
    single, ddp = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "ddp")
    for step in range(6):
        assert single[1][step]["loss"] == pytest.approx(ddp[1][step]["loss"], rel=1e-5)
    evals = lambda records: [r["val_loss"] for r in records if "val_loss" in r]  # noqa: E731
    assert evals(single[0]) == pytest.approx(evals(ddp[0]), rel=1e-5)


def test_training_errors(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="python prepare_data.py --dataset=nothing"):
        train.main(args(data_dir, tmp_path, "--dataset=nothing"))
    train.main(args(data_dir, tmp_path, "--max_iters=1"))
    with pytest.raises(ConfigError, match="pass --resume to continue it"):
        train.main(args(data_dir, tmp_path, "--max_iters=1"))
    with pytest.raises(ConfigError, match="no checkpoint at"):
        train.main([f"--out_dir={tmp_path / 'empty'}", "--resume"])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a setting of glibc's malloc")
def test_cpu_runtime_reuses_freed_memory_without_page_faults():
    # Rounds of eight 4 MiB tensors, allocated and freed like a step's activations: with
    # glibc's default settings each round faults all 32 MiB in again (8,192 faults of 4 KiB).
    train.setup_runtime("cpu", "float32")

    def page_faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    for _ in range(2):
        [torch.ones(1 << 20) for _ in range(8)]
    before = page_faults()
    for _ in range(20):
        [torch.ones(1 << 20) for _ in range(8)]
    assert page_faults() - before < 8 * 1024  # under one round's worth; 20 rounds without the setting


def test_sample_streams_text_from_a_checkpoint(data_dir, tmp_path, capsys):
    train.main(args(data_dir, tmp_path, "--max_iters=30", "--eval_interval=30"))
    common = [f"--out_dir={tmp_path}", "--max_new_tokens=40", "--num_samples=2", "--device=cpu"]
    samples = sample.main([*common, "--prompt=ROMEO:", "--top_p=0.9"])
    out = capsys.readouterr().out
    assert len(samples) == 2 and all(len(s) == 40 for s in samples)
    assert out.count("ROMEO:") >= 2
    assert sample.main([*common, "--prompt=ROMEO:", "--top_p=0.9"]) == samples  # seeded
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("JULIET:")
    assert len(sample.main([*common, f"--prompt=FILE:{prompt_file}", "--temperature=0"])[0]) == 40
    with pytest.raises(ConfigError, match="'Z'"):
        sample.main([*common, "--prompt=ZEBRA"])
    with pytest.raises(ConfigError, match="prompt file"):
        sample.main([*common, "--prompt=FILE:/no/such/file"])
