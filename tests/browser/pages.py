"""What the browser tests read and do on an explorer page (Voilà or JupyterLab), as a person would."""
import hashlib
import time

FIGURE_TEXT = "<Figure size"


def wait_for_explorer(page, timeout_s: float = 300) -> None:
    """Until the explorer's two image panels and its status line are on the page."""
    page.wait_for_function(_EXPLORER_SHOWN, timeout=timeout_s * 1000)


_EXPLORER_SHOWN = ("() => document.querySelectorAll('img.widget-image').length >= 2 && "
                   "[...document.querySelectorAll('.widget-label')].some(e => e.textContent.includes('CFG ='))")
_PROMPTS = "() => [...document.querySelectorAll('.jp-InputPrompt')].map(e => e.textContent.trim())"
_ERRORS = ("() => [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type*=\"stderr\"], "
           ".jp-OutputArea-output[data-mime-type*=\"error\"]')].map(e => e.innerText).join('\\n')")


def accept_dialog(page) -> bool:
    """Press the default button of a Lab dialog if one is open (e.g. "Select Kernel"); True if one was."""
    button = page.locator(".jp-Dialog .jp-mod-accept")
    if button.count() and button.first.is_visible():
        button.first.click()
        page.wait_for_timeout(500)
        return True
    return False


_RUN_ALL = ("() => { const p = document.querySelector('.jp-NotebookPanel');"
            " if (p) window.jupyterapp.shell.activateById(p.id);"
            " window.jupyterapp.commands.execute('notebook:run-all-cells'); return true; }")


_CLEAR_OUTPUTS = "() => { window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs'); return true; }"


def _skipped_a_cell(prompts) -> bool:
    """True when a cell never ran ("[ ]:") while a later one did (has an execution count)."""
    ran = [any(c.isdigit() for c in p) for p in prompts]
    return any(not a and any(ran[i + 1:]) for i, a in enumerate(ran))


def run_all_until_explorer(page, timeout_s: float = 420, log_path=None, restart_kernel=None) -> None:
    """Lab's Run All Cells until the explorer shows, as a person would press it again.

    The command is issued without waiting for it (its promise resolves only when every cell has
    run), after activating the notebook panel. Lab can drop a Run All issued while a new kernel still
    settles, and a widget output that arrives before the widget manager is ready renders as text;
    so while no cell is queued or running and the explorer is absent, Run All is issued again
    (every 20 s at most). Cells that stay queued for 150 s without one starting mean the kernel
    never got the requests: ``restart_kernel()`` (if given) restarts it once, as a person would, and
    Run All follows; so does a traceback in a cell that ran after an earlier cell was skipped (Lab can
    drop the first cell's request of a Run All into a kernel that just started, and the next cell then
    misses the parameters: CI, stop 23); the "Select Kernel" dialog Lab may then show is accepted (:func:`accept_dialog`).
    (At 60 s this fired on a merely slow kernel in a loaded full-suite run, and the dialog it brought
    then covered the page.) A traceback in an output fails at once; a timeout fails with the prompts, the
    outputs and the server log.
    """
    end = time.monotonic() + timeout_s
    last_issue, queued_since, issued, restarts = -1e9, None, 0, 0
    while time.monotonic() < end:
        accept_dialog(page)
        if page.evaluate(_EXPLORER_SHOWN):
            return
        errors = page.evaluate(_ERRORS)
        prompts = page.evaluate(_PROMPTS)
        if "Traceback" in errors:
            if _skipped_a_cell(prompts) and restart_kernel is not None and restarts < 1:
                # Lab dropped an early cell's request (it shows "[ ]:" while a later cell ran), so a later
                # cell missed its names: restart, clear, Run All again, as a person would.
                print(f"a cell was skipped (prompts: {' '.join(prompts)}): restarting the kernel")
                restart_kernel()
                page.evaluate(_CLEAR_OUTPUTS)
                restarts, queued_since, last_issue = restarts + 1, None, -1e9
                page.wait_for_timeout(5000)
                continue
            raise AssertionError(f"a notebook cell failed (prompts: {' '.join(prompts)}):\n{errors[-3000:]}")
        busy = any("*" in p for p in prompts)
        started = any(any(c.isdigit() for c in p) for p in prompts)
        now = time.monotonic()
        queued_since = (queued_since or now) if busy and not started else None
        if queued_since is not None and now - queued_since > 150 and restart_kernel is not None and restarts < 1:
            print(f"cells queued {now - queued_since:.0f} s and none started: restarting the kernel")
            restart_kernel()
            restarts, queued_since, last_issue = restarts + 1, None, -1e9
            page.wait_for_timeout(5000)
            continue
        if not busy and now - last_issue > 20:
            page.evaluate(_RUN_ALL)
            last_issue, issued = now, issued + 1
            print(f"Run All #{issued} issued (prompts: {' '.join(prompts)})")
        page.wait_for_timeout(1000)
    log = log_path.read_text()[-3000:] if log_path is not None else ""
    raise AssertionError(f"the explorer did not show in {timeout_s:.0f} s after {issued} Run All and {restarts} "
                         f"kernel restarts; prompts: {page.evaluate(_PROMPTS)}\noutputs:\n"
                         f"{page.inner_text('.jp-Notebook')[-3000:]}\nserver log:\n{log}")


