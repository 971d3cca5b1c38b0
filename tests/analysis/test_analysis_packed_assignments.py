"""Variants that a span's attribute limit kept off the span are read from ``fieldlab.assignments``, by both engines.

When a request has more assignments than a span has room for, telemetry
leaves some ``fieldlab.variant.<key>`` attributes out and packs every variant
into the one ``fieldlab.assignments`` attribute (see fieldlab.telemetry); the
analysis must count those requests exactly as if the variants had been written.
"""

from __future__ import annotations

from analysis_helpers import Req, make_requests, write_otlp
from test_analysis_sources import assert_same

from fieldlab import attributes as A
from fieldlab.analysis.sources import FileSource, QuerySpec

ODD = "a;b=c%3D%"  # a variant name with every character the packing escapes


def _packed(reqs: list[Req]) -> list[Req]:
    """The same requests as telemetry writes them over the limit: the variant only in the packed attribute."""
    out = []
    for r in reqs:
        attrs = dict(r["attrs"])
        variant = attrs.pop(A.variant_attr("checkout"))
        attrs[A.ASSIGNMENTS] = A.pack_assignments({"left-out": ODD, "checkout": variant})
        out.append(Req(r, attrs=attrs))
    return out


def test_variants_left_out_for_the_span_attribute_limit_are_read_from_the_packed_attribute(tmp_path) -> None:
    reqs = make_requests(300, experiment="checkout", exposed_share=0.7, forced_share=0.05, seed=5)
    spec = QuerySpec()
    reference = FileSource(write_otlp(str(tmp_path / "full.jsonl"), reqs), engine="python").aggregate(spec)
    packed_file = write_otlp(str(tmp_path / "packed.jsonl"), _packed(reqs))
    for engine in ("chdb", "python"):
        agg = FileSource(packed_file, engine=engine).aggregate(spec)
        assert set(agg.experiments) == {"checkout", "left-out"}, engine
        assert list(agg.experiments["left-out"].variants) == [ODD], engine
        assert agg.experiments["left-out"].variants[ODD].requests.sum() == len(reqs), engine
        del agg.experiments["left-out"]
        assert_same(agg, reference)


def test_an_individual_variant_attribute_wins_over_the_packed_one(tmp_path) -> None:
    reqs = make_requests(50, experiment="checkout", seed=9)
    for r in reqs:  # a packed value that disagrees: never happens in fieldlab's output, but must not win
        r["attrs"][A.ASSIGNMENTS] = A.pack_assignments({"checkout": "stale"})
    reference = FileSource(
        write_otlp(str(tmp_path / "full.jsonl"), make_requests(50, experiment="checkout", seed=9)), engine="python"
    ).aggregate(QuerySpec())
    path = write_otlp(str(tmp_path / "both.jsonl"), reqs)
    for engine in ("chdb", "python"):
        assert_same(FileSource(path, engine=engine).aggregate(QuerySpec()), reference)


def test_pack_and_unpack_round_trip_any_variant_name() -> None:
    variants = {"exp-a": ODD, "exp_b": "treatment", "c": "", "d": "ü 100%"}
    assert A.unpack_assignments(A.pack_assignments(variants)) == variants
    assert A.unpack_assignments("x=1;;=bad;noequals;y=2") == {"x": "1", "y": "2"}
