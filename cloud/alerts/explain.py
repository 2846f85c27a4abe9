"""An alert's reason in the stream's own units, whatever the detector managed to say.

Detectors write evidence with the placeholder `{unit}` (they do not know units); the pipeline
puts the series' unit in with `in_units` before the alert is stored or published. A detector
that gives no evidence (river's, or any verdict without one) still yields a reason, filled in by
the episode machine: where the value sits against the range the detector expected, or, when it
sits inside, that only the score flags it. So no alert shows a value inside its own expected
range without a word about why.
"""

from __future__ import annotations

from typing import Final

UNIT: Final = "{unit}"


def in_units(evidence: str, unit: str) -> str:
    """Replace the `{unit}` placeholder (str.replace, not format: evidence may hold braces).

    >>> in_units("value 239 {unit}, above 8.4 {unit}", "W")
    'value 239 W, above 8.4 W'
    >>> in_units("value 239 {unit}", "")
    'value 239'
    """
    if unit:
        return evidence.replace(UNIT, unit)
    return evidence.replace(" " + UNIT, "").replace(UNIT, "")


def _num(value: float) -> str:
    return f"{value:.4g}"


def fallback_evidence(value: float, low: float | None, high: float | None, score: float) -> str:
    """A reason from the verdict's own numbers, for a detector that gave none (`{unit}` kept).

    The score is said as "(0.61, 0.5 is anomalous)" (shortened to "..." below).

    >>> fallback_evidence(239.0, 5.0, 11.0, 0.97)
    'value 239 {unit}, above the expected 5..11 {unit}'
    >>> fallback_evidence(7.0, 5.0, 11.0, 0.61).partition(": ")[::2]
    ('value 7 {unit}, inside the expected 5..11 {unit}', "only the detector's score (0.61, ...) flags it")
    """
    shown = f"value {_num(value)} {UNIT}"
    if low is None or high is None:
        return f"{shown}: only the detector's score ({score:.2f}, 0.5 is anomalous) flags it"
    expected = f"the expected {_num(low)}..{_num(high)} {UNIT}"
    if value > high:
        return f"{shown}, above {expected}"
    if value < low:
        return f"{shown}, below {expected}"
    return f"{shown}, inside {expected}: only the detector's score ({score:.2f}, 0.5 is anomalous) flags it"
