"""Scoring registrations in world mm: per case and method, and summarised per case kind.

- TRE: mean over the case's landmarks of ``|T(p_fixed) - p_moving|`` (mm); the initial TRE is that of
  the identity. **A failed method** (it raised RegistrationFailed or another error, or its optimiser
  gave up) has TRE NaN: it counts as unsuccessful, is left out of the TRE statistics and is counted
  in ``n_failed``, with its message kept. Failures are not scored as the identity because an honest
  "no answer" and a wrong answer are different outcomes for a user; the success rate covers both.
- success: TRE at most :data:`SUCCESS_MM` (``crossreg.evaluate.metrics.success_rate``); on a known
  negative (``BenchCase.negative``: no transform is right) a refusal, and any transform is wrong.
- AUC: per threshold of :data:`AUC_MM`, the area under the cumulative curve of the cases' TRE up to it,
  normalised (``crossreg.evaluate.metrics.error_auc``: the mean of ``max(0, 1 - TRE / t)``), a failure
  counting as an infinite TRE. It rewards precision where success only counts: 0.5 mm scores 0.83 at
  3 mm, 2.5 mm scores 0.17. In mm, as every threshold here (on the 2 mm slices of the 2D bench,
  3/5/10 mm are 1.5/2.5/5 pixels).
- folded: for a deformable transform, the share of the fixed image's field of view where it folds
  (``crossreg.evaluate.metrics.folded_share``, det J <= 0); None for linear transforms and failures.
- precision: for methods that return matches, on cases with a true transform, the fraction of
  putative matches within :data:`PRECISION_MM` of where the truth puts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossreg.evaluate.baselines import MethodOutput
from crossreg.evaluate.cases import BenchCase
from crossreg.evaluate.metrics import error_auc, folded_share, matching_precision, success_rate
from crossreg.transform import AffineTransform

SUCCESS_MM = 3.0
PRECISION_MM = 3.0
AUC_MM = (3.0, 5.0, 10.0)


@dataclass(frozen=True)
class CaseResult:
    """One method on one case. tre_mm is NaN (and failed holds the reason) when no transform came back."""

    case: str
    kind: str
    method: str
    initial_tre_mm: float
    tre_mm: float
    max_tre_mm: float
    success: bool
    precision: float | None
    n_matches: int | None
    seconds: float
    failed: str | None = None
    folded: float | None = None


@dataclass(frozen=True)
class KindSummary:
    """One method over the cases of one kind (``all``: over every case). TRE statistics (mm) are over
    the cases the method returned a transform for; NaN if it returned none."""

    kind: str
    method: str
    n_cases: int
    n_failed: int
    initial_mean_mm: float
    mean_mm: float
    median_mm: float
    p90_mm: float
    success_rate: float
    precision: float | None
    median_seconds: float
    folded: float | None = None  # mean share over the cases with a deformable transform
    n_wrong: int = 0  # transforms returned with a TRE above SUCCESS_MM, or for a known negative
    auc: tuple[float, ...] = ()  # area under the cumulative TRE curve up to each of AUC_MM, 0-1


@dataclass(frozen=True)
class BenchReport:
    """Everything a benchmark run measured, and where it was written."""

    results: tuple[CaseResult, ...]
    summaries: tuple[KindSummary, ...]
    skipped: dict[str, str]
    machine: dict[str, str]
    command: str
    files: tuple[Path, ...] = field(default=())

    def failures(self) -> dict[str, list[tuple[str, str]]]:
        """Per method, the ``(case, message)`` of each failed run."""
        out: dict[str, list[tuple[str, str]]] = {}
        for r in self.results:
            if r.failed is not None:
                out.setdefault(r.method, []).append((r.case, r.failed))
        return out


def score(case: BenchCase, method: str, output: MethodOutput) -> CaseResult:
    """The CaseResult of ``output`` on ``case`` (see the module docstring for the definitions)."""
    initial = float(case.landmark_errors_mm(AffineTransform.identity(case.ndim)).mean())
    precision, n_matches = None, None
    if output.matches is not None:
        n_matches = len(output.matches[0])
        if case.true_transform is not None:
            precision = matching_precision(*output.matches, case.true_transform, PRECISION_MM)
    if output.transform is None:
        tre = max_tre = float("nan")
    else:
        errors = case.landmark_errors_mm(output.transform)
        tre, max_tre = float(errors.mean()), float(errors.max())
    failed = (output.failed or "no transform") if output.transform is None else None
    ok = output.transform is None if case.negative else success_rate(np.array([tre]), SUCCESS_MM) == 1.0
    folded = None
    if output.transform is not None and not isinstance(output.transform, AffineTransform):
        folded = folded_share(output.transform, case.fixed)
    return CaseResult(
        case.name,
        case.kind,
        method,
        initial,
        tre,
        max_tre,
        ok,
        precision,
        n_matches,
        output.seconds,
        failed,
        folded,
    )


def summarize(results: Sequence[CaseResult]) -> list[KindSummary]:
    """Per (kind, method) summaries in order of appearance, plus kind ``all`` when there are several kinds."""
    kinds = list(dict.fromkeys(r.kind for r in results))
    methods = list(dict.fromkeys(r.method for r in results))
    groups = [(k, [r for r in results if r.kind == k]) for k in kinds]
    if len(kinds) > 1:
        groups.append(("all", list(results)))
    summaries = []
    for kind, rows in groups:
        for method in methods:
            mine = [r for r in rows if r.method == method]
            if mine:
                summaries.append(_summary(kind, method, mine))
    return summaries


def _summary(kind: str, method: str, rows: list[CaseResult]) -> KindSummary:
    tre = np.array([r.tre_mm for r in rows])
    done = tre[np.isfinite(tre)]
    stats = (
        (float(done.mean()), float(np.median(done)), float(np.percentile(done, 90)))
        if done.size
        else (np.nan,) * 3
    )
    precisions = [r.precision for r in rows if r.precision is not None]
    seconds = np.array([r.seconds for r in rows])
    folded = [r.folded for r in rows if r.folded is not None]
    return KindSummary(
        kind=kind,
        method=method,
        n_cases=len(rows),
        n_failed=sum(r.failed is not None for r in rows),
        initial_mean_mm=float(np.mean([r.initial_tre_mm for r in rows])),
        mean_mm=stats[0],
        median_mm=stats[1],
        p90_mm=stats[2],
        success_rate=float(np.mean([r.success for r in rows])),
        precision=float(np.mean(precisions)) if precisions else None,
        median_seconds=float(np.nanmedian(seconds)) if np.isfinite(seconds).any() else float("nan"),
        folded=float(np.mean(folded)) if folded else None,
        n_wrong=sum(r.failed is None and not r.success for r in rows),
        auc=tuple(error_auc(tre, t) for t in AUC_MM),
    )
