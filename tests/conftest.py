"""Shared test settings: offline, headless, deterministic, small."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """No test reads the user's data folders or leaves figures open."""
    monkeypatch.setenv("BRAINRECON_NSD", str(tmp_path / "no-nsd-here"))
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    The toy models are tiny: a second thread only adds synchronisation, and on a shared 2-core
    machine it made steps up to 10× slower (measured).
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
