"""The demo's guardrail scene: a variant goes bad under load and the controller pauses it.

``fieldlab demo`` runs it after the shop tour (``--no-guardrails`` skips it).
The shop runs again, with its config plus a rollout ``new-pricing`` whose
variant ``v2`` answers 10 % of its requests with HTTP 500 (an abort fault), and
a ``[guardrails]`` table with short windows so the scene takes seconds, not an
hour. While simulated visitors browse, the controller (the same
:class:`~fieldlab.control.controller.Controller` ``fieldlab watch`` runs) reads
the spans every second, prints each round, and pauses ``v2`` once its burn
rate fires in both windows and it is shown worse than control; the workers
follow the state file within a second, and ``v2``'s users get control (reason
``guardrail``), so the errors stop. The scene's report (``report-guardrails.html``)
shows the decisions on the experiment's timeline.
"""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["run_scene", "SCENE_CONFIG"]

#: Appended to the shop's config for the scene (short windows: the decision comes within seconds).
SCENE_CONFIG = """

# ---- added by the demo's guardrail scene -------------------------------------------------------
[guardrails]
service_slo = 99.5
budget_period = "1h"
experiment_share = 50
windows = [{ long = "1m", short = "15s", burn_rate = 14.4 }]
min_units = 30

[[experiments]]
key = "new-pricing"
description = "(demo scene) a pricing rollout whose v2 starts failing under load"
owner = "pricing"
unit = "user"
traffic = 50
exposure = "on_assign"
variants = [
  { name = "control" },
  { name = "v2", faults = [{ point = "http", status = 500, body = "pricing v2 failed", rate = 20 }] },
]
[experiments.guardrails]
error_slo = 99.5
"""


def _scene_config(shop: Path, directory: Path) -> Path:
    text = shop.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^max_blast_radius\s*=.*$", "max_blast_radius = 30.0", text, count=1)
    text = re.sub(r"(?m)^\[lab\]\s*$", '[lab]\nstate = "shop.state.json"', text, count=1)
    path = directory / "shop.toml"
    path.write_text(text + SCENE_CONFIG, encoding="utf-8")
    for old in (directory / "shop.state.json", directory / "shop.state.json.lock"):
        old.unlink(missing_ok=True)
    return path


#: After the pause the visitors go on this long, so the terminal and the report show v2's users getting control.
AFTER_PAUSE_SECONDS = 5.0
#: The scene ends after this long even without a pause.
MAX_SECONDS = 90.0


def run_scene(
    app: str,
    examples: Path,
    out_dir: Path,
    *,
    workers: int = 2,
    concurrency: int = 8,
    seed: int = 2,
    out: TextIO,
    err: TextIO,
    analyze: bool = True,
    max_seconds: float = MAX_SECONDS,
) -> dict[str, Any]:
    """Run the scene; returns the decisions, the times and the report path (also printed).

    Visitors keep arriving until the pause has been in force for
    ``AFTER_PAUSE_SECONDS``, or ``max_seconds`` passed.
    """
    from ..demo import _Server, drive
    from .cli import _decision_line, _load, _round_line, _specs
    from .controller import Controller
    from .state import open_store

    directory = out_dir / "guardrails"
    spans = directory / "spans"
    spans.mkdir(parents=True, exist_ok=True)
    for old in spans.glob("*.jsonl"):
        old.unlink()
    config = _scene_config(examples / "shop.toml", directory)
    state = _load(str(config))
    store = open_store(state.state_url)
    err.write(
        "\nfieldlab demo, guardrail scene: new-pricing/v2 fails 20 % of its requests; the controller "
        "watches every second\n"
    )
    server = _Server(app, examples, spans, workers, directory / "server.log", config=config)
    pause_at: float | None = None
    started = time.time()
    rounds = 0
    result: dict[str, Any] = {}
    stop = threading.Event()

    load = threading.Thread(
        target=drive, args=(server.port, 100_000, concurrency, seed, io.StringIO(), stop), daemon=True
    )
    try:
        server.wait_ready()
        load.start()
        ctl = Controller(state.guardrails, _specs(state), [str(spans)], store)
        deadline = time.monotonic() + max_seconds
        while load.is_alive():
            if time.monotonic() > deadline or (pause_at is not None and time.time() > pause_at + AFTER_PAUSE_SECONDS):
                stop.set()
            t0 = time.monotonic()
            rounds += 1
            try:
                rnd = ctl.run_round()
            except Exception as exc:  # no spans yet, a line being written: the next round reads again
                err.write(f"  round {rounds}: {exc}\n")
            else:
                out.write("  " + _round_line(rounds, rnd, time.monotonic() - t0) + "\n")
                for d in ctl.applied:
                    out.write(_decision_line(d) + "\n")
                    if d.action == "pause" and pause_at is None:
                        pause_at = time.time()
                out.flush()
            load.join(max(0.0, 1.0 - (time.monotonic() - t0)))
    finally:
        stop.set()
        if load.is_alive():
            load.join(60)
        server.stop()
    from .. import attributes as A
    from ..demo import read_server_spans

    served = read_server_spans(sorted(spans.glob("*.jsonl")))
    v2 = [s for s in served if s.attrs.get(A.variant_attr("new-pricing")) == "v2"]
    guarded = [s for s in served if s.attrs.get(A.guardrail_attr("new-pricing")) == "v2"]
    failed = sum(
        1 for s in v2 if int(s.attrs.get(A.HTTP_STATUS_CODE) or s.attrs.get(A.HTTP_STATUS_CODE_OLD) or 0) >= 500
    )
    history = store.read().history
    store.close()
    pauses = [d for d in history if d.action == "pause"]
    out.write(
        f"\n  {len(v2)} requests served v2 ({failed} failed) before the pause; {len(guarded)} requests of "
        f"v2's users got control after it (span attribute {A.guardrail_attr('new-pricing')} = v2)\n"
    )
    if pause_at is not None:
        out.write(
            f"  paused {pause_at - started:.1f} s into the scene; every worker follows the state file "
            f"({state.state_url}) within {state.state_poll_interval:g} s\n"
        )
    else:
        out.write(f"  the controller did not pause v2 within {max_seconds:g} s\n")
    result.update(
        decisions=[d.to_json() for d in pauses],
        v2_requests=len(v2),
        v2_failed=failed,
        guarded_requests=len(guarded),
        rounds=rounds,
        config=str(config),
    )
    if analyze:
        result["report"] = _report(spans, config, directory / "report-guardrails.html", out, err)
    return result


def _report(spans: Path, config: Path, html: Path, out: TextIO, err: TextIO) -> str | None:
    try:
        from ..analysis import analyze, write_html
    except ImportError:
        err.write("(fieldlab.analysis is not installed: no scene report)\n")
        return None
    from .report import add_decisions

    try:
        result = analyze([str(spans)], config=str(config), experiments=["new-pricing"])
        add_decisions(result, str(config), sources=[str(spans)])  # with the periods before and after the pause
        write_html(result, html)
    except Exception as exc:  # the scene's counts stand on their own
        err.write(f"(scene analysis failed: {exc!r})\n")
        return None
    for note in (result.get("experiments", {}).get("new-pricing") or {}).get("notes", []):
        if note.startswith("guardrail decision"):
            out.write(f"  report: {note}\n")
    out.write(f"  scene report: {html}\n")
    return str(html)
