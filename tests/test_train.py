import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lab import analyze
from lab import metrics
import prepare_data
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


def test_tiny_run_lowers_the_loss_and_writes_everything(data_dir, tmp_path, capsys):
    summary = train.main(args(data_dir, tmp_path, "--max_iters=60", "--eval_interval=30"))
    printed = capsys.readouterr().out
    assert f"checkpoint: {tmp_path / 'ckpt.pt'}" in printed
    assert f"python sample.py --out_dir={tmp_path}" in printed and f"--checkpoints={tmp_path}" in printed
    records, steps = read_metrics(tmp_path)
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert summary["val_loss"] == evals[-1]["val_loss"] and not summary["diverged"]
    assert sorted(steps) == list(range(60))
    assert all(k in steps[59] for k in ("lr", "grad_norm", "tokens_per_s"))
    ckpt = train.load_checkpoint(tmp_path / "ckpt.pt")  # weights_only=True
    assert ckpt["step"] == 60 and ckpt["config"]["gate"] == "elementwise"
    assert json.loads(json.dumps(ckpt["config"])) == ckpt["config"]  # plain data


def test_resumed_run_equals_uninterrupted(data_dir, tmp_path, interrupted_after):
    common = ("--max_iters=20", "--eval_interval=5", "--dropout=0.1", "--grad_accum_steps=2")
    train.main(args(data_dir, tmp_path / "straight", *common))

    with interrupted_after(13):
        train.main(args(data_dir, tmp_path / "resumed", *common))
    assert train.load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["step"] == 10
    train.main([f"--out_dir={tmp_path / 'resumed'}", "--resume"])

    straight, resumed = read_metrics(tmp_path / "straight")[1], read_metrics(tmp_path / "resumed")[1]
    assert sorted(resumed) == list(range(20))
    # The steps trained after the checkpoint and lost with the interruption were dropped on resume:
    # the file holds each step once, as the uninterrupted run's does.
    records = read_metrics(tmp_path / "resumed")[0]
    assert [r["step"] for r in records] == [r["step"] for r in read_metrics(tmp_path / "straight")[0]]
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
    train.mean_loss(model, batches.eval_set("val", cfg.eval_iters), runtime)
    metrics.eval_record(model, batches.eval_set("val", 1)[0][0], [2.0, 1.0], [1.0, 1.0], 10)
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

    # Resumed (here without the poison, as with a lower learning rate): the divergence after the
    # checkpoint is dropped from metrics.jsonl with the steps that led to it.
    monkeypatch.setattr(GPT, "forward", original)
    summary = train.main([f"--out_dir={tmp_path}", "--resume"])
    records, steps = read_metrics(tmp_path)
    assert not summary["diverged"] and not any(r.get("diverged") for r in records)
    assert [r["step"] for r in records if "loss" in r] == list(range(20))


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
    assert not (tmp_path / "empty").exists()  # nothing made on disk
    runs = tmp_path / "compare"  # a folder of runs, as lab.compare writes it
    for name in ("none", "elementwise"):
        (runs / name).mkdir(parents=True)
        (runs / name / "ckpt.pt").write_bytes((tmp_path / "ckpt.pt").read_bytes())
    with pytest.raises(ConfigError, match=f"{runs} holds the runs elementwise, none: pick one, e.g. "
                                          f"--out_dir={runs / 'elementwise'}"):
        sample.main([f"--out_dir={runs}"])


def test_metrics_keep_the_history_up_to_the_checkpoint(tmp_path):
    # Steps 0-4, the evaluation the checkpoint at step 5 was taken after, steps 5-6 and a divergence.
    records = ([{"step": s, "loss": 1.0} for s in range(5)] + [{"step": 5, "val_loss": 2.5}]
               + [{"step": s, "loss": 1.0} for s in (5, 6)] + [{"step": 7, "diverged": True, "loss": "nan"}])
    log = train.MetricsLog(tmp_path / "metrics.jsonl", enabled=True)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 8, "lo')
    log.start_at(5)  # the last line was cut short by a kill
    kept = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert kept == [{"step": s, "loss": 1.0} for s in range(5)] + [{"step": 5, "val_loss": 2.5}]
    log.start_at(None)  # a new run in the folder
    assert (tmp_path / "metrics.jsonl").read_text() == ""


