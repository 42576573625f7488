"""Measuring registration: accuracy metrics in world mm (and, later, benchmark cases and tables)."""

from crossreg.evaluate.metrics import (
    TreSummary,
    error_auc,
    matching_precision,
    success_rate,
    summarize_tre,
    tre_mm,
)

__all__ = ["TreSummary", "error_auc", "matching_precision", "success_rate", "summarize_tre", "tre_mm"]
