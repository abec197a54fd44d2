"""The course's exercises: every reference solution passes its checks, every stub fails
them with a plain message (not a crash), and typical mistakes get their own diagnosis."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from course import check

EXERCISES = check.all_exercises()
IDS = [ex.id for ex in EXERCISES]


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_reference_solution_passes(exercise):
    passed, message = check.run(exercise, check.SOLUTION_DIR)
    assert passed, message


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_stub_fails_with_a_plain_message(exercise):
    passed, message = check.run(exercise, check.EXERCISE_DIR)
    assert not passed
    assert message.startswith("not written yet: replace `raise NotImplementedError`")
    assert exercise.file in message


def test_every_exercise_file_is_checked_and_has_a_solution():
    stubs = {p.name for p in check.EXERCISE_DIR.glob("*.py")}
    assert stubs == {ex.file for ex in EXERCISES}
    assert stubs == {p.name for p in check.SOLUTION_DIR.glob("*.py")}
    assert len(set(IDS)) == len(IDS)


MISTAKES = {  # exercise id -> (a wrong solution, words its diagnosis must contain)
    "1.1": ("""
        def update(cache_k, cache_v, pos, k, v):
            end = pos + k.size(2)
            cache_k[:, :, pos:end] = k
            cache_v[:, :, pos:end] = v
            return k, v
        """, "only its own key and value"),
    "1.2": ("""
        import torch
        def top_p_filter(logits, top_p):
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            drop = sorted_logits.softmax(-1).cumsum(-1) > top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        """, "keep the token that carries the total past top_p"),
    "2.1": ("""
        import torch, torch.nn.functional as F
        def gated_attention(x, w_attn, w_proj, n_head, gate):
            B, T, C = x.shape
            q, k, v, g = (x @ w_attn.T).split([C, C, C, w_attn.size(0) - 3 * C], dim=-1)
            q, k, v = (t.view(B, T, n_head, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
            return (y * torch.sigmoid(g).view(B, T, n_head, -1)).reshape(B, T, C) @ w_proj.T
        """, "causality broken"),
    "2.1 G2": ("""
        import torch, torch.nn.functional as F
        def gated_attention(x, w_attn, w_proj, n_head, gate):
            B, T, C = x.shape
            q, k, v, g = (x @ w_attn.T).split([C, C, C, w_attn.size(0) - 3 * C], dim=-1)
            v = (v.view(B, T, n_head, -1) * torch.sigmoid(g).view(B, T, n_head, -1)).reshape(B, T, C)
            q, k, v = (t.view(B, T, n_head, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
            return y.reshape(B, T, C) @ w_proj.T
        """, "gated the values before attention"),
    "2.1 sqrt(C)": ("""
        import math, torch
        def gated_attention(x, w_attn, w_proj, n_head, gate):
            B, T, C = x.shape
            q, k, v, g = (x @ w_attn.T).split([C, C, C, w_attn.size(0) - 3 * C], dim=-1)
            q, k, v = (t.view(B, T, n_head, -1).transpose(1, 2) for t in (q, k, v))
            att = (q @ k.transpose(-2, -1)) / math.sqrt(C)
            att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
            y = (att @ v).transpose(1, 2)
            return (y * torch.sigmoid(g).view(B, T, n_head, -1)).reshape(B, T, C) @ w_proj.T
        """, "you divided Q K^T by sqrt(C), the model width; divide by sqrt(D)"),
    "2.1 gated queries": ("""
        import math, torch
        def gated_attention(x, w_attn, w_proj, n_head, gate):
            B, T, C = x.shape
            D = C // n_head
            q, k, v, g = (x @ w_attn.T).split([C, C, C, w_attn.size(0) - 3 * C], dim=-1)
            q, k, v = (t.view(B, T, n_head, D).transpose(1, 2) for t in (q, k, v))
            s = torch.sigmoid(g).view(B, T, n_head, -1).transpose(1, 2)
            att = (q * s) @ k.transpose(-2, -1) / math.sqrt(D)
            att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
            return (att @ v).transpose(1, 2).reshape(B, T, C) @ w_proj.T
        """, "(elementwise gate) you gated the attention logits"),
    "2.1 gated logits": ("""
        import math, torch, torch.nn.functional as F
        def gated_attention(x, w_attn, w_proj, n_head, gate):
            B, T, C = x.shape
            D = C // n_head
            q, k, v, g = (x @ w_attn.T).split([C, C, C, w_attn.size(0) - 3 * C], dim=-1)
            q, k, v = (t.view(B, T, n_head, D).transpose(1, 2) for t in (q, k, v))
            if gate == "elementwise":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
                return (y * torch.sigmoid(g).view(B, T, n_head, D)).reshape(B, T, C) @ w_proj.T
            att = q @ k.transpose(-2, -1) / math.sqrt(D)
            att = att * torch.sigmoid(g).transpose(1, 2).unsqueeze(-1)  # each query's logits, per head
            att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
            return (att @ v).transpose(1, 2).reshape(B, T, C) @ w_proj.T
        """, "(headwise gate) you gated the attention logits (the scores Q K^T, or the queries) before the softmax"),
    "2.1 headwise repeat": ("""
        import torch, torch.nn.functional as F
        def gated_attention(x, w_attn, w_proj, n_head, gate):
            B, T, C = x.shape
            q, k, v, g = (x @ w_attn.T).split([C, C, C, w_attn.size(0) - 3 * C], dim=-1)
            q, k, v = (t.view(B, T, n_head, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            scores = torch.sigmoid(g)
            if gate == "headwise":
                scores = scores.repeat(1, 1, C // n_head)
            return (y * scores) @ w_proj.T
        """, "(headwise gate) the heads get the wrong scores"),
    "2.1 headwise view": ("""
        import torch, torch.nn.functional as F
        def gated_attention(x, w_attn, w_proj, n_head, gate):
            B, T, C = x.shape
            q, k, v, g = (x @ w_attn.T).split([C, C, C, w_attn.size(0) - 3 * C], dim=-1)
            q, k, v = (t.view(B, T, n_head, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
            s = torch.sigmoid(g)
            s = s.view(B, T, n_head, -1) if gate == "elementwise" else s.view(B, T, 1, n_head)
            return (y * s).reshape(B, T, C) @ w_proj.T
        """, "(headwise gate) the heads get the wrong scores"),
    "2.2": ("""
        def gate_parameters(config):
            return 0 if config.gate == "none" else config.n_embd * config.n_embd
        """, "every layer has its own gate"),
    "3.1": ("""
        import numpy as np
        def spike_score(values, window=100, threshold=7.0):
            x = np.asarray(values, dtype=float)
            x = x[np.isfinite(x)]
            judged = [i for i in range(window, len(x)) if x[i - window:i].std() > 0]
            spikes = sum(abs(x[i] - x[i - window:i].mean()) >= threshold * x[i - window:i].std() for i in judged)
            return spikes / len(judged) if judged else 0.0
        """, "a percentage"),
    "3.2": ("""
        def lr_sensitivity(final_losses, init_loss):
            capped = [init_loss if x is None or x != x else x for x in final_losses]
            return sum(x - min(capped) for x in capped) / len(capped)
        """, "min(loss, init)"),
    "4.1": ("""
        import torch
        def backcopy_sequence(transitions, triggers, bos, length, generator):
            seq = [bos, 1]
            while len(seq) < length:
                seq.append(torch.multinomial(transitions[seq[-1]], 1, generator=generator).item())
            return seq
        """, "the token before the trigger"),
    "4.1 trigger at position 1": ("""
        import torch
        def backcopy_sequence(transitions, triggers, bos, length, generator):
            seq = [bos, torch.randint(transitions.size(0), (1,), generator=generator).item()]
            while len(seq) < length:
                if seq[-1] in triggers:
                    seq.append(seq[-2])
                else:
                    seq.append(torch.multinomial(transitions[seq[-1]], 1, generator=generator).item())
            return seq
        """, "position 1 is a trigger"),
    "4.1 trigger at position 1, BOS guarded": ("""
        import torch
        def backcopy_sequence(transitions, triggers, bos, length, generator):
            seq = [bos, torch.randint(transitions.size(0), (1,), generator=generator).item()]
            while len(seq) < length:
                if seq[-1] in triggers:
                    seq.append(seq[-2])
                elif seq[-1] == bos:
                    seq.append(1)
                else:
                    seq.append(torch.multinomial(transitions[seq[-1]], 1, generator=generator).item())
            return seq
        """, "position 1 is a trigger"),
    "6.1": ("""
        import torch
        def scaled_frequencies(head_size, base, scale, method, trained_length):
            theta = base ** -(torch.arange(head_size // 2, dtype=torch.float64) / (head_size // 2))
            return theta / scale if method != "none" else theta
        """, "NTK-aware scaling keeps the formula"),
    "6.1 NTK base": ("""
        import math, torch
        def scaled_frequencies(head_size, base, scale, method, trained_length):
            if method == "ntk":
                base = base * scale
            theta = base ** -(torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
            if method == "pi":
                return theta / scale
            if method == "yarn":
                gamma = ((trained_length * theta / (2 * math.pi) - 1) / 31).clamp(0, 1)
                return (1 - gamma) * theta / scale + gamma * theta
            return theta
        """, "base * s^(D/(D-2))"),
    "6.1 YaRN ramp over the turns": ("""
        import math, torch
        def scaled_frequencies(head_size, base, scale, method, trained_length):
            if method == "ntk":
                base = base * scale ** (head_size / (head_size - 2))
            theta = base ** -(torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
            if method == "pi":
                return theta / scale
            if method == "yarn":
                gamma = ((trained_length * theta / (2 * math.pi) - 1) / 31).clamp(0, 1)
                return (1 - gamma) * theta / scale + gamma * theta
            return theta
        """, "the paper's gamma(r) read literally"),
    "5.1": ("""
        import torch
        def first_token_attention(probs_by_layer, eps=0.3):
            alpha = torch.stack([p[..., 0, :].mean(dim=(0, 2)) for p in probs_by_layer])
            return alpha.mean().item(), 100 * (alpha > eps).float().mean().item()
        """, "column 0"),
    "5.2": ("""
        def massive_activations(hidden_by_layer):
            peaks = [h.max().item() for h in hidden_by_layer]
            return sum(peaks) / len(peaks), max(p / h.abs().median().item() for p, h in zip(peaks, hidden_by_layer))
        """, "max of |h|"),
}


@pytest.mark.parametrize("name", MISTAKES)
def test_a_typical_mistake_is_diagnosed(name, tmp_path):
    exercise = next(ex for ex in EXERCISES if ex.id == name.split()[0])
    code, words = MISTAKES[name]
    (tmp_path / exercise.file).write_text(textwrap.dedent(code))
    passed, message = check.run(exercise, tmp_path)
    assert not passed
    assert words in message, message
    assert not message.startswith("your code raised"), message  # a diagnosis, not the bare exception


def test_a_crash_in_student_code_names_the_line_not_a_traceback(tmp_path):
    exercise = next(ex for ex in EXERCISES if ex.id == "3.2")
    (tmp_path / exercise.file).write_text("def lr_sensitivity(final_losses, init_loss):\n    return final_losses[10]\n")
    passed, message = check.run(exercise, tmp_path)
    assert not passed
    assert message.startswith("your code raised IndexError") and "line 2" in message


def test_a_syntax_error_is_reported_with_its_line(tmp_path):
    exercise = EXERCISES[0]
    (tmp_path / exercise.file).write_text("def update(:\n")
    passed, message = check.run(exercise, tmp_path)
    assert not passed and "does not parse" in message and "line 1" in message


def test_command_line(capsys):
    assert check.main(["2.2", "--solutions"]) == 0
    assert "[PASS] 2.2" in capsys.readouterr().out
    assert check.main(["1"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] 1.1" in out and "[FAIL] 1.2" in out and "0 of 2 passed" in out
    with pytest.raises(SystemExit, match="no exercise or lesson '9'"):
        check.main(["9"])
    with pytest.raises(SystemExit, match="unknown option '--solution'"):
        check.main(["1", "--solution"])


def test_the_backcopy_check_compares_with_the_dataset_generator():
    """4.1's last check: the student's token frequencies against lab.backcopy.backcopy_sequences."""
    import torch

    from course.checks import Wrong, lesson4
    from course.solutions.l4_backcopy import backcopy_sequence

    chain = lesson4._transitions()
    other = torch.zeros_like(chain)  # the same successors, with 0.5 / 0.5 instead of 0.7 / 0.3
    for a in range(lesson4.V):
        other[a, (a + 1) % lesson4.V] = other[a, (a + 2) % lesson4.V] = 0.5
    draw = lambda transitions: [backcopy_sequence(transitions, lesson4.TRIGGERS, lesson4.BOS, 40,
                                                  torch.Generator().manual_seed(seed)) for seed in range(300)]
    lesson4._compare_with_repository(draw(chain), chain)  # the same chain: no complaint
    with pytest.raises(Wrong, match="lab.backcopy.backcopy_sequences"):
        lesson4._compare_with_repository(draw(other), chain)


# The time limit: a loop that never ends becomes one line, within the limit (2 s here; 20 s by default).


def _write(tmp_path, exercise_id, code):
    exercise = next(ex for ex in EXERCISES if ex.id == exercise_id)
    (tmp_path / exercise.file).write_text(textwrap.dedent(code))
    return exercise


def test_a_function_that_never_returns_is_stopped(tmp_path):
    exercise = _write(tmp_path, "3.2", """
        def lr_sensitivity(final_losses, init_loss):
            total = 0
            while total >= 0:
                total += 1
            return total
        """)
    start = time.monotonic()
    passed, message = check.run(exercise, tmp_path, time_limit=2)
    assert not passed
    assert message.startswith("your function did not return within 2 s: look for a loop that never ends"), message
    assert "line 4: while total >= 0:" in message and "\n" not in message
    assert time.monotonic() - start < 10


def test_a_loop_at_import_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CHECK_TIME_LIMIT", "2")
    exercise = _write(tmp_path, "1.2", """
        import torch
        while True:
            pass
        def top_p_filter(logits, top_p):
            return logits
        """)
    passed, message = check.run(exercise, tmp_path)
    assert not passed
    assert message.startswith("importing your file did not finish within 2 s: look for a loop that never ends"), message
    assert "line 3: while True:" in message


def test_a_loop_that_swallows_the_alarm_is_killed(tmp_path):
    exercise = _write(tmp_path, "3.2", """
        def lr_sensitivity(final_losses, init_loss):
            while True:
                try:
                    sum(range(1000))
                except BaseException:
                    pass
        """)
    start = time.monotonic()
    passed, message = check.run(exercise, tmp_path, time_limit=1)
    assert not passed
    assert message == "your function did not return within 1 s: look for a loop that never ends"
    assert time.monotonic() - start < 10


def test_a_function_that_ends_the_process_is_reported(tmp_path):
    exercise = _write(tmp_path, "3.2", """
        import os, sys
        def lr_sensitivity(final_losses, init_loss):
            if init_loss > 0:
                os._exit(3)
            sys.exit("done")
        """)
    passed, message = check.run(exercise, tmp_path, time_limit=5)
    assert not passed and message.startswith("the check ended without a result (exit code 3)"), message


def test_the_time_limit_on_the_command_line(monkeypatch):
    with pytest.raises(SystemExit, match="--time_limit='0' is not a time limit"):
        check.main(["2.2", "--time_limit=0"])
    monkeypatch.setenv("COURSE_CHECK_TIME_LIMIT", "soon")
    with pytest.raises(SystemExit, match="COURSE_CHECK_TIME_LIMIT='soon' is not a time limit"):
        check.main(["2.2"])
    assert check.main(["2.2", "--solutions", "--time_limit=30"]) == 0


def test_ctrl_c_ends_the_checker_without_a_traceback(tmp_path):
    """Ctrl-C (SIGINT to the whole process group) while a student's function loops: one line, no
    traceback from the checker or from the child, and the child is gone."""
    marker = tmp_path / "looping"
    _write(tmp_path, "3.2", f"""
        import os
        def lr_sensitivity(final_losses, init_loss):
            open({str(marker)!r}, "w").write(str(os.getpid()))
            while True:
                pass
        """)
    script = ("import sys; from pathlib import Path; from course import check; "
              f"check.EXERCISE_DIR = Path({str(tmp_path)!r}); sys.argv = ['check', '3.2']; "
              "sys.exit(check._command_line())")
    root = check.COURSE.parent
    process = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "COURSE_CHECK_TIME_LIMIT": "60", "PYTHONPATH": str(root)},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(marker.read_text())
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert out.strip() == "interrupted: no more exercises checked", out
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
