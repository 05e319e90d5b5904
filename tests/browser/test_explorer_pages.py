"""The explorer as a person sees it: served by Voilà and opened in JupyterLab, driven in Chromium."""
import json
import time
import urllib.request

from brainrecon.servers import lab_command, write_explorer_notebook
from conftest import Server, free_port, server_env, venv_tool
from pages import accept_dialog, drive_explorer, no_figure_text, run_all_until_explorer, wait_for_explorer

SMOKE = {"N_TEST": 3, "NUM_INFERENCE_STEPS": 3, "WORLD_PRESET": "smoke"}


def _check(states):
    assert states["start"]["status"].startswith("neuropictor · subj01 · scan 0 · α = 1 · CFG = 5")
    assert "α = 0.5 · CFG = 5" in states["alpha"]["status"]
    assert "α = 0.5 · CFG = 2" in states["cfg"]["status"] and "semantics of scan 1" in states["swap"]["status"]
    assert len({s["panel"] for s in states.values()}) == 4          # every move changed what is shown
    assert all(states[k]["round_trip_s"] > 0 for k in ("alpha", "cfg", "swap"))


def _restart_kernels(port: int, token: str) -> None:
    """Restart the server's kernels through its REST API (what Kernel > Restart does)."""
    base = f"http://127.0.0.1:{port}/api/kernels"
    with urllib.request.urlopen(f"{base}?token={token}", timeout=30) as r:
        kernels = json.loads(r.read())
    for k in kernels:
        req = urllib.request.Request(f"{base}/{k['id']}/restart?token={token}", data=b"", method="POST")
        urllib.request.urlopen(req, timeout=120).close()


def test_voila_explorer_page_shows_images_and_follows_the_controls(browser, tmp_path, screenshots):
    nb = write_explorer_notebook(tmp_path / "page", SMOKE)
    port = free_port()
    srv = Server([venv_tool("voila"), "--no-browser", "--Voila.ip=127.0.0.1", f"--port={port}", str(nb)],
                 server_env(tmp_path), tmp_path / "voila.log")
    page = None
    try:
        srv.wait_http(f"http://127.0.0.1:{port}/", timeout=120)
        page = browser.new_page(viewport={"width": 1200, "height": 1100})
        t = time.monotonic()
        page.goto(f"http://127.0.0.1:{port}/", timeout=400_000, wait_until="commit")
        wait_for_explorer(page)
        print(f"voila page ready in {time.monotonic() - t:.0f} s")
        _check(drive_explorer(page, screenshots, "voila"))
    finally:
        if page is not None:
            page.close()
        srv.stop()


def test_jupyterlab_opens_the_py_notebook_and_renders_the_explorer(browser, tmp_path, screenshots):
    root = tmp_path / "notebooks"
    root.mkdir()
    src = write_explorer_notebook(tmp_path / "nb", SMOKE)            # the .py, parameters set, as a text notebook
    import jupytext

    nb = jupytext.read(src)
    nb.metadata.get("jupytext", {}).pop("formats", None)   # unpaired: Lab writing explorer.ipynb beside it would
    jupytext.write(nb, root / "explorer.py", fmt="py:percent")  # reload the document under a running Run All
    port, token = free_port(), "brainrecon-test"
    cmd = lab_command(port=port, token=token, root=root, settings_dir=tmp_path / "lab-app-settings")
    srv = Server(cmd + ["--allow-root", "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True"],
                 server_env(tmp_path), tmp_path / "lab.log")
    page = None
    try:
        srv.wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=120)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(f"http://127.0.0.1:{port}/lab/tree/explorer.py?reset&token={token}", timeout=120_000)
        page.wait_for_selector(".jp-Notebook", timeout=120_000)           # opened as a notebook, not as text
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=180_000)
        # Run > Run All Cells, as Lab's own command (a menu click can land before the menu is wired up)
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.commands.hasCommand("
                               "'notebook:run-all-cells')", timeout=120_000)
        page.locator(".jp-Notebook").first.click()
        t = time.monotonic()
        run_all_until_explorer(page, log_path=srv.log_path,
                               restart_kernel=lambda: _restart_kernels(port, token))
        print(f"lab explorer ready in {time.monotonic() - t:.0f} s")
        accept_dialog(page)                  # a dialog left over (e.g. after a kernel restart) must not cover it
        assert no_figure_text(page)
        _check(drive_explorer(page, screenshots, "lab"))
    except Exception:
        if page is not None:                      # what the page showed when it failed
            page.screenshot(path=str(screenshots / "lab_failure.png"), full_page=True)
        raise
    finally:
        if page is not None:
            page.close()
        srv.stop()
