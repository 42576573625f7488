"""Generated sections of a markdown file: text between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->``."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` between the ``name`` markers of ``path`` (which must already hold them)."""
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path}: no {begin} ... {end} markers to write the section between")
    head, rest = doc.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text.strip()}\n{end}{rest.split(end, 1)[1]}")
