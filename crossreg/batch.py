"""Cohort registration on Dask: every pair of a CSV, one output folder per pair, resumable.

PAIRS.csv has a header row. Columns: ``fixed``, ``moving`` (image paths), and optionally ``id`` (the
pair's output folder name; the row number ``0001``, ``0002``, ... without it), ``landmarks`` (a CSV of
``fixed_x,fixed_y[,fixed_z],moving_x,...`` rows in world mm, LPS, e.g. what ``crossreg synth pair``
writes: the pair's target registration error is then recorded), and per-row options ``model``
(rigid/similarity/affine; homography for 2D pairs), ``features`` (mind/crosskey), ``matching``
(auto/sparse/dense, as ``crossreg register --matching``), ``weights`` (a CrossKEY model file),
``refine`` (true/false), ``deformable`` (true/false: the deformable stage after the linear one),
``seed`` (an integer). Empty cells take the defaults. Relative paths are
relative to the CSV's folder.

Each pair writes ``out_dir/<id>/``: ``transform.tfm`` (fixed -> moving; a homography:
``transform.json`` and ``transform_field.nii.gz``; deformable: ``transform.h5`` and
``transform_field.nii.gz``), ``matches.csv`` with Slicer
markups, ``qa.png``, and last, atomically, ``done.json``: the record and the inputs it was made from.
A later run skips a pair whose ``done.json`` is valid for the same inputs and redoes any other (a
failed pair, a half-written folder, a changed row). ``out_dir/summary.csv`` and ``summary.json`` hold
one record per pair and are rewritten as results arrive. Workers read the paths as written, so on a
remote cluster they must see the same file system.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from crossreg.config import MATCHING
from crossreg.errors import CrossregError
from crossreg.estimate import MODELS
from crossreg.features import FEATURES
from crossreg.outputs import atomic_write_text
from crossreg.result_files import transform_files
from crossreg.transform import Model

log = logging.getLogger(__name__)

Status = Literal["ok", "failed", "skipped"]
OPTION_COLUMNS = ("model", "features", "matching", "weights", "refine", "deformable", "seed")
COLUMNS = ("id", "fixed", "moving", "landmarks", *OPTION_COLUMNS)
_CHOICES = {"model": MODELS, "features": tuple(FEATURES), "matching": MATCHING}
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
DONE = "done.json"


@dataclass(frozen=True)
class Pair:
    """One row of PAIRS.csv: what to register, where to write it, with which options."""

    id: str
    fixed: Path
    moving: Path
    landmarks: Path | None = None
    model: Model = "rigid"
    features: str = "mind"  # a kind of crossreg.features.FEATURES
    matching: str = "auto"  # crossreg.config.MATCHING
    weights: Path | None = None
    refine: bool = True
    deformable: bool = False
    seed: int = 0

    def as_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PairRecord:
    """What became of one pair. tre_*_mm: ``|T(p_fixed) - p_moving|`` over its landmarks, if any."""

    id: str
    status: Status
    seconds: float
    confidence: float | None = None
    n_inliers: int | None = None
    n_matches: int | None = None
    tre_mean_mm: float | None = None
    tre_max_mm: float | None = None
    error: str = ""


@dataclass(frozen=True)
class BatchConfig:
    """How to run a batch.

    scheduler: a Dask scheduler address (``tcp://host:8786``, e.g. of a dask-jobqueue or Kubernetes
    cluster); None starts a local cluster of ``n_workers`` single-threaded worker processes (one per
    core if None), each limited to ``memory_limit`` (``"4GB"``; ``"auto"``: total memory / workers).
    force: redo pairs that are already done.
    """

    out_dir: Path
    scheduler: str | None = None
    n_workers: int | None = None
    memory_limit: str = "auto"
    device: str = "cpu"
    force: bool = False


# ---------------------------------------------------------------- the pairs file


def read_pairs(csv_path: str | Path) -> list[Pair]:
    """The pairs of ``csv_path`` (format in the module docstring); CrossregError naming the bad row."""
    path = Path(csv_path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise CrossregError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [c.strip() for c in reader.fieldnames or []]
    unknown = [c for c in header if c not in COLUMNS]
    missing = [c for c in ("fixed", "moving") if c not in header]
    if unknown or missing:
        problem = (
            f"unknown column(s) {', '.join(unknown)}" if unknown else f"no {' or '.join(missing)} column"
        )
        raise CrossregError(f"{path}, line 1: {problem}; columns are {', '.join(COLUMNS)}")
    reader.fieldnames = header
    pairs, lines = [], {}
    for row in reader:
        cells = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if not any(cells.values()):
            continue
        where = f"{path}, line {reader.line_num}"
        if None in row:
            raise CrossregError(f"{where}: more cells than the {len(header)} columns of the header")
        pair = _pair(cells, f"{len(pairs) + 1:04d}", path.resolve().parent, where)
        if pair.id in lines:
            raise CrossregError(f"{where}: id {pair.id!r} is already used on line {lines[pair.id]}")
        lines[pair.id] = reader.line_num
        pairs.append(pair)
    if not pairs:
        raise CrossregError(f"{path}: no pairs; expected a header (fixed,moving,...) and one row per pair")
    return pairs


def _pair(cells: dict[str, str], default_id: str, root: Path, where: str) -> Pair:
    """A Pair from one row's non-empty ``cells``; paths resolved against ``root``."""
    for name in ("fixed", "moving"):
        if not cells.get(name):
            raise CrossregError(f"{where}: empty {name} cell; give the {name} image's path")
    pair_id = cells.get("id") or default_id
    if not _ID.fullmatch(pair_id):
        raise CrossregError(f"{where}: id {pair_id!r} is not a folder name (letters, digits, . _ -)")
    options: dict[str, Any] = {}
    for name in ("model", "features", "matching"):
        if cells.get(name):
            if cells[name] not in _CHOICES[name]:
                choices = ", ".join(_CHOICES[name])
                raise CrossregError(f"{where}: {name} {cells[name]!r} is unknown; choose from {choices}")
            options[name] = cells[name]
    for name in ("refine", "deformable"):
        if cells.get(name):
            if cells[name].lower() not in _BOOLEANS:
                raise CrossregError(f"{where}: {name} {cells[name]!r}: expected true or false")
            options[name] = _BOOLEANS[cells[name].lower()]
    if cells.get("seed"):
        try:
            options["seed"] = int(cells["seed"])
        except ValueError:
            raise CrossregError(f"{where}: seed {cells['seed']!r} is not an integer") from None
    paths = {k: root / Path(cells[k]).expanduser() for k in ("landmarks", "weights") if cells.get(k)}
    fixed, moving = (root / Path(cells[k]).expanduser() for k in ("fixed", "moving"))
    return Pair(pair_id, fixed, moving, **paths, **options)


