"""Issue 17, groups 3, 4 and 7 on the command line: every argument is checked before any work.

Each bad command must exit with code 2 in under 5 s (it used to fail after 20-108 s of work, or
exit 0 with a report of noise), print brainrecon's message without a traceback, and leave
nothing behind. The last tests run the demo once and check that ``brainrecon evaluate`` on its
folder finds ``results/`` and reports exactly the demo's figures.
"""
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from brainrecon.cli import main
from brainrecon.sampling import TOY_RECONSTRUCTOR_DIR

pytestmark = pytest.mark.usefixtures("one_thread")

LIMIT_S = 5.0


@pytest.fixture(scope="module", autouse=True)
def _imported():
    """Import what the commands import, so that the timings below measure work, not Python imports."""
    import brainrecon.metrics.suite  # noqa: F401
    import brainrecon.sampling.demo  # noqa: F401
    import brainrecon.sampling.pipeline  # noqa: F401
    import brainrecon.training.toy_recipe  # noqa: F401,F811


def _fails_fast(argv, capsys, *expected):
    """Run ``brainrecon ARGV`` in-process: exit code 2, under LIMIT_S, messages on stderr, no traceback."""
    t = time.monotonic()
    code = main([str(a) for a in argv])
    seconds = time.monotonic() - t
    err = capsys.readouterr().err
    assert code == 2, err
    assert seconds < LIMIT_S, f"{argv} took {seconds:.1f} s"
    assert "Traceback" not in err and f"brainrecon {argv[0]}: " in err   # (a progress bar may come first)
    for text in expected:
        assert text in err, (text, err)
    return err


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write to (root ignores permission bits: then a /proc folder)."""
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "probe").touch()
    except OSError:
        yield d
    else:
        (d / "probe").unlink()
        if not Path("/proc/1").is_dir():
            pytest.skip("running as root without /proc: no folder here refuses writes")
        yield Path("/proc/1")
    finally:
        d.chmod(0o755)


# ----------------------------------------------------------------------------- group 4: output folders
def test_demo_out_is_an_existing_file(tmp_path, capsys):
    f = tmp_path / "report.txt"
    f.write_text("keep me")
    _fails_fast(["demo", "--out", f], capsys, str(f), "is an existing file", "Pass a folder path")
    _fails_fast(["demo", "--out", f / "sub"], capsys, "is an existing file")
    assert f.read_text() == "keep me"


def test_demo_out_is_read_only(read_only_dir, capsys):
    for out in (read_only_dir, read_only_dir / "demo-out"):
        _fails_fast(["demo", "--out", out], capsys, str(out), "cannot be written", "folder you can write to")
    assert not (read_only_dir / "demo-out").exists()


@pytest.mark.parametrize("argv", [["toyworld"], ["backbones", "train"], ["explore", "--print-command"]])
def test_other_commands_check_out_first(tmp_path, capsys, argv):
    f = tmp_path / "file"
    f.write_text("")
    _fails_fast([*argv, "--out", f], capsys, "--out", "is an existing file")


# ----------------------------------------------------------------------------- group 4: numbers and names
@pytest.mark.parametrize("argv, expected", [
    (["demo", "--n-test", "0"], "'n_test' must be an integer >= 2; 0 was provided"),
    (["demo", "--n-test", "1"], "'n_test' must be an integer >= 2; 1 was provided"),
    (["demo", "--steps", "-1"], "'num_inference_steps (--steps)' must be an integer >= 1; -1"),
    (["demo", "--steps", "0"], "must be an integer >= 1; 0"),
    (["demo", "--threads", "0"], "'threads' must be an integer >= 1"),
    (["demo", "--seed", "-3"], "'seed' must be an integer >= 0"),
    (["demo", "--subject", "subj99"], "'subject (--subject)' must be one of this toy world's subjects (subj01"),
    (["demo", "--world", "smoke", "--subject", "subj04"], "(subj01, subj02, subj03); 'subj04'"),
    (["toyworld", "--resolution", "10"], "'--resolution' must be an integer in 64..256; 10 was provided"),
    (["toyworld", "--resolution", "512"], "in 64..256; 512"),
    (["toyworld", "--seed", "-1"], "'--seed' must be an integer >= 0"),
    (["lab", "--port", "80", "--print-command"], "'--port' must be an integer in 1024..65535; 80"),
    (["explore", "--n-test", "0", "--print-command"], "'--n-test' must be an integer >= 1"),
    (["explore", "--steps", "0", "--print-command"], "'--steps' must be an integer >= 1"),
])
def test_bad_numbers_and_names_fail_before_any_work(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    if argv[0] in ("demo", "toyworld", "explore"):
        argv = [*argv, "--out", out]
    _fails_fast(argv, capsys, expected)
    assert not out.exists()


@pytest.mark.parametrize("extra, expected", [
    (["--subject", "subj99"], "'subject' must be one of this toy world's subjects (subj01, subj02, subj03, subj04"),
    (["--preset", "smoke", "--subject", "subj05"], "(subj01, subj02, subj03); 'subj05'"),
    (["--heldout", "subj42"], "'heldout' must be one of"),
    (["--heldout-fraction", "0"], "'heldout_fraction' must be in (0, 1]"),
    (["--heldout-fraction", "1.5"], "'heldout_fraction' must be in (0, 1]"),
    (["--threads", "0"], "'threads' must be an integer >= 1"),
])
def test_train_checks_its_arguments_and_leaves_no_folder(tmp_path, capsys, extra, expected):
    out = tmp_path / "runs" / "np"
    _fails_fast(["train", "neuropictor", "--out", out, *extra], capsys, expected)
    assert not out.exists() and not out.parent.exists()


def test_train_ship_to_an_existing_file(tmp_path, capsys):
    f = tmp_path / "shipped"
    f.write_text("")
    _fails_fast(["train", "neuropictor", "--out", tmp_path / "np", "--ship-to", f], capsys, "ship_to", "existing file")
    assert not (tmp_path / "np").exists()


# ----------------------------------------------------------------------------- group 3 on the command line
def test_evaluate_device_the_machine_lacks(tmp_path, capsys):
    device = f"cuda:{torch.cuda.device_count()}"
    _fails_fast(["evaluate", tmp_path, "--device", device], capsys, repr(device), "'cpu'")


def test_evaluate_missing_weights_folder(tmp_path, capsys):
    from brainrecon.metrics import save_results

    x = (torch.rand(2, 3, 8, 8) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    res = save_results(tmp_path / "r", x, x, world="nsd")
    _fails_fast(["evaluate", res, "--weights", tmp_path / "no-weights"], capsys, "--weights", "no-weights",
                "(missing)")
    assert not (res / "metrics.json").exists()


def test_demo_with_a_truncated_reconstructor_names_the_file(tmp_path, capsys):
    rec = tmp_path / "rec"
    shutil.copytree(TOY_RECONSTRUCTOR_DIR, rec)
    f = rec / "conditioner" / "hlgn" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    _fails_fast(["demo", "--out", tmp_path / "o", "--reconstructor", rec], capsys, str(f), "truncated")
    (rec / "backbone.json").write_text('{"backbone": "to')
    _fails_fast(["demo", "--out", tmp_path / "o", "--reconstructor", rec], capsys, str(rec / "backbone.json"))
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- group 7: one scoring path
@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    if not (TOY_RECONSTRUCTOR_DIR / "conditioner").is_dir():
        pytest.skip("the shipped toy reconstructor is not installed")
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    assert main(["demo", "--out", str(out), "--world", "smoke", "--n-test", "4", "--steps", "2", "--seed", "1"]) == 0
    return out


def test_evaluate_on_the_demo_results_agrees_exactly_with_its_report(demo_out, tmp_path):
    """The demo scores the 8-bit images it saves, as ``brainrecon evaluate`` does: same figures to the bit."""
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(demo_out / "results"), "--feature-set", "toy", "--out", str(out)]) == 0
    report = json.loads((demo_out / "report.json").read_text())["alpha"]["1"]
    scored = json.loads(out.read_text())["metrics"]
    assert {"pixcorr", "ssim", "category_acc", "colour_acc", "position_error", "nway"} <= set(report)
    assert {k: scored[k] for k in report} == report


def test_evaluate_on_the_demo_folder_finds_results(demo_out, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(demo_out), "--feature-set", "toy"]) == 0      # the demo's folder, not results/
    printed = capsys.readouterr().out
    assert f"scoring {demo_out / 'results'}" in printed and f"wrote {demo_out / 'results' / 'metrics.json'}" in printed
    assert (demo_out / "results" / "metrics.json").is_file() and not (demo_out / "metrics.json").exists()


def test_evaluate_on_a_folder_without_results_says_where_it_looked(tmp_path, capsys):
    (tmp_path / "demo-out").mkdir()
    _fails_fast(["evaluate", tmp_path / "demo-out"], capsys, str(tmp_path / "demo-out" / "results"),
                "for `brainrecon demo --out DIR` that is DIR/results")
