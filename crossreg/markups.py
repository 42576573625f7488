"""Point correspondences and landmarks on disk: match CSV files, landmark CSV files, Slicer markups.

Every coordinate in these files is a world position in millimetres in the LPS patient frame (ITK's and
DICOM's: +x towards the patient's Left, +y Posterior, +z Superior), the frame of ``Image`` world
points. 2D images use the first two axes (x, y).

Match CSV columns (one row per putative match; 2D files have no ``*_z`` columns)::

    id, fixed_x, fixed_y, fixed_z, moving_x, moving_y, moving_z, inlier, confidence

``inlier`` is 1 or 0 (consistent with the transform RANSAC found); ``confidence`` is the matcher's
confidence in the match, in [0, 1], empty when unknown (landmarks, hand-made correspondences). CSV
has no comment syntax, so the frame is stated here and in the README, not in the file.

Slicer markups (``.mrk.json``) are written with ``"coordinateSystem": "LPS"`` and read in either
frame; RAS files are converted to LPS (x and y negated).

Points tables (``crossreg landmarks`` and ``crossreg track``) are CSV files whose header names the
coordinate columns ``x, y[, z]`` and any others (``label``, ``radius``, ...), or Slicer markups files;
:func:`write_points_table` writes the rows back with found coordinates and :data:`RESULT_COLUMNS`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crossreg.errors import CrossregError
from crossreg.outputs import atomic_write_text

if TYPE_CHECKING:
    from crossreg.locate import Located

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
    "Schema/markups-schema-v1.0.3.json#"
)
# Slicer's default control point orientation (identity in RAS) expressed in LPS.
_LPS_ORIENTATION = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]
_AXES = ("x", "y", "z")
_UNIT_MM = {"mm": 1.0, "um": 1e-3}
Rows = list[tuple[int, list[str]]]  # (line number, cells) of the data rows of a CSV file
#: Columns :func:`write_points_table` adds after a points table's own (replacing any of the same name).
RESULT_COLUMNS = ("score", "reliable", "round_trip_mm")
#: File name endings of the points tables :func:`write_points_table` writes.
POINTS_SUFFIXES = (".csv", ".mrk.json")


def _match_columns(ndim: int) -> list[str]:
    return [
        "id",
        *(f"fixed_{a}" for a in _AXES[:ndim]),
        *(f"moving_{a}" for a in _AXES[:ndim]),
        "inlier",
        "confidence",
    ]


def _points(points_mm: np.ndarray, name: str) -> np.ndarray:
    pts = np.asarray(points_mm, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"{name} must be (N, 2) or (N, 3); got shape {pts.shape}")
    return pts


def write_matches_csv(
    path: str | Path,
    fixed_mm: np.ndarray,
    moving_mm: np.ndarray,
    inlier: np.ndarray,
    confidence: np.ndarray | None = None,
) -> None:
    """Write matches to a CSV file atomically (columns in the module docstring; world mm, LPS).

    fixed_mm, moving_mm: ``(N, d)``, d = 2 or 3; inlier: ``(N,)`` bool; confidence: ``(N,)`` or None.
    Values are written with full float precision, so reading gives back the same numbers.
    """
    fixed, moving = _points(fixed_mm, "fixed_mm"), _points(moving_mm, "moving_mm")
    inl = np.asarray(inlier, dtype=bool).reshape(-1)
    conf = None if confidence is None else np.asarray(confidence, dtype=np.float64).reshape(-1)
    n = len(fixed)
    if moving.shape != fixed.shape or len(inl) != n or (conf is not None and len(conf) != n):
        raise ValueError(
            f"matches disagree in shape: fixed {fixed.shape}, moving {moving.shape}, inlier {inl.shape}"
            + ("" if conf is None else f", confidence {conf.shape}")
        )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_match_columns(fixed.shape[1]))
    for i in range(n):
        c = "" if conf is None else repr(float(conf[i]))
        coords = [repr(float(v)) for v in (*fixed[i], *moving[i])]
        writer.writerow([i, *coords, int(inl[i]), c])
    atomic_write_text(path, buf.getvalue())


def read_matches_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a match CSV file: ``fixed_mm (N, d)``, ``moving_mm (N, d)`` in world mm LPS, ``inlier (N,)``.

    ``d`` is 3 when the file has ``fixed_z``, else 2. Without an ``inlier`` column every match counts
    as an inlier (hand-made correspondences). Raises CrossregError for malformed files.
    """
    header, rows, _ = _read_table(path)
    if header is None:
        raise CrossregError(f"{path}: no header row; expected columns {','.join(_match_columns(3))}")
    ndim = 3 if "fixed_z" in header else 2
    names = [f"{side}_{a}" for side in ("fixed", "moving") for a in _AXES[:ndim]]
    missing = [c for c in names if c not in header]
    if missing:
        raise CrossregError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(_match_columns(ndim))}"
        )
    values = _numeric(path, rows, [header.index(c) for c in names], names)
    if "inlier" in header:
        inlier = np.array([_flag(path, line, row[header.index("inlier")]) for line, row in rows], bool)
    else:
        inlier = np.ones(len(rows), bool)
    return values[:, :ndim], values[:, ndim:], inlier