def status(page) -> str:
    return page.locator(".widget-label", has_text="CFG =").first.inner_text()


def panel_png(page) -> bytes:
    """The main panel as the person sees it (a screenshot of the element)."""
    return page.locator("img.widget-image").first.screenshot()


def digest(b: bytes) -> str:
    return hashlib.sha1(b).hexdigest()[:12]


def no_figure_text(page) -> bool:
    return FIGURE_TEXT not in page.inner_text("body")


def set_slider(page, name: str, value: float) -> None:
    """Type ``value`` into the slider's readout (what a person does for an exact value)."""
    slider = page.locator(".widget-hslider", has=page.locator(".widget-label", has_text=name)).first
    readout = slider.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(f"{value:g}")
    page.keyboard.press("Enter")


def pick(page, name: str, label: str) -> None:
    """Choose the option ``label`` of the dropdown described ``name``."""
    box = page.locator(".widget-dropdown", has=page.locator(".widget-label", has_text=name)).first
    box.locator("select").select_option(label=label)


def wait_until(page, predicate, timeout_s: float = 120, what: str = "") -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        page.wait_for_timeout(300)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; status: {status(page)!r}")


def drive_explorer(page, shots, prefix: str) -> dict:
    """Move α, CFG and the semantic picker; after each, the label and the image must change.

    Returns the status line and panel digest of every state (what the test asserts on).
    """
    states = {}

    def snap(name):
        png = panel_png(page)
        (shots / f"{prefix}_{name}.png").write_bytes(page.screenshot(full_page=True))
        states[name] = {"status": status(page), "panel": digest(png)}
        return png

    assert no_figure_text(page), "a figure shows as text on the page"
    before = snap("start")
    for name, action, expect in (
            ("alpha", lambda: set_slider(page, "α", 0.5), "α = 0.5"),
            ("cfg", lambda: set_slider(page, "CFG", 2.0), "CFG = 2"),
            ("swap", lambda: pick(page, "semantics", "scan 1"), "semantics of scan 1")):
        t0 = time.monotonic()
        action()
        wait_until(page, lambda: expect in status(page), what=f"the label to read {expect!r}")
        wait_until(page, lambda: digest(panel_png(page)) != digest(before), what="the reconstruction to change")
        round_trip = time.monotonic() - t0
        before = snap(name)
        states[name]["round_trip_s"] = round(round_trip, 2)
        print(f"{prefix} {name}: new image and label {round_trip:.2f} s after the move")
        assert no_figure_text(page), f"a figure shows as text after {name}"
    return states
