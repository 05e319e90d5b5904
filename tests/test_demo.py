"""``brainrecon demo``: the shipped toy reconstructor (or a tiny random one when it is absent)."""
import json

import pytest

from brainrecon.cli import main
from reconstructor_helpers import write_tiny_reconstructor


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reconstructor(tmp_path_factory):
    from brainrecon.sampling import TOY_RECONSTRUCTOR_DIR

    if (TOY_RECONSTRUCTOR_DIR / "conditioner").is_dir():
        return None  # the shipped one (the default of --reconstructor)
    return str(write_tiny_reconstructor(tmp_path_factory.mktemp("rec") / "tiny"))


def test_demo_writes_report_and_figures(reconstructor, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--world", "smoke", "--n-test", "6", "--steps", "2", "--seed", "1"]
    if reconstructor is not None:
        argv += ["--reconstructor", reconstructor]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "category_follows_semantic" in printed and f"wrote {out}" in printed
    report = json.loads((out / "report.json").read_text())
    for name in ("reconstructions.png", "alpha_sweep.png", "swap_grid.png"):
        assert (out / name).stat().st_size > 5000
    assert (out / "results" / "reconstructions.npy").is_file() and (out / "figures.csv").is_file()
    assert report["n_test"] == 6 and report["num_inference_steps"] == 2 and report["seed"] == 1
    assert set(report["alpha"]) == {"0", "1"} and {"0"} < set(report["guidance"])
    for figures in [*report["alpha"].values(), *report["guidance"].values()]:
        assert 0 <= figures["category_acc"] <= 1 and 0 <= figures["position_error"] <= 1.5
        assert -1 <= figures["ssim"] <= 1 and -1 <= figures["pixcorr"] <= 1
    for k in ("category_follows_semantic", "category_follows_layout", "position_follows_layout"):
        assert 0 <= report["swap"][k] <= 1
    # the results folder scores again with `brainrecon evaluate`
    from brainrecon.metrics import load_results

    res = load_results(out / "results")
    assert len(res) == 6 and res.meta["method"] == "neuropictor"


def test_demo_names_a_missing_reconstructor(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nowhere"
    assert main(["demo", "--out", str(tmp_path / "o"), "--reconstructor", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "never downloads" in err and not (tmp_path / "o").exists()
    import brainrecon.sampling.folders as folders

    monkeypatch.setitem(folders.SHIPPED_RECONSTRUCTORS, "neuropictor", tmp_path / "not-shipped")
    assert main(["demo", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "shipped toy neuropictor reconstructor" in err and str(tmp_path / "not-shipped") in err