def read_landmarks_csv(path: str | Path) -> np.ndarray:
    """Read landmark points ``(N, d)`` in world mm LPS from a CSV file; d = 2 or 3.

    Accepted layouts: a header naming columns ``x, y[, z]`` (other columns, e.g. ``label`` or ``id``,
    are ignored); or no header, with rows ``x,y[,z]`` or ``label,x,y[,z]``. Without a header, three
    numeric columns are read as ``x,y,z`` and four as ``id,x,y,z``. Slicer ``.fcsv`` files are read
    too, with their ``CoordinateSystem`` (RAS files are converted to LPS).
    """
    header, rows, system = _read_table(path)
    cols = _axis_columns(path, header) if header is not None else _headerless_columns(path, rows)
    points = _numeric(path, rows, cols, list(_AXES[: len(cols)]))
    return _lps(path, points, system)


def _axis_columns(path: str | Path, header: list[str]) -> list[int]:
    """Where the header names ``x, y[, z]``."""
    names = [a for a in _AXES if a in header]
    if names not in (["x", "y"], ["x", "y", "z"]):
        raise CrossregError(f"{path}: header has no x,y[,z] columns (found {','.join(header)})")
    return [header.index(a) for a in names]


def _read_table(path: str | Path) -> tuple[list[str] | None, Rows, str]:
    """Header (lower-case, or None), the data rows with their line numbers, and the coordinate system."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # spreadsheets often start CSV with a BOM
    except (OSError, UnicodeDecodeError) as err:
        raise CrossregError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    header, system, rows = None, "LPS", []
    for line, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if cells[0].startswith("#"):
            header, system = _fcsv_comment(",".join(row), header, system)
        elif header is None and not rows and not any(_is_number(c) for c in cells):
            header = [c.lower() for c in cells]
        else:
            rows.append((line, cells))
    if not rows:
        raise CrossregError(f"{path}: no data rows")
    return header, rows, system


def _fcsv_comment(comment: str, header: list[str] | None, system: str) -> tuple[list[str] | None, str]:
    """Slicer .fcsv comment lines carry the column names and the coordinate system."""
    key, _, value = comment.lstrip("#").partition("=")
    key, value = key.strip().lower(), value.strip()
    if key == "columns":
        return [c.strip().lower() for c in value.split(",")], system
    if key == "coordinatesystem":
        return header, {"0": "RAS", "1": "LPS"}.get(value, value.upper())
    return header, system


def _headerless_columns(path: str | Path, rows: Rows) -> list[int]:
    line, first = rows[0]
    width = len(first)
    numeric_first = _is_number(first[0])
    if width == 4 or (not numeric_first and width in (3, 4)):
        return list(range(1, width))
    if numeric_first and width in (2, 3):
        return list(range(width))
    raise CrossregError(
        f"{path} line {line}: {width} columns without a header; expected x,y[,z] or label,x,y[,z] "
        "(or add a header row naming the x, y, z columns)"
    )


def _numeric(path: str | Path, rows: Rows, cols: list[int], names: list[str]) -> np.ndarray:
    """``(N, len(cols))`` floats from the given columns, with an error naming the bad cell."""
    out = np.empty((len(rows), len(cols)))
    for i, (line, row) in enumerate(rows):
        if len(row) <= max(cols):
            raise CrossregError(f"{path} line {line}: {len(row)} values, expected at least {max(cols) + 1}")
        for j, (c, name) in enumerate(zip(cols, names, strict=True)):
            if not _is_number(row[c]):
                raise CrossregError(f"{path} line {line}: {name}={row[c]!r} is not a number")
            out[i, j] = float(row[c])
    if not np.all(np.isfinite(out)):
        raise CrossregError(f"{path}: coordinates must be finite (found NaN or Inf)")
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_coordinate(value: object) -> bool:
    """A JSON number that is a finite float (JSON's NaN/Infinity extensions and huge integers are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _flag(path: str | Path, line: int, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise CrossregError(f"{path} line {line}: inlier={text!r}; expected 1/0 or true/false")


def _lps(path: str | Path, points: np.ndarray, system: str) -> np.ndarray:
    """``points`` ``(N, d)`` given in ``system`` (LPS or RAS), in LPS."""
    if system not in ("LPS", "RAS"):
        raise CrossregError(f"{path}: coordinate system {system!r}; expected LPS or RAS")
    if system == "RAS":
        points = points.copy()
        points[:, :2] *= -1.0
    return points


def write_markups_json(
    path: str | Path,
    points_mm: np.ndarray,
    labels: list[str],
    name: str,
    descriptions: list[str] | None = None,
    selected: np.ndarray | None = None,
) -> None:
    """Write a 3D Slicer fiducial list (``.mrk.json``, markups schema v1.0.3) atomically, in LPS.

    points_mm: ``(N, 3)`` or ``(N, 2)`` world mm LPS (2D points get z = 0); labels: N strings;
    descriptions: N strings (default empty); selected: ``(N,)`` bool (default all selected).
    """
    pts = _points(points_mm, "points_mm")
    descriptions = [""] * len(pts) if descriptions is None else descriptions
    selected = np.ones(len(pts), bool) if selected is None else np.asarray(selected, bool)
    if not len(labels) == len(descriptions) == len(selected) == len(pts):
        raise ValueError(
            f"{len(labels)} labels, {len(descriptions)} descriptions, {len(selected)} selected flags "
            f"for {len(pts)} points"
        )
    if pts.shape[1] == 2:
        pts = np.column_stack([pts, np.zeros(len(pts))])
    control_points = [
        {
            "id": str(i + 1),
            "label": str(label),
            "description": text,
            "associatedNodeID": "",
            "position": [float(v) for v in p],
            "orientation": list(_LPS_ORIENTATION),
            "selected": bool(chosen),
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for i, (p, label, text, chosen) in enumerate(zip(pts, labels, descriptions, selected, strict=True))
    ]
    markup = {
        "type": "Fiducial",
        "name": name,
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(pts),
        "controlPoints": control_points,
        "measurements": [],
        "display": {"visibility": True, "opacity": 1.0, "pointLabelsVisibility": True},
    }
    doc = {"@schema": MARKUPS_SCHEMA, "markups": [markup]}
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def read_markups_json(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read the control points of a Slicer ``.mrk.json`` file: ``points_mm (N, 3)`` in LPS, and labels.

    Control points of all markups in the file are returned in order; RAS files are converted to LPS
    and micrometre files to mm. A point without a defined position raises CrossregError (dropping it
    would silently mis-pair landmark lists).
    """
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as err:
        raise CrossregError(f"cannot read {path}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CrossregError(f"{path}: not a JSON file ({err})") from None
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list):
        raise CrossregError(f"{path}: no 'markups' list; not a Slicer markups (.mrk.json) file")
    points, labels = [], []
    for markup in markups:
        pts, labs = _markup_points(path, markup)
        points.append(pts)
        labels.extend(labs)
    if not labels:
        raise CrossregError(f"{path}: the file holds no control points")
    return np.concatenate(points), labels


def _markup_points(path: str | Path, markup: dict) -> tuple[np.ndarray, list[str]]:
    """``(n, 3)`` LPS mm points and labels of one markup."""
    if not isinstance(markup, dict) or not isinstance(markup.get("controlPoints", []), list):
        raise CrossregError(f"{path}: a markup is not an object with a 'controlPoints' list")
    units = markup.get("coordinateUnits", "mm")
    unit = str(units[0] if isinstance(units, list) and units else units)
    if unit not in _UNIT_MM:
        raise CrossregError(f"{path}: coordinateUnits {units!r}; expected mm or um")
    points, labels = [], []
    for i, cp in enumerate(markup.get("controlPoints", [])):
        cp = cp if isinstance(cp, dict) else {}
        label = str(cp.get("label", i + 1))
        pos = cp.get("position")
        defined = cp.get("positionStatus", "defined") == "defined" and isinstance(pos, list)
        if not defined or len(pos) != 3 or not all(_is_coordinate(v) for v in pos):
            raise CrossregError(f"{path}: control point {label!r} has no defined, finite 3-value position")
        points.append([float(v) for v in pos])
        labels.append(label)
    pts = np.array(points, float).reshape(-1, 3) * _UNIT_MM[unit]
    return _lps(path, pts, markup.get("coordinateSystem", "LPS")), labels


@dataclass(frozen=True, eq=False)
class PointsTable:
    """A points file as read: every row's cells (text, in the header's order) and its point.

    columns: the header, lower case (a Slicer markups file reads as ``label, x, y, z``); rows: one
    cell per column; axes: the columns holding ``x, y[, z]``; points_mm: ``(N, d)`` world mm, LPS.
    """

    path: Path
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    axes: tuple[int, ...]
    points_mm: np.ndarray

    @property
    def labels(self) -> list[str]:
        """Each row's ``label`` cell, or its number (from 1) without a label column."""
        if "label" not in self.columns:
            return [str(i + 1) for i in range(len(self.rows))]
        k = self.columns.index("label")
        return [row[k] for row in self.rows]

    def numbers(self, column: str) -> np.ndarray | None:
        """``(N,)`` the cells of ``column`` as numbers (NaN where empty), or None without that column;
        CrossregError for a cell that is not a number."""
        if column not in self.columns:
            return None
        k = self.columns.index(column)
        values = []
        for number, row in enumerate(self.rows, start=1):
            try:
                values.append(float(row[k]) if row[k].strip() else np.nan)
            except ValueError:
                raise CrossregError(
                    f"{self.path} row {number}: {column}={row[k]!r} is not a number"
                ) from None
        return np.array(values)

    def points_for(self, ndim: int) -> np.ndarray:
        """The points ``(N, ndim)`` for an ``ndim``-D image; CrossregError if they have another
        dimension. Slicer points are 3D: for a 2D image they need z = 0 (as 2D points are written)."""
        d = self.points_mm.shape[1]
        if d == ndim:
            return self.points_mm
        if ndim == 2 and _is_markups(self.path) and not self.points_mm[:, 2].any():
            return self.points_mm[:, :2]
        wanted = "x,y,z columns" if ndim == 3 else "x,y columns (Slicer points: z = 0)"
        raise CrossregError(f"{self.path}: {d}D points but the image is {ndim}D; give {wanted}")


def _is_markups(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(".mrk.json")


def read_points_table(path: str | Path) -> PointsTable:
    """Read points and the rest of their rows: a CSV file whose header row names the coordinate
    columns ``x, y[, z]`` (world mm, LPS) among any others, or a Slicer ``.mrk.json`` file (labels and
    positions). Raises CrossregError for a missing or malformed file, naming the cause."""
    path = Path(path)
    if _is_markups(path):
        points, labels = read_markups_json(path)
        rows = tuple((label, *(repr(float(v)) for v in p)) for label, p in zip(labels, points, strict=True))
        return PointsTable(path, ("label", *_AXES), rows, (1, 2, 3), points)
    header, rows, system = _read_table(path)
    if header is None:
        raise CrossregError(f"{path}: no header row; the first row must name the columns, e.g. label,x,y,z")
    axes = _axis_columns(path, header)
    points = _lps(path, _numeric(path, rows, axes, list(_AXES[: len(axes)])), system)
    cells = tuple(_row_cells(path, line, row, len(header)) for line, row in rows)
    return PointsTable(path, tuple(header), cells, tuple(axes), points)


def _row_cells(path: str | Path, line: int, row: list[str], width: int) -> tuple[str, ...]:
    """The row as ``width`` cells (short rows padded with empty cells)."""
    if any(row[width:]):
        raise CrossregError(f"{path} line {line}: {len(row)} values but the header names {width} columns")
    return tuple(row[:width]) + ("",) * (width - len(row))


def write_points_table(path: str | Path, table: PointsTable, found: Located) -> None:
    """Write ``table``'s rows with their points replaced by the ``found`` ones and :data:`RESULT_COLUMNS`
    added (score to 3 decimals, reliable ``true``/``false``, round_trip_mm to 2), atomically: CSV, or
    for a ``.mrk.json`` path a Slicer markups file whose control points keep their labels, carry the
    other cells in their description and are selected only where reliable."""
    columns, rows = _result_rows(table, found)
    if not _is_markups(path):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([columns, *rows])
        atomic_write_text(path, buf.getvalue())
        return
    shown = [k for k, c in enumerate(columns) if c not in ("label", *_AXES)]
    descriptions = [", ".join(f"{columns[k]}={row[k]}" for k in shown) for row in rows]
    name = Path(path).name[: -len(".mrk.json")]
    write_markups_json(path, found.points_mm, table.labels, name, descriptions, found.reliable)


def _result_rows(table: PointsTable, found: Located) -> tuple[list[str], list[list[str]]]:
    """Output header and rows: the table's columns (minus old result columns) with the found
    coordinates, then :data:`RESULT_COLUMNS`."""
    keep = [k for k, c in enumerate(table.columns) if c not in RESULT_COLUMNS]
    points = np.zeros((len(table.rows), len(table.axes)))  # 2D points from a Slicer file keep z = 0
    points[:, : found.points_mm.shape[1]] = found.points_mm
    rows = []
    for row, p, score, reliable, trip in zip(
        table.rows, points, found.score, found.reliable, found.round_trip_mm, strict=True
    ):
        cells = list(row)
        for k, v in zip(table.axes, p, strict=True):
            cells[k] = repr(float(v))
        rows.append([*(cells[k] for k in keep), f"{score:.3f}", str(bool(reliable)).lower(), f"{trip:.2f}"])
    return [*(table.columns[k] for k in keep), *RESULT_COLUMNS], rows
