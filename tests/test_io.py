import os
import stat

import pytest

from brainrecon.io import atomic_dir, atomic_file, write_json


def test_atomic_file_replaces_only_on_success(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(p, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
    with atomic_file(p, "w") as f:
        f.write("new")
    assert p.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


def test_atomic_dir_keeps_old_folder_until_complete(tmp_path):
    d = tmp_path / "run"
    with atomic_dir(d) as t:
        (t / "x").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(d) as t:
            (t / "x").write_text("2")
            raise KeyboardInterrupt
    assert (d / "x").read_text() == "1" and sorted(os.listdir(tmp_path)) == ["run"]
    with atomic_dir(d) as t:
        (t / "y").write_text("3")
    assert sorted(os.listdir(d)) == ["y"]
    assert stat.S_IMODE(d.stat().st_mode) & 0o755 == 0o755


def test_write_json_numpy(tmp_path):
    import json

    import numpy as np

    write_json(tmp_path / "m.json", {"a": np.float32(1.5), "b": np.arange(3), "c": np.int64(2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": 2}