# ---------------------------------------------------------------- one pair, on a worker


def run_pair(pair: Pair, out_dir: Path, device: str = "cpu") -> PairRecord:
    """Register ``pair``, write its folder under ``out_dir`` (``done.json`` last); never raises for a
    bad pair: any error becomes a ``failed`` record. The task a Dask worker runs."""
    import torch

    start = time.perf_counter()
    folder = Path(out_dir) / pair.id
    (folder / DONE).unlink(missing_ok=True)  # a redone pair is not done until it succeeds again
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one pair per single-threaded worker: workers, not threads, use the cores
    try:
        record = _register_pair(pair, folder, device, start)
    except CrossregError as err:
        return PairRecord(pair.id, "failed", time.perf_counter() - start, error=str(err))
    except Exception as err:
        log.exception("pair %s: unexpected error", pair.id)
        return PairRecord(
            pair.id, "failed", time.perf_counter() - start, error=f"{type(err).__name__}: {err}"
        )
    finally:
        torch.set_num_threads(threads)
    name = _transform_name(pair.model, pair.deformable)
    transforms = [p.name for p in transform_files(name, pair.model, pair.deformable)]
    files = [*transforms, "matches.csv", "matches_fixed.mrk.json", "matches_moving.mrk.json", "qa.png"]
    done = {"pair": pair.as_json(), "record": asdict(record), "files": files}
    atomic_write_text(folder / DONE, json.dumps(done, indent=2) + "\n")
    return record


def _transform_name(model: Model, deformable: bool = False) -> str:
    """The file name of a pair's transform: an ITK text transform, a homography's JSON, or (deformable)
    an ITK composite transform."""
    if deformable:
        return "transform.h5"
    return "transform.json" if model == "homography" else "transform.tfm"


def _register_pair(pair: Pair, folder: Path, device: str, start: float) -> PairRecord:
    from crossreg.config import RegisterConfig
    from crossreg.deformable import DeformableConfig
    from crossreg.imageio import load
    from crossreg.markups import read_matches_csv
    from crossreg.refine import RefineConfig
    from crossreg.register import warm_registrator

    fixed, moving = load(pair.fixed), load(pair.moving)
    config = RegisterConfig(
        model=pair.model,
        features=pair.features,
        weights=None if pair.weights is None else str(pair.weights),
        matching=pair.matching,
        refine=RefineConfig() if pair.refine else None,
        deformable=DeformableConfig() if pair.deformable else None,
        device=device,
    )
    result = warm_registrator(config).register(fixed, moving, seed=pair.seed)
    result.save(
        folder / _transform_name(pair.model, pair.deformable),
        qa_path=folder / "qa.png",
        matches_path=folder / "matches.csv",
    )
    tre = None
    if pair.landmarks is not None:
        pf, pm, _ = read_matches_csv(pair.landmarks)
        if pf.shape[1] != fixed.ndim:
            raise CrossregError(f"{pair.landmarks}: {pf.shape[1]}D landmarks for {fixed.ndim}D images")
        tre = np.linalg.norm(result.final_transform.apply(pf) - pm, axis=1)
    return PairRecord(
        pair.id,
        "ok",
        time.perf_counter() - start,
        confidence=float(result.confidence),
        n_inliers=result.n_inliers,
        n_matches=result.n_matches,
        tre_mean_mm=None if tre is None else float(tre.mean()),
        tre_max_mm=None if tre is None else float(tre.max()),
    )


