"""``python -m crossreg``: the command line without the installed script."""

from crossreg.cli import main

main()
