import pytest

import prepare_data


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
