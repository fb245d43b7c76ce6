"""The conformance report: every check with its verdict and evidence, and the figures.

Pure: builds records and renders them; nothing here observes anything. A check is ``pass``
only when a caller recorded the observation that proves it; ``skip`` says why it could not be
observed (the simulated GPU has no processes, say), and never counts as a pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    """One claim about dpd and the trainer, and what was seen that decides it."""

    name: str
    verdict: Verdict
    summary: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def decide(cls, name: str, ok: bool, summary: str, **evidence: Any) -> Check:
        return cls(name, Verdict.PASS if ok else Verdict.FAIL, summary, evidence)

    @classmethod
    def skipped(cls, name: str, reason: str, **evidence: Any) -> Check:
        return cls(name, Verdict.SKIP, reason, evidence)


@dataclass(frozen=True)
class Figure:
    """A measured number; ``value`` None means it could not be measured (``note`` says why)."""

    name: str
    value: float | None
    unit: str
    note: str = ""


@dataclass
class Report:
    mode: str  # "gpu" or "simulate"
    environment: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def figure(self, name: str, value: float | None, unit: str, note: str = "") -> None:
        self.figures.append(Figure(name, value, unit, note))

    @property
    def passed(self) -> bool:
        """True only when there are checks, none failed, and (on a GPU) none was skipped."""
        if not self.checks:
            return False
        verdicts = {c.verdict for c in self.checks}
        if Verdict.FAIL in verdicts:
            return False
        return self.mode != "gpu" or Verdict.SKIP not in verdicts

    def counts(self) -> dict[str, int]:
        return {v.value: sum(1 for c in self.checks if c.verdict is v) for v in Verdict}

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "passed": self.passed,
            "counts": self.counts(),
            "environment": self.environment,
            "checks": [
                {**asdict(c), "verdict": c.verdict.value, "evidence": dict(c.evidence)}
                for c in self.checks
            ],
            "figures": [asdict(f) for f in self.figures],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"


def render_table(report: Report) -> str:
    """A plain-text table of the checks, then the figures, then the overall verdict."""
    rows = [(c.verdict.value.upper(), c.name, c.summary) for c in report.checks]
    lines = [f"dpd conformance ({report.mode})", ""]
    lines += _columns(("RESULT", "CHECK", "WHAT WAS SEEN"), rows)
    lines.append("")
    figure_rows = [(f.name, _number(f.value, f.unit), f.note) for f in report.figures]
    lines += _columns(("FIGURE", "VALUE", "NOTE"), figure_rows)
    counts = report.counts()
    verdict = "PASSED" if report.passed else "NOT PASSED"
    lines.append("")
    lines.append(
        f"{verdict}: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
    )
    return "\n".join(lines) + "\n"


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} {unit}".rstrip()


def _columns(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    out = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.append("  ".join([*cells, row[-1]]).rstrip())
    return out