def done_record(pair: Pair, out_dir: Path) -> PairRecord | None:
    """The stored record of ``pair`` if its folder holds a valid ``done.json`` for the same inputs and
    every file it lists; else None (the pair must be done again)."""
    folder = Path(out_dir) / pair.id
    try:
        done = json.loads((folder / DONE).read_text())
        record = PairRecord(**done["record"])
        files = [folder / name for name in done["files"]]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    valid = record.status == "ok" and record.id == pair.id and done["pair"] == pair.as_json()
    return record if valid and all(f.is_file() for f in files) else None


# ---------------------------------------------------------------- the batch


def run_batch(
    pairs: list[Pair], config: BatchConfig, on_record: Callable[[PairRecord], None] | None = None
) -> list[PairRecord]:
    """Register every pair not already done, on Dask; one record per pair in ``pairs`` order.

    Records stream to ``on_record`` (skipped pairs first) and into ``out_dir/summary.csv`` and
    ``summary.json`` as they arrive. Raises CrossregError only for the batch as a whole (Dask missing,
    scheduler unreachable, output folder unwritable), never for a pair.
    """
    report = on_record or (lambda record: None)
    records: dict[str, PairRecord] = {}
    todo = []
    for pair in pairs:
        done = None if config.force else done_record(pair, config.out_dir)
        if done is None:
            todo.append(pair)
            continue
        records[pair.id] = replace(done, status="skipped")
        report(records[pair.id])
    log.info("%d pairs to register, %d already done", len(todo), len(pairs) - len(todo))
    write_summary(config.out_dir, [records[p.id] for p in pairs if p.id in records])
    if todo:
        distributed = _distributed()
        with _client(distributed, config, len(todo)) as client:
            out_dir = Path(config.out_dir).absolute()  # workers may run in another folder
            futures = client.map(run_pair, todo, out_dir=out_dir, device=config.device, pure=False)
            pair_of = {f.key: p for f, p in zip(futures, todo, strict=True)}
            for future in distributed.as_completed(futures):
                record = _result(future, pair_of[future.key])
                records[record.id] = record
                report(record)
                write_summary(config.out_dir, [records[p.id] for p in pairs if p.id in records])
    return [records[p.id] for p in pairs]


def _result(future: Any, pair: Pair) -> PairRecord:
    """The future's record, or a failed one when the task itself died (e.g. a worker killed for memory)."""
    try:
        return future.result()
    except Exception as err:
        return PairRecord(pair.id, "failed", 0.0, error=f"worker lost the task: {type(err).__name__}: {err}")


def _distributed() -> ModuleType:
    """The ``distributed`` module (Dask is an optional extra)."""
    try:
        return importlib.import_module("distributed")
    except ImportError:
        raise CrossregError("crossreg batch needs Dask: pip install crossreg[cluster]") from None


@contextlib.contextmanager
def _client(distributed: ModuleType, config: BatchConfig, n_pairs: int) -> Iterator[Any]:
    """A Dask client of ``config.scheduler``, or of a local cluster of at most ``n_pairs`` workers."""
    from dask.system import CPU_COUNT
    from dask.utils import parse_bytes

    if config.scheduler is not None:
        if config.n_workers is not None or config.memory_limit != "auto":
            raise CrossregError(
                "workers and memory limit size the local cluster; with a scheduler address, size the "
                "workers where that cluster is started"
            )
        try:
            client = distributed.Client(config.scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as err:
            raise CrossregError(f"cannot reach the Dask scheduler at {config.scheduler}: {err}") from None
        with client:
            yield client
        return
    if config.n_workers is not None and config.n_workers < 1:
        raise CrossregError(f"workers: expected at least 1, got {config.n_workers}")
    if config.memory_limit != "auto":
        try:
            parse_bytes(config.memory_limit)
        except ValueError:
            raise CrossregError(f"memory limit {config.memory_limit!r}: expected e.g. 4GB or auto") from None
    n_workers = min(config.n_workers or CPU_COUNT, n_pairs)
    with (
        distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            memory_limit=config.memory_limit,
            dashboard_address=":0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        log.info("local Dask cluster of %d workers, dashboard %s", n_workers, client.dashboard_link)
        yield client


# ---------------------------------------------------------------- summary


def write_summary(out_dir: Path, records: list[PairRecord]) -> None:
    """``out_dir/summary.csv`` (one row per record) and ``summary.json`` (counts and records), atomically."""
    names = [f.name for f in fields(PairRecord)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for r in records:
        writer.writerow(["" if v is None else v for v in asdict(r).values()])
    counts = {s: sum(r.status == s for r in records) for s in ("ok", "failed", "skipped")}
    atomic_write_text(Path(out_dir) / "summary.csv", buf.getvalue())
    summary = {"counts": counts, "records": [asdict(r) for r in records]}
    atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")
