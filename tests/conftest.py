import contextlib

import pytest

import prepare_data
import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small character-level dataset with learnable structure, as `data_dir/tiny/`."""
    folder = tmp_path_factory.mktemp("data")
    lines = ["ROMEO:", "But soft, what light through yonder window breaks?", "",
             "JULIET:", "O Romeo, Romeo, wherefore art thou Romeo?", ""]
    source = folder / "text.txt"
    source.write_text("\n".join(lines * 150))
    prepare_data.prepare(prepare_data.DataConfig(dataset="tiny", source=str(source), data_dir=str(folder)))
    return folder


@pytest.fixture
def interrupted_after(monkeypatch):
    """`with interrupted_after(n):` training stops with a KeyboardInterrupt (as on Ctrl-C) when
    it asks for batch n + 1; on leaving, the batches are real again."""
    @contextlib.contextmanager
    def interrupt(steps):
        original, calls = train.Batches.train_step, {"n": 0}

        def counted(self, micro_steps):
            calls["n"] += 1
            if calls["n"] > steps:
                raise KeyboardInterrupt
            return original(self, micro_steps)

        monkeypatch.setattr(train.Batches, "train_step", counted)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(train.Batches, "train_step", original)
    return interrupt
