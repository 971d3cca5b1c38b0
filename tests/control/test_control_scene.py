"""The demo's guardrail scene: a variant goes bad under load, the controller pauses it, terminal and report say so."""

from __future__ import annotations

import io
from pathlib import Path

from fieldlab.cli import build_parser
from fieldlab.control.scene import run_scene
from fieldlab.demo import find_examples


def test_the_scene_pauses_the_failing_variant_and_shows_it_in_the_terminal_and_the_report(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    result = run_scene("flask", find_examples(), tmp_path, out=out, err=err)
    text = out.getvalue()
    assert "PAUSED new-pricing/v2 (guardrail)" in text, text + err.getvalue()
    assert [(d["action"], d["variant"], d["cause"]) for d in result["decisions"]] == [("pause", "v2", "guardrail")]
    assert result["v2_failed"] > 0 and result["guarded_requests"] > 0  # it failed, then its users got control
    html = Path(result["report"]).read_text()
    assert "guardrail decision" in html and "paused new-pricing/v2 (guardrail" in html


def test_the_scene_is_on_by_default_and_can_be_skipped() -> None:
    assert build_parser().parse_args(["demo"]).no_guardrails is False
    assert build_parser().parse_args(["demo", "--no-guardrails"]).no_guardrails is True