@pytest.mark.parametrize("setting, message", [
    ("--grad_clip=-1", "grad_clip=-1.0 cannot be negative"),
    ("--weight_decay=-1", "weight_decay=-1.0 cannot be negative"),
    ("--learning_rate=-1", "learning_rate=-1.0 must be positive"),
    ("--min_lr=0.1", "min_lr=0.1 must be between 0 and learning_rate=0.003"),
    ("--beta1=1.5", "beta1=1.5 must be in [0, 1)"),
    ("--beta2=-0.1", "beta2=-0.1 must be in [0, 1)"),
    ("--device=tpu", "bad value 'tpu' for 'device': choose auto, cpu, cuda, cuda:N"),
    ("--device=cuda:x", "bad value 'cuda:x' for 'device'"),
    ("--dtype=float8", "bad value 'float8' for 'dtype': choose auto, float32"),
    ("--threads=-2", "threads=-2 cannot be negative"),
])
def test_bad_settings_stop_before_anything_is_written(data_dir, tmp_path, setting, message):
    with pytest.raises(ConfigError) as err:
        train.main(args(data_dir, tmp_path / "run", setting))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting, message", [
    ("--dtype=float8", "bad value 'float8' for 'dtype'"), ("--dtype=int32", "bad value 'int32' for 'dtype'"),
    ("--device=tpu", "bad value 'tpu' for 'device'"), ("--threads=-1", "threads=-1 cannot be negative"),
])
def test_sample_checks_the_same_runtime_settings(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(")):
        sample.main([f"--out_dir={tmp_path}", setting])


def test_threads_setting_sets_pytorchs_thread_count():
    before = torch.get_num_threads()
    try:
        train.setup_runtime("cpu", "float32", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_locked_run_folder_stops_a_second_run(data_dir, tmp_path):
    with prepare_data.hold(tmp_path):
        with pytest.raises(ConfigError) as err:
            train.main(args(data_dir, tmp_path, "--max_iters=1"))
    assert str(err.value) == (f"{tmp_path} is in use by another run (process {os.getpid()}): "
                              "wait for it to end, or choose another folder")
    assert not (tmp_path / "ckpt.pt").exists() and not (tmp_path / "metrics.jsonl").exists()
    train.main(args(data_dir, tmp_path, "--max_iters=1"))  # released: the folder is free again
    assert (tmp_path / "ckpt.pt").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="run folders are not locked without fcntl")
def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, prepare_data\n"
                               "with prepare_data.hold(sys.argv[1]):\n"
                               "    print('held', flush=True)\n    time.sleep(120)", str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by another run \\(process {holder.pid}\\)"):
            with prepare_data.hold(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / ".ckpt.pt.partial").write_bytes(b"half a checkpoint")  # as a kill mid-save leaves it
    (tmp_path / "notes.tmp").write_text("a file of the user's")
    with prepare_data.hold(tmp_path):
        assert not (tmp_path / ".ckpt.pt.partial").exists() and (tmp_path / "notes.tmp").exists()
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


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
    capsys.readouterr()
    greedy = sample.main([*common, f"--prompt=FILE:{prompt_file}", "--temperature=0"])
    assert len(greedy) == 1 and len(greedy[0]) == 40  # the 2 samples would be identical: one is drawn
    assert "note: temperature=0 always picks the most likely token" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'Z'"):
        sample.main([*common, "--prompt=ZEBRA"])
    with pytest.raises(ConfigError, match="prompt file"):
        sample.main([*common, "--prompt=FILE:/no/such/file"])


class Payload:
    """Pickled, it asks to run a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unreadable_checkpoints_are_one_line(data_dir, tmp_path, monkeypatch):
    train.main(args(data_dir, tmp_path / "run", "--max_iters=2", "--eval_interval=2"))
    good = (tmp_path / "run" / "ckpt.pt").read_bytes()
    marker = tmp_path / "payload-ran"
    files = {
        "truncated": lambda path: path.write_bytes(good[:len(good) // 2]),
        "not a checkpoint": lambda path: torch.save({"weights": torch.zeros(3)}, path),
        "a list": lambda path: torch.save([1, 2], path),
        "planted": lambda path: torch.save({"model": Payload(marker)}, path),
    }
    for name, make in files.items():
        folder = tmp_path / name
        folder.mkdir()
        make(folder / "ckpt.pt")
        for run in (lambda: train.main([f"--out_dir={folder}", "--resume"]),
                    lambda: sample.main([f"--out_dir={folder}", "--device=cpu"]),
                    lambda: analyze.main([f"--checkpoints={folder}", "--report=", "--fig_dir="])):
            with pytest.raises(ConfigError, match="is not a checkpoint this project or nanoGPT wrote") as e:
                run()
            assert "\n" not in str(e.value) and "weights_only" not in str(e.value), name
    assert not marker.exists()


def test_resume_refuses_other_shapes_and_other_data(data_dir, tmp_path):
    train.main(args(data_dir, tmp_path / "run", "--max_iters=2", "--eval_interval=2"))
    resume = [f"--out_dir={tmp_path / 'run'}", "--resume", "--max_iters=4"]
    with pytest.raises(ConfigError, match=r"--resume cannot change the model's n_embd 32 -> 64, gate "
                                          r"'elementwise' -> 'none': drop the override"):
        train.main([*resume, "--n_embd=64", "--gate=none"])
    text = (data_dir / "text.txt").read_text()
    # Same vocabulary size, other characters: every token id means something else.
    other = tmp_path / "other.txt"
    other.write_text(text.replace("R", "@"))
    prepare_data.prepare(prepare_data.DataConfig(dataset="tiny", source=str(other), data_dir=str(tmp_path / "d1")))
    with pytest.raises(ConfigError, match=r"its token ids mean something else than the checkpoint's \(chars differ\)"):
        train.main([*resume, f"--data_dir={tmp_path / 'd1'}"])
    # Same characters, other text.
    other.write_text(text[len(text) // 2:] + text[:len(text) // 2])
    prepare_data.prepare(prepare_data.DataConfig(dataset="tiny", source=str(other), data_dir=str(tmp_path / "d2")))
    with pytest.raises(ConfigError, match=r"it holds other data than the run was trained on \(source_sha256 differ"):
        train.main([*resume, f"--data_dir={tmp_path / 'd2'}"])
    assert train.main([*resume, "--dropout=0.1"])["step"] == 4  # dropout may change


def resume_in_subprocess(data_dir, out_dir, max_iters):
    """`python train.py --resume` on out_dir in another process, slowed by a tiny sleep per step."""
    code = ("import sys, time, train\n"
            "step = train.train_step\n"
            "train.train_step = lambda *a: (time.sleep(0.05), step(*a))[1]\n"
            "train.main(sys.argv[1:])")
    return subprocess.Popen([sys.executable, "-c", code, *args(data_dir, out_dir, "--resume", f"--max_iters={max_iters}",
                                                             "--eval_interval=15")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_second_resume_while_a_run_goes_on_is_refused_and_loses_nothing(data_dir, tmp_path, monkeypatch):
    train.main(args(data_dir, tmp_path, "--max_iters=30", "--eval_interval=15"))
    first = resume_in_subprocess(data_dir, tmp_path, 60)
    try:
        while (tmp_path / ".lock").read_text().strip() != str(first.pid):  # the first run holds the folder
            assert first.poll() is None, first.stderr.read()
        # A slow second resume: what it reads of the checkpoint, it holds until the first run has ended.
        load = train.load_checkpoint
        monkeypatch.setattr(train, "load_checkpoint", lambda *a, **k: (load(*a, **k), first.wait())[0])
        with pytest.raises(ConfigError, match=f"in use by another run \\(process {first.pid}\\)"):
            train.main(args(data_dir, tmp_path, "--resume", "--max_iters=45", "--eval_interval=15"))
    finally:
        assert first.wait() == 0, first.stderr.read()
    assert train.load_checkpoint(tmp_path / "ckpt.pt")["step"] == 60
    records, steps = read_metrics(tmp_path)
    assert sorted(steps) == list(range(60)) and records[-1]["step"] == 60 and "val_loss" in records[-1]


def test_a_resume_after_a_longer_run_finished_changes_nothing(data_dir, tmp_path, capsys):
    train.main(args(data_dir, tmp_path, "--max_iters=30", "--eval_interval=15"))
    first = resume_in_subprocess(data_dir, tmp_path, 60)
    assert first.wait() == 0, first.stderr.read()
    before = {name: (tmp_path / name).read_bytes() for name in ("ckpt.pt", "metrics.jsonl")}
    summary = train.main(args(data_dir, tmp_path, "--resume", "--max_iters=45"))
    assert summary["step"] == 60 and "is at step 60, max_iters=45: nothing to train" in capsys.readouterr().out
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


# ---------------------------------------------------------------------------
# Muon
# ---------------------------------------------------------------------------


needs_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon is new in PyTorch 2.9")


@needs_muon
def test_muon_takes_exactly_the_blocks_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, pos_emb="learned",
                          gate="headwise", bias=True))
    adamw, muon = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu", "muon")
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    names = {id(p): name for name, p in model.named_parameters()}
    in_muon = {names[id(p)] for group in muon.param_groups for p in group["params"]}
    in_adamw = {names[id(p)] for group in adamw.param_groups for p in group["params"]}
    assert not in_muon & in_adamw and in_muon | in_adamw == set(names.values())
    assert in_muon == {name for name, p in model.named_parameters() if name.startswith("transformer.h.") and p.dim() == 2}
    assert {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight"} <= in_muon  # the gate's columns too
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
            "transformer.h.0.attn.c_attn.bias"} <= in_adamw
    (only,) = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu", "adamw")
    assert sum(len(group["params"]) for group in only.param_groups) == len(names)


@needs_muon
def test_a_muon_step_lowers_the_loss_on_a_tiny_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32))
    optimizers = model.configure_optimizers(0.0, 1e-2, (0.9, 0.99), "cpu", "muon")
    x = torch.randint(0, 40, (4, 16))
    before = model(x, x)[1]
    before.backward()
    muon_weight = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    for optimizer in optimizers:
        optimizer.step()
    assert not torch.equal(muon_weight, model.transformer.h[0].attn.c_attn.weight)
    assert model(x, x)[1].item() < before.item() - 0.05


@needs_muon
def test_a_muon_run_resumes_bit_for_bit(data_dir, tmp_path, interrupted_after):
    common = ("--max_iters=12", "--eval_interval=4", "--dropout=0.1", "--optimizer=muon")
    train.main(args(data_dir, tmp_path / "straight", *common))
    with interrupted_after(9):
        train.main(args(data_dir, tmp_path / "resumed", *common))
    ckpt = train.load_checkpoint(tmp_path / "resumed" / "ckpt.pt")
    assert ckpt["step"] == 8 and len(ckpt["optimizer"]) == 2 and ckpt["optimizer"][1]["state"]  # AdamW's and Muon's
    with pytest.raises(ConfigError, match="--resume cannot change the optimizer \\(muon -> adamw\\)"):
        train.main([f"--out_dir={tmp_path / 'resumed'}", "--resume", "--optimizer=adamw"])
    train.main([f"--out_dir={tmp_path / 'resumed'}", "--resume"])
    straight, resumed = read_metrics(tmp_path / "straight")[1], read_metrics(tmp_path / "resumed")[1]
    assert [straight[s]["loss"] for s in range(12)] == [resumed[s]["loss"] for s in range(12)]
    a = train.load_checkpoint(tmp_path / "straight" / "ckpt.pt")
    b = train.load_checkpoint(tmp_path / "resumed" / "ckpt.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_optimizer_setting_is_checked(monkeypatch):
    with pytest.raises(ConfigError, match="bad value 'sgd' for 'optimizer': choose adamw or muon"):
        train.TrainConfig(optimizer="sgd")
    monkeypatch.delattr(torch.optim, "Muon", raising=False)  # an older PyTorch
    with pytest.raises(ConfigError, match="optimizer=muon needs torch.optim.Muon, new in PyTorch 2.9"):
        train.TrainConfig(optimizer="muon")


def test_no_progress_bar_when_the_output_is_not_a_terminal(data_dir, tmp_path, capsys):
    argv = [a for a in args(data_dir, tmp_path, "--max_iters=3", "--eval_interval=3") if a != "--progress=false"]
    train.main(argv)  # progress=true (the default), but pytest's captured stderr is no terminal
    assert "training:" not in capsys.readouterr().err
