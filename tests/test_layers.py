"""The house's layers hold: no module imports a room above its own (read from the sources, not run).

Lowest first; a room may import its own layer's utilities and anything below::

    utilities   errors, io, cards, figures, _lazy
    foundations data, diffusion          (the world/NSD readers; the denoising loop)
    models      models, plotting         (networks of the methods; figures of data)
    backbones   backbones                (pretrained latent-diffusion parts)
    metrics     metrics                  (the evaluation suite, backbone evaluation)
    methods     training, sampling       (recipes and runs; pipelines and exploration)
    apps        widgets, explorer, servers (what users touch)
    commands    cli                      (the command line over all of it)

Rooms of one layer must not import each other (no circles between folders); the utilities may
(``cards`` and ``io`` report with ``errors``).
"""
import ast
from pathlib import Path

import brainrecon

PKG = Path(brainrecon.__file__).parent
LAYERS = [
    {"errors", "io", "cards", "figures", "_lazy"},
    {"data", "diffusion"},
    {"models", "plotting"},
    {"backbones"},
    {"metrics"},
    {"training", "sampling"},
    {"widgets", "explorer", "servers"},
    {"cli", "(root)", "__main__"},
]
SAME_LAYER_ALLOWED = {("cards", "errors"), ("io", "errors")}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def _layer(room: str) -> int:
    for i, rooms in enumerate(LAYERS):
        if room in rooms:
            return i
    raise AssertionError(f"room {room!r} is on no layer: add it to LAYERS (and to the README's map)")


def _imports():
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        is_init = parts[-1] == "__init__"
        if is_init:
            parts = parts[:-1]
        module = ".".join(parts)
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts[:len(parts) - node.level + (1 if is_init else 0)]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                else:
                    targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t == "brainrecon" or t.startswith("brainrecon."):
                    yield module, t, node.lineno


def test_every_import_runs_down_the_layers():
    bad = []
    for src, dst, line in _imports():
        a, b = _room(src), _room(dst)
        if a == b or dst == "brainrecon":
            continue
        la, lb = _layer(a), _layer(b)
        if lb > la or (lb == la and (a, b) not in SAME_LAYER_ALLOWED):
            bad.append(f"{src}:{line} imports {dst} ({a} -> {b})")
    assert not bad, "imports that run back up the layers:\n" + "\n".join(sorted(bad))


def test_the_checker_sees_imports_at_every_depth():
    """The test cannot pass by reading nothing: it sees the known downward arrows, lazy ones included."""
    seen = {(_room(s), _room(d)) for s, d, _ in _imports()}
    assert {("backbones", "diffusion"), ("sampling", "models"), ("training", "backbones"),
            ("metrics", "data")} <= seen
