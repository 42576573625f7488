"""The ``crossreg`` command line: register, match, demo, landmarks, track, synth, bench, batch, train.

Exit codes: 0 success; 1 unexpected internal error; 2 bad input or output (one line on stderr);
3 registration failed (too few consistent matches); 130 interrupted. No partial output is left behind.
"""

from crossreg.cli import batch, bench, landmarks, match, register, synth, train  # noqa: F401  (each adds its commands to app)
from crossreg.cli.app import app


def main() -> None:
    """Entry point of the ``crossreg`` script."""
    app(prog_name="crossreg")


__all__ = ["app", "main"]
