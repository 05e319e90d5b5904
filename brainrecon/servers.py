"""Start JupyterLab on the notebooks and the explorer as a Voilà page, on 127.0.0.1.

``brainrecon lab`` and ``brainrecon explore`` call :func:`lab_command` / :func:`explorer_command` and
run what they return. The notebooks are jupytext percent files (``notebooks/*.py``); Lab opens them as
notebooks (jupytext's "Jupytext Notebook" viewer is made the default for ``.py`` through an
``overrides.json`` of our own), and Voilà gets the explorer converted to ``.ipynb`` with its
``parameters`` cell set.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .errors import DataNotFoundError, InvalidInputError

__all__ = ["notebooks_dir", "lab_command", "explorer_command", "write_explorer_notebook"]


def notebooks_dir() -> Path:
    """The ``notebooks/`` folder beside the package (a source checkout or an editable install)."""
    d = Path(__file__).resolve().parent.parent / "notebooks"
    if not (d / "explorer.py").is_file():
        raise DataNotFoundError("the brainrecon notebooks", [d / "explorer.py"],
                                hint="Install brainrecon from a source checkout (`pip install -e .`): "
                                     "the notebooks are not part of a wheel.")
    return d


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.is_file() else shutil.which(name)
    if found is None:
        raise DataNotFoundError(f"the {name!r} command", [exe],
                                hint="Install the project as the README says (it brings JupyterLab and Voilà).")
    return found


def _check_port(port: int) -> int:
    port = int(port)
    if not 1024 <= port <= 65535:
        raise InvalidInputError(f"port must be in 1024-65535, got {port}.")
    return port


def lab_command(port: int = 8888, token: str | None = None, root: Path | None = None,
                settings_dir: Path | None = None) -> list[str]:
    """The ``jupyter lab`` command line serving ``root`` (default the notebooks) on 127.0.0.1.

    Parameters
    ----------
    port : int
    token : str, optional
        The server's token (default: Jupyter's own, printed at start).
    root : path, optional
        Folder shown (default :func:`notebooks_dir`).
    settings_dir : path, optional
        Where the ``overrides.json`` that opens ``.py`` notebooks with jupytext is written
        (default ``~/.cache/brainrecon/lab-settings``).

    Returns
    -------
    list of str
    """
    root = Path(root) if root is not None else notebooks_dir()
    settings = Path(settings_dir) if settings_dir is not None else Path.home() / ".cache" / "brainrecon" / "lab-settings"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "overrides.json").write_text(json.dumps({
        "@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}},
        "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}},
        indent=1))
    cmd = [_tool("jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={_check_port(port)}",
           f"--ServerApp.root_dir={root}", f"--LabServerApp.app_settings_dir={settings}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if token is not None:
        cmd.append(f"--IdentityProvider.token={token}")
    return cmd


def write_explorer_notebook(out: Path, parameters: dict | None = None) -> Path:
    """``notebooks/explorer.py`` as ``out/explorer.ipynb``, its parameters cell set to ``parameters``."""
    import jupytext
    import nbformat

    src = notebooks_dir() / "explorer.py"
    nb = jupytext.read(src)
    params = dict(parameters or {})
    if params:
        cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        if not cells:  # pragma: no cover - the notebook's own structure
            raise InvalidInputError(f"{src} has no cell tagged 'parameters'.")
        unknown = sorted(k for k in params if f"\n{k} =" not in "\n" + cells[0].source)
        if unknown:
            raise InvalidInputError(f"unknown explorer parameter(s) {unknown}; see the parameters cell of {src}.")
        cells[0].source += "\n# set by brainrecon explore\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "explorer.ipynb"
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, str(tmp))
    tmp.replace(path)
    return path


def explorer_command(out: Path, port: int = 8866, parameters: dict | None = None) -> list[str]:
    """The ``voila`` command line serving the explorer page (written to ``out``) on 127.0.0.1."""
    nb = write_explorer_notebook(out, parameters)
    return [_tool("voila"), "--no-browser", "--Voila.ip=127.0.0.1", f"--port={_check_port(port)}", str(nb)]
