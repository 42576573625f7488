"""Safe output files: refuse to overwrite without force, write atomically (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from crossreg.errors import OutputExistsError, OutputWriteError


def check_outputs(paths: Iterable[str | Path | None], force: bool) -> None:
    """Raise before any work if an output exists (without ``force``) or its folder is unwritable."""
    for p in paths:
        if p is None:
            continue
        path = Path(p)
        if path.exists() and not force:
            raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
        parent = path.parent if str(path.parent) else Path(".")
        probe = parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise OutputWriteError(f"cannot write {path}: {probe} is not a directory")
        try:  # a real file, not os.access: that says yes to root on a read-only mount or /proc
            tempfile.TemporaryFile(dir=probe).close()
        except OSError as err:
            raise OutputWriteError(f"cannot write {path}: {probe} is not writable ({err.strerror})") from None


def check_suffix(path: str | Path | None, suffixes: Iterable[str], what: str) -> None:
    """Raise OutputWriteError before any work unless ``path`` (if given) ends with one of ``suffixes``."""
    if path is None:
        return
    allowed = tuple(s.lower() for s in suffixes)
    if not Path(path).name.lower().endswith(allowed):
        raise OutputWriteError(
            f"cannot write {path}: not a {what} format crossreg writes; use one of {', '.join(allowed)}"
        )


def _umask() -> int:
    """The process's umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp)`` on a temp file beside ``path`` (same suffixes), then rename it into place.

    A failure or interruption leaves no partial file at ``path``. The file gets the usual permissions
    (0666 less the umask), not the temp file's private 0600.
    """
    path = Path(path)
    suffix = "".join(path.suffixes) or ".tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    except OSError as err:
        raise OutputWriteError(f"cannot write {path}: {err.strerror}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        raise OutputWriteError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))
