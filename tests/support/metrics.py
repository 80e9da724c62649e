"""Prometheus naming conventions, checked on families parsed by prometheus_client's own text parser."""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Names that carry a unit must use the base unit (https://prometheus.io/docs/practices/naming/).
_NOT_BASE_UNITS = ("_milliseconds", "_ms", "_microseconds", "_minutes", "_hours", "_kilobytes", "_megabytes", "_kb")


def check_conventions(families: Iterable[Metric], prefix: str) -> None:
    """Every family: our prefix, snake case, help text, base units; counters end in _total."""
    seen = 0
    for family in families:
        if not family.name.startswith(prefix):
            continue  # process and platform collectors follow their own
        seen += 1
        assert _NAME.match(family.name), family.name
        assert family.documentation.strip(), f"{family.name} has no help text"
        assert not any(family.name.endswith(u) or u + "_" in family.name for u in _NOT_BASE_UNITS), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        else:
            assert not family.name.endswith("_total"), f"{family.name} is a {family.type} named like a counter"
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_bytes")), f"{family.name}: a histogram says its unit"
    assert seen, f"no metric named {prefix}..."
