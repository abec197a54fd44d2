from dataclasses import dataclass

import pytest

from configurable import ConfigError, opt, parse_args, pick, run_main, to_dict


@dataclass
class A:
    learning_rate: float = opt(1e-3, "peak learning rate")
    dropout: float = opt(0.1, "dropout")
    n_layer: int = opt(4, "layers")


@dataclass
class B:
    compile: bool = opt(True, "compile the model")
    name: str = opt("run", "run name")
    steps: int | None = opt(None, "optional step count")


def parse(argv, base=None):
    return parse_args([A, B], argv, base=base)


def test_values_are_coerced_by_type():
    a, b = parse(["--dropout=0", "--compile=false", "--learning_rate=3e-4", "--n_layer", "6", "--name", "x"])
    assert a == A(learning_rate=3e-4, dropout=0.0, n_layer=6)
    assert isinstance(a.dropout, float) and b.compile is False and b.name == "x"
    assert parse(["--compile"])[1].compile is True
    assert parse(["--steps=1e3"])[1].steps == 1000
    assert parse(["--steps=none"])[1].steps is None


@pytest.mark.parametrize("argv, message", [
    (["--lerning_rate=1"], "unknown key 'lerning_rate' (did you mean 'learning_rate'?)"),
    (["--zzz=1"], "unknown key 'zzz' (see --help"),
    (["--n_layer=four"], "bad value 'four' for 'n_layer': expected int"),
    (["--n_layer=2.5"], "bad value '2.5' for 'n_layer'"),
    (["--compile=maybe"], "bad value 'maybe' for 'compile': expected bool"),
    (["--dropout=lots"], "bad value 'lots' for 'dropout': expected float"),
    (["n_layer=2"], "unexpected argument 'n_layer=2'"),
    (["--config=/nonexistent.toml"], "config file '/nonexistent.toml' not found"),
])
def test_bad_input_fails_with_one_clear_line(argv, message):
    with pytest.raises(ConfigError) as err:
        parse(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_missing_config_file_suggests_the_closest_one(tmp_path):
    (tmp_path / "sink_cpu.toml").write_text("n_layer = 2\n")
    with pytest.raises(ConfigError, match=f"config file '{tmp_path}/sink.toml' not found "
                                          f"\\(did you mean '{tmp_path}/sink_cpu.toml'\\?\\)"):
        parse([f"--config={tmp_path / 'sink.toml'}"])


def test_toml_files_then_command_line(tmp_path):
    first = tmp_path / "a.toml"
    first.write_text('learning_rate = 0.01\nname = "from-file"\ncompile = false\nn_layer = 8\n')
    second = tmp_path / "b.toml"
    second.write_text("n_layer = 2\n")
    a, b = parse([f"--config={first}", f"--config={second}", "--name=cli"])
    assert (a.learning_rate, a.n_layer, b.compile, b.name) == (0.01, 2, False, "cli")


def test_toml_errors(tmp_path):
    typo = tmp_path / "typo.toml"
    typo.write_text("dropuot = 0.2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'dropuot' in .*typo.toml \(did you mean 'dropout'\?\)"):
        parse([f"--config={typo}"])
    wrong_type = tmp_path / "type.toml"
    wrong_type.write_text('n_layer = "many"\n')
    with pytest.raises(ConfigError, match="bad value 'many' for 'n_layer'"):
        parse([f"--config={wrong_type}"])
    broken = tmp_path / "broken.toml"
    broken.write_text("n_layer = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse([f"--config={broken}"])


def test_help_lists_every_key_with_default_and_description(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args([A, B], ["--help"], prog="x.py")
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for key, default, help_ in [("learning_rate", "0.001", "peak learning rate"), ("compile", "True", "compile"),
                                ("steps", "None", "optional step count")]:
        line = next(line for line in text.splitlines() if line.strip().startswith(f"--{key}="))
        assert default in line and help_ in line


def test_base_config_is_overridden_by_command_line():
    stored = to_dict(A(n_layer=12), B(name="stored"))
    a, b = parse(["--name=new"], base=stored)
    assert (a.n_layer, b.name) == (12, "new")
    assert pick(A, stored) == A(n_layer=12)
    with pytest.raises(ConfigError, match="in the stored config"):
        parse([], base={**stored, "retired_key": 1})


def test_run_main_turns_config_errors_into_one_line():
    def main(argv):
        parse(argv)

    with pytest.raises(SystemExit) as exit_:
        run_main(main, ["--nlayer=3"])
    assert str(exit_.value.code) == "error: unknown key 'nlayer' (did you mean 'n_layer'?)"


@dataclass
class C:
    name: str = opt("other", "a key B has too")
    prompt: str = opt("\n", "text with a newline")
    a_much_longer_key_name: int = opt(0, "long")


def test_help_lines_up_lists_each_key_once_and_escapes_newlines(capsys):
    with pytest.raises(SystemExit):
        parse_args([A, B, C], ["--help"], prog="x.py", base={"n_layer": 8}, ignored=("steps",))
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("  --")]
    # Every description starts in the same column.
    starts = {line.index(help_) for line in rows for help_ in ("layers", "run name", "text with", "load settings")
              if help_ in line}
    assert len(starts) == 1
    assert sum(line.startswith("  --name=") for line in rows) == 1  # B's, the first class with the key
    assert any(line.startswith("  --prompt='\\n'") for line in rows)  # the newline shown escaped
    assert any(line.startswith("  --n_layer=8 ") for line in rows)  # the base's default
    assert not any(line.startswith("  --steps=") for line in rows)
    assert lines[-1] == "Accepted but ignored here (so that training presets load): steps"
