"""Anatomical embeddings against baselines: one-shot landmarks and lesion tracking, side by side.

Two tasks (``crossreg bench-anatomy``), each a set of :class:`PointCase`: points of a source image to
find in a target image, with the exact truth.

- ``landmarks``: the salient points of the MNI152 T1 template (:func:`salient_landmarks`) in synthetic
  subjects of the ``regional`` deformation family (held out of the shipped embedding's training) in
  each contrast (:func:`crossreg.synth.subjects.make_subject`); truth ``subject.to_subject(points)``.
  Subject seed ``s`` gives the same anatomy in every contrast. The family runs at
  :data:`LANDMARK_FIELD`, stronger than its synthesis default: at 4-6 mm the best affine fit already
  leaves only 1.4 mm at the landmarks, far less than between two real brains (affine transfer from
  the template leaves about 3.3 mm mean, 4.7 mm p90); at 8-12 mm it leaves 2.7 mm mean, 4.5 mm p90.
- ``tracking``: the lesion centres of a baseline scan in its follow-up
  (:func:`crossreg.synth.lesions.make_longitudinal`: lesions grow or shrink off-centre and push
  tissue, the brain changes non-rigidly, the head moves, the follow-up has another contrast); truth
  the exact tracks. A lesion is found when the error is at most its follow-up radius.

Methods (:class:`PointMethod`) carry source points into the target: ``identity`` (no registration,
the floor), ``uae`` and ``mind-nn`` (:func:`crossreg.locate.locate` with the universal anatomical
embeddings or MIND-SSC nearest neighbours; the round trip flags unreliable points), ``local``
(:func:`crossreg.track_local.track_lesions`: a rigid :func:`crossreg.register`, then a MIND-SSC patch
search around each point, sized by the baseline radius), ``affine`` and ``syn`` (ANTs with Mattes MI,
the points carried through its transforms). Errors are world mm; the
statistics pool every point of the cases a method ran on. Time is wall and CPU seconds per target
volume (both images described, the search and its round trip; a registration) and wall ms per point.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from crossreg import datasets
from crossreg.errors import CrossregError
from crossreg.evaluate.baselines import to_ants
from crossreg.evaluate.report import format_mm, json_safe
from crossreg.features.base import Description, Features
from crossreg.features.mind import MindFeatures
from crossreg.features.uae import EmbeddingFeatures, load_embedding_model
from crossreg.image import Image, fov_mask
from crossreg.locate import SPACING_MM, locate
from crossreg.outputs import atomic_write_text, check_outputs
from crossreg.resample import working_image
from crossreg.synth.diffeo import DeformationConfig, SmoothFieldConfig
from crossreg.synth.geometry import salient_landmarks
from crossreg.synth.labels import head_labels
from crossreg.synth.lesions import FollowupConfig, make_longitudinal
from crossreg.synth.subjects import Contrast, SubjectConfig, make_subject

log = logging.getLogger(__name__)

TASKS = ("landmarks", "tracking")
#: First subject seed of each task: held out (nothing was developed or tuned on them).
SEEDS = {"landmarks": 5000, "tracking": 6000}
#: Contrasts of each task: one group per subject contrast; tracking: baseline, follow-up.
CONTRASTS: dict[str, tuple[Contrast, ...]] = {"landmarks": ("t1", "t2", "ct"), "tracking": ("t1", "t2")}
N_LANDMARKS = 40  # salient points asked of the template (fewer where fewer are found)
FAMILIES = ("regional",)  # the deformation family the shipped embedding never saw
#: The held-out family at the strength of the differences between real brains (module notes).
LANDMARK_FIELD = SmoothFieldConfig(smoothing_mm=(15.0, 25.0), max_displacement_mm=(8.0, 12.0))
REPORT_FILES = ("results.json", "results.md")


@dataclass(frozen=True, eq=False)
class PointCase:
    """Points ``(N, 3)`` of ``source`` to find in ``target``; ``truth_mm`` ``(N, 3)`` where they are.

    group: what the report groups by (the subject's contrast; ``t1->t2`` for tracking). seed: the
    subject's, also given to the methods. radii_mm: ``(N,)`` a point found within its radius counts as
    found (lesions), or None. source_radii_mm: ``(N,)`` the lesions' radii in the source (what a user
    gives a sized method), or None.
    """

    name: str
    group: str
    seed: int
    source: Image
    points_mm: np.ndarray
    target: Image
    truth_mm: np.ndarray
    radii_mm: np.ndarray | None = None
    source_radii_mm: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Transferred:
    """Where a method put the points: ``points_mm`` ``(N, 3)``; ``reliable`` ``(N,)`` or None."""

    points_mm: np.ndarray
    reliable: np.ndarray | None = None


#: (source, points ``(N, 3)``, target, seed) -> the points in the target.
Transfer = Callable[[Image, np.ndarray, Image, int], Transferred]
#: (source, points ``(N, 3)``, target, seed, source radii ``(N,)`` or None) -> the points in the target.
SizedTransfer = Callable[[Image, np.ndarray, Image, int, np.ndarray | None], Transferred]


@dataclass(frozen=True)
class PointMethod:
    """A named way of carrying points; ``limit``: it runs on the first ``limit`` cases of each group
    only (a slow reference), None for all; ``sized``: ``run`` is a :data:`SizedTransfer`, given the
    case's ``source_radii_mm``."""

    name: str
    run: Transfer | SizedTransfer
    limit: int | None = None
    sized: bool = False


# ---------------------------------------------------------------- cases


def landmark_cases(
    contrasts: Sequence[Contrast] = CONTRASTS["landmarks"], n: int = 20, seed: int = SEEDS["landmarks"]
) -> Iterator[PointCase]:
    """Template landmarks in subjects ``seed .. seed + n - 1``, each in every contrast (subject by
    subject, so a shortened run still covers every contrast); made one at a time."""
    t1 = datasets.mni152_t1(2)
    labels = head_labels(t1, datasets.mni152_tissues())
    points = salient_landmarks(t1, N_LANDMARKS)
    deformation = DeformationConfig(regional_field=LANDMARK_FIELD)
    for s in range(seed, seed + n):
        for contrast in contrasts:
            config = SubjectConfig(contrast=contrast, families=FAMILIES, deformation=deformation)
            subject = make_subject(t1, labels, config, s)
            truth = np.asarray(subject.to_subject(points))
            yield PointCase(f"{contrast}-{s}", contrast, s, t1, points, subject.image, truth)


def tracking_cases(
    contrasts: Sequence[Contrast] = CONTRASTS["tracking"], n: int = 20, seed: int = SEEDS["tracking"]
) -> Iterator[PointCase]:
    """Lesions of baselines in contrast ``contrasts[0]`` found in follow-ups in ``contrasts[-1]``, pairs
    ``seed .. seed + n - 1``; made one at a time."""
    t1 = datasets.mni152_t1(2)
    labels = head_labels(t1, datasets.mni152_tissues())
    baseline, followup = contrasts[0], contrasts[-1]
    for s in range(seed, seed + n):
        pair = make_longitudinal(
            t1,
            labels,
            SubjectConfig(contrast=baseline, families=FAMILIES),
            FollowupConfig(contrast=followup),
            seed=s,
        )
        centres, truth, radii, source_radii = (
            np.array([getattr(lesion, a) for lesion in pair.lesions])
            for a in ("centre_mm", "followup_centre_mm", "followup_radius_mm", "radius_mm")
        )
        group = f"{baseline}->{followup}"
        yield PointCase(
            f"pair-{s}", group, s, pair.baseline, centres, pair.followup, truth, radii, source_radii
        )


def task_cases(task: str, contrasts: Sequence[Contrast], n: int, seed: int) -> Iterator[PointCase]:
    """The cases of ``task`` (:data:`TASKS`): :func:`landmark_cases` or :func:`tracking_cases`."""
    return (landmark_cases if task == "landmarks" else tracking_cases)(contrasts, n, seed)


def task_protocol(
    task: str, contrasts: Sequence[Contrast], n: int, seed: int, methods: Sequence[PointMethod]
) -> dict:
    """What the report says about how its cases were made and which methods ran on which."""
    seeds = f"seeds S = {seed}..{seed + n - 1}"
    if task == "landmarks":
        field_mm = LANDMARK_FIELD
        cases = (
            f"salient_landmarks(MNI152 T1 2 mm, {N_LANDMARKS}) found in make_subject(t1, labels, "
            f"SubjectConfig(families={FAMILIES}, contrast=C, regional field smoothed over "
            f"{field_mm.smoothing_mm[0]:g}-{field_mm.smoothing_mm[1]:g} mm, largest displacement "
            f"{field_mm.max_displacement_mm[0]:g}-{field_mm.max_displacement_mm[1]:g} mm), seed=S), "
            f"C = {', '.join(contrasts)}, {seeds} (the same anatomy in every contrast); truth "
            "subject.to_subject(points)"
        )
    else:
        cases = (
            f"lesion centres of the baseline of make_longitudinal(t1, labels, SubjectConfig(families="
            f"{FAMILIES}, contrast={contrasts[0]!r}), FollowupConfig(contrast={contrasts[-1]!r}), seed=S), "
            f"{seeds}, found in the follow-up; truth the exact tracks; found: error at most the follow-up "
            "radius"
        )
    limits = {m.name: m.limit for m in methods if m.limit is not None}
    return {
        "task": task,
        "contrasts": list(contrasts),
        "families": list(FAMILIES),
        "seeds": [seed, seed + n - 1],
        "cases": cases,
        "limits": limits,
        "description": _with_limits(cases, limits),
    }


def _with_limits(cases: str, limits: dict[str, int]) -> str:
    """The protocol's description: how the cases were made, then which methods ran on fewer."""
    return cases + "".join(
        f"; {name} on the first {k} cases of each group only" for name, k in limits.items()
    )


# ---------------------------------------------------------------- methods


def identity(source: Image, points_mm: np.ndarray, target: Image, seed: int) -> Transferred:
    """No registration: the points where they are in world coordinates."""
    return Transferred(np.asarray(points_mm, float))


@dataclass(eq=False)
class FeatureTransfer:
    """:func:`crossreg.locate.find_points` with ``features``, the last source's description kept (the
    template of every landmark case is described once)."""

    features: Features
    _source: tuple[Image, Description] | None = field(default=None, repr=False)

    def __call__(self, source: Image, points_mm: np.ndarray, target: Image, seed: int) -> Transferred:
        if self._source is None or self._source[0] is not source:
            self._source = (source, self.features.describe(working_image(source, SPACING_MM)))
        described = self.features.describe(working_image(target, SPACING_MM))
        found = locate(self._source[1], points_mm, described)
        return Transferred(found.points_mm, found.reliable)


def local_transfer(device: str = "cpu") -> SizedTransfer:
    """A rigid :func:`crossreg.register` of the pair, then
    :func:`crossreg.track_local.track_lesions` (the default radius where none is given)."""
    from crossreg.config import RegisterConfig
    from crossreg.register import register
    from crossreg.track_local import track_lesions

    def run(
        source: Image, points_mm: np.ndarray, target: Image, seed: int, radii_mm: np.ndarray | None
    ) -> Transferred:
        rigid = register(source, target, RegisterConfig(device=device, seed=seed)).transform
        found = track_lesions(source, points_mm, target, rigid, radii_mm)
        return Transferred(found.points_mm, found.reliable)

    return run


def ants_transfer(type_of_transform: str) -> Transfer:
    """ANTsPy ``registration(fixed=source, moving=target)`` (Mattes MI for the affine and deformable
    stages, within both field-of-view masks), the points carried by its forward transforms.

    Points go the other way to images: the forward transforms resample the target onto the source's
    grid, so they map source points to target points (tests/test_bench_anatomy.py checks it on a
    known affine)."""

    def run(source: Image, points_mm: np.ndarray, target: Image, seed: int) -> Transferred:
        import ants
        import ants.config
        import pandas as pd

        ants.config.set_ants_deterministic(on=False, seed_value=seed + 1)  # as baselines.ants_rigid
        with tempfile.TemporaryDirectory(prefix="crossreg-ants-") as tmp:
            out = ants.registration(
                fixed=to_ants(source.array, source),
                moving=to_ants(target.array, target),
                type_of_transform=type_of_transform,
                aff_metric="mattes",
                syn_metric="mattes",
                mask=to_ants(fov_mask(source).astype(np.float32), source),
                moving_mask=to_ants(fov_mask(target).astype(np.float32), target),
                outprefix=str(Path(tmp) / "ants_"),
            )
            points = pd.DataFrame(np.asarray(points_mm, float), columns=["x", "y", "z"])
            moved = ants.apply_transforms_to_points(3, points, out["fwdtransforms"])
        return Transferred(moved[["x", "y", "z"]].to_numpy(float))

    return run


def anatomy_methods(
    device: str = "cpu", n_syn: int | None = None, weights: str | None = None, n_mind: int | None = None
) -> list[PointMethod]:
    """identity, uae (``weights``, the shipped model if None), mind-nn on the first ``n_mind`` cases of
    each group, local, ANTs affine, and ANTs SyN on the first ``n_syn`` (None: all cases)."""
    net, _ = load_embedding_model(weights, device)
    return [
        PointMethod("identity", identity),
        PointMethod("uae", FeatureTransfer(EmbeddingFeatures(net))),
        PointMethod("mind-nn", FeatureTransfer(MindFeatures(device=device)), n_mind),
        PointMethod("local", local_transfer(device), sized=True),
        PointMethod("affine", ants_transfer("Affine")),
        PointMethod("syn", ants_transfer("SyN"), n_syn),
    ]


# ---------------------------------------------------------------- scoring


@dataclass(frozen=True)
class PointRun:
    """One method on one case: per-point errors (mm), reliability flags and within-radius (or None),
    wall and CPU seconds. ``failed``: the method's error message (no errors then)."""

    case: str
    group: str
    method: str
    errors_mm: tuple[float, ...]
    reliable: tuple[bool, ...] | None
    found: tuple[bool, ...] | None
    seconds: float
    cpu_seconds: float
    failed: str | None = None


def score(case: PointCase, method: str, out: Transferred, seconds: float, cpu_seconds: float) -> PointRun:
    """The :class:`PointRun` of ``out`` on ``case``."""
    errors = np.linalg.norm(np.asarray(out.points_mm, float) - case.truth_mm, axis=1)
    found = None if case.radii_mm is None else tuple(bool(v) for v in errors <= case.radii_mm)
    reliable = None if out.reliable is None else tuple(bool(v) for v in out.reliable)
    return PointRun(
        case.name, case.group, method, tuple(float(e) for e in errors), reliable, found, seconds, cpu_seconds
    )


def _run_one(method: PointMethod, case: PointCase) -> PointRun:
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        sizes = (case.source_radii_mm,) if method.sized else ()
        out = method.run(case.source, case.points_mm, case.target, case.seed, *sizes)
    # As crossreg.evaluate.bench: one crashed run is that run's failure, the others are kept.
    except Exception as err:
        log.exception("%s crashed on %s", method.name, case.name)
        failed = f"{type(err).__name__}: {err}"
        return PointRun(case.name, case.group, method.name, (), None, None, np.nan, np.nan, failed)
    return score(case, method.name, out, time.perf_counter() - wall, time.process_time() - cpu)


def run_cases(
    cases: Iterable[PointCase],
    methods: Sequence[PointMethod],
    on_progress: Callable[[PointRun], None] | None = None,
    done: Sequence[PointRun] = (),
    on_case: Callable[[list[PointRun]], None] | None = None,
) -> list[PointRun]:
    """Every method on every case (a method with a ``limit`` on the first cases of each group), after
    the runs ``done`` (their case and method are not run again); ``on_case`` gets every run so far
    after each case."""
    runs = list(done)
    finished = {(r.case, r.method) for r in done}
    seen: dict[str, int] = {}
    for case in cases:
        index = seen[case.group] = seen.get(case.group, -1) + 1
        for method in methods:
            if (method.limit is None or index < method.limit) and (case.name, method.name) not in finished:
                runs.append(_run_one(method, case))
                if on_progress is not None:
                    on_progress(runs[-1])
        if on_case is not None:
            on_case(runs)
    return runs


@dataclass(frozen=True)
class PointSummary:
    """One method over the cases of one group (``all``: every case). Errors (mm) pool the points of
    the runs that did not fail; shares are fractions; ``found`` / ``reliable`` None where not
    measured; times are medians over the runs."""

    group: str
    method: str
    n_cases: int
    n_points: int
    n_failed: int
    mean_mm: float
    median_mm: float
    p90_mm: float
    max_mm: float
    worst_case_mm: float  # the largest per-case mean error
    under_2mm: float
    under_4mm: float
    found: float | None
    reliable: float | None
    reliable_mean_mm: float | None
    seconds: float
    cpu_seconds: float
    ms_per_point: float


def _pooled(runs: list[PointRun], name: str) -> np.ndarray:
    """Attribute ``name`` of every run that has it, all points joined."""
    return np.array([v for r in runs if getattr(r, name) is not None for v in getattr(r, name)])


def _summary(group: str, method: str, runs: list[PointRun]) -> PointSummary:
    done = [r for r in runs if r.failed is None and r.errors_mm]
    errors = _pooled(done, "errors_mm") if done else np.array([np.nan])
    flagged = [r for r in done if r.reliable is not None]
    reliable, kept = _pooled(flagged, "reliable").astype(bool), _pooled(flagged, "errors_mm")
    found = _pooled(done, "found")
    per_point = [r.seconds / len(r.errors_mm) for r in done]
    return PointSummary(
        group=group,
        method=method,
        n_cases=len(runs),
        n_points=sum(len(r.errors_mm) for r in done),
        n_failed=len(runs) - len(done),
        mean_mm=float(errors.mean()),
        median_mm=float(np.median(errors)),
        p90_mm=float(np.percentile(errors, 90)),
        max_mm=float(errors.max()),
        worst_case_mm=max((float(np.mean(r.errors_mm)) for r in done), default=np.nan),
        under_2mm=float(np.mean(errors < 2.0)),
        under_4mm=float(np.mean(errors < 4.0)),
        found=float(found.mean()) if found.size else None,
        reliable=float(reliable.mean()) if reliable.size else None,
        reliable_mean_mm=float(kept[reliable].mean()) if reliable.any() else None,
        seconds=float(np.median([r.seconds for r in done])) if done else np.nan,
        cpu_seconds=float(np.median([r.cpu_seconds for r in done])) if done else np.nan,
        ms_per_point=1000.0 * float(np.median(per_point)) if per_point else np.nan,
    )


def summarize(runs: Sequence[PointRun]) -> list[PointSummary]:
    """Per (group, method) summaries in order of appearance, then group ``all`` when there are several."""
    groups = list(dict.fromkeys(r.group for r in runs))
    methods = list(dict.fromkeys(r.method for r in runs))
    sets = [(g, [r for r in runs if r.group == g]) for g in groups]
    if len(groups) > 1:
        sets.append(("all", list(runs)))
    return [
        _summary(group, method, mine)
        for group, rows in sets
        for method in methods
        if (mine := [r for r in rows if r.method == method])
    ]


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class AnatomyReport:
    """Everything one task measured: runs, summaries, the protocol, the machine and the command."""

    task: str
    runs: tuple[PointRun, ...]
    summaries: tuple[PointSummary, ...]
    protocol: dict
    machine: dict[str, str]
    command: str


def _share(value: float | None) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{100 * value:.0f}%"


def _optional_mm(value: float | None) -> str:
    return "–" if value is None else format_mm(value)


#: Table columns per task: header and how a summary reads in it.
_COLUMNS: dict[str, list[tuple[str, Callable[[PointSummary], str]]]] = {
    "landmarks": [
        ("subjects", lambda s: str(s.n_cases)),
        ("mean", lambda s: format_mm(s.mean_mm)),
        ("median", lambda s: format_mm(s.median_mm)),
        ("p90", lambda s: format_mm(s.p90_mm)),
        ("worst subject", lambda s: format_mm(s.worst_case_mm)),
        ("< 2 mm", lambda s: _share(s.under_2mm)),
        ("< 4 mm", lambda s: _share(s.under_4mm)),
    ],
    "tracking": [
        ("pairs", lambda s: str(s.n_cases)),
        ("lesions", lambda s: str(s.n_points)),
        ("found", lambda s: _share(s.found)),
        ("mean", lambda s: format_mm(s.mean_mm)),
        ("median", lambda s: format_mm(s.median_mm)),
        ("max", lambda s: format_mm(s.max_mm)),
    ],
}
_COMMON: list[tuple[str, Callable[[PointSummary], str]]] = [
    ("reliable", lambda s: _share(s.reliable)),
    ("mean of reliable", lambda s: _optional_mm(s.reliable_mean_mm)),
    ("s / volume", lambda s: f"{s.seconds:.1f}"),
    ("CPU s / volume", lambda s: f"{s.cpu_seconds:.1f}"),
    ("ms / point", lambda s: f"{s.ms_per_point:.0f}"),
    ("failed", lambda s: str(s.n_failed)),
]


def to_markdown(report: AnatomyReport) -> str:
    """The protocol, then a table per group."""
    m, p = report.machine, report.protocol
    columns = [*_COLUMNS[report.task], *_COMMON]
    lines = [
        f"# crossreg anatomy benchmark: {report.task}",
        "",
        f"- command: `{report.command or '(Python API)'}`",
        f"- machine: {m.get('cpu', '?')}; torch device {m.get('device', '?')}; {m.get('date', '')}",
        f"- protocol: {p['description']}",
        "- errors: world mm to the exact truth, pooled over every point of the cases a method ran on; "
        "reliable: the round trip came back within 4 mm; times: medians per target volume (wall, and CPU "
        "seconds of all threads), and wall ms per point.",
    ]
    for group in dict.fromkeys(s.group for s in report.summaries):
        rows = [s for s in report.summaries if s.group == group]
        points = max(s.n_points for s in rows)
        lines += [
            "",
            f"## {group}: {max(s.n_cases for s in rows)} cases, {points} points",
            "",
            "| method | " + " | ".join(h for h, _ in columns) + " |",
            "|---|" + "---:|" * len(columns),
            *("| " + " | ".join([s.method, *(cell(s) for _, cell in columns)]) + " |" for s in rows),
        ]
    failures = [r for r in report.runs if r.failed is not None]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- {r.method} on {r.case}: {' '.join(r.failed.split())[:300]}" for r in failures]
    return "\n".join(lines) + "\n"


def _run_json(run: PointRun) -> dict:
    """A run with errors rounded to 0.001 mm (the files stay small)."""
    return {**asdict(run), "errors_mm": [round(e, 3) for e in run.errors_mm]}


def to_json(report: AnatomyReport) -> dict:
    """The whole report as plain JSON data (NaN as null)."""
    return json_safe(
        {
            "task": report.task,
            "command": report.command,
            "machine": report.machine,
            "protocol": report.protocol,
            "summaries": [asdict(s) for s in report.summaries],
            "runs": [_run_json(r) for r in report.runs],
        }
    )


def write_report(report: AnatomyReport, out_dir: Path) -> tuple[Path, Path]:
    """Write results.json and results.md into ``out_dir`` atomically; their paths."""
    paths = (out_dir / REPORT_FILES[0], out_dir / REPORT_FILES[1])
    atomic_write_text(paths[0], json.dumps(to_json(report), indent=1, allow_nan=False) + "\n")
    atomic_write_text(paths[1], to_markdown(report))
    return paths


def read_report(path: str | Path) -> tuple[dict, list[PointRun]]:
    """The protocol and the runs of a results.json that :func:`write_report` wrote."""
    saved = json.loads(Path(path).read_text())
    runs = []
    for r in saved["runs"]:
        flags = {k: None if r[k] is None else tuple(r[k]) for k in ("errors_mm", "reliable", "found")}
        times = {k: np.nan if r[k] is None else r[k] for k in ("seconds", "cpu_seconds")}
        runs.append(PointRun(**{**r, **flags, **times}))
    return saved["protocol"], runs


def run_anatomy(
    task: str,
    cases: Iterable[PointCase],
    methods: Sequence[PointMethod],
    out_dir: str | Path,
    protocol: dict,
    machine: dict[str, str],
    command: str = "",
    force: bool = False,
    on_progress: Callable[[PointRun], None] | None = None,
    done: Sequence[PointRun] = (),
) -> AnatomyReport:
    """Run ``methods`` on ``cases`` after the runs ``done`` (a report read back, to resume it) and
    write the report of ``task`` into ``out_dir``, again after each case: a run cut short keeps what
    it measured. Raises OutputExistsError before running anything if a report file exists, ``force``
    is False and nothing is ``done``."""
    out_dir = Path(out_dir)
    if not done:
        check_outputs([out_dir / name for name in REPORT_FILES], force)

    def report_of(runs: list[PointRun]) -> AnatomyReport:
        return AnatomyReport(task, tuple(runs), tuple(summarize(runs)), protocol, machine, command)

    runs = run_cases(
        cases, methods, on_progress, done, lambda so_far: write_report(report_of(so_far), out_dir)
    )
    report = report_of(runs)
    write_report(report, out_dir)
    return report


def merge_reports(paths: Sequence[str | Path]) -> AnatomyReport:
    """One report of the runs of several results.json of the same cases (methods run apart, e.g. the
    embeddings on a GPU machine and ANTs on a CPU one); each run keeps its machine, named in the
    report's machine lines. Raises CrossregError when the cases differ or a run appears twice."""
    saved = [json.loads(Path(p).read_text()) for p in paths]
    first = saved[0]
    same = ("task", "contrasts", "families", "seeds", "cases")
    runs: list[PointRun] = []
    machine: dict[str, str] = {}
    for path, report in zip(paths, saved, strict=True):
        if any(report["protocol"].get(k) != first["protocol"].get(k) for k in same):
            raise CrossregError(
                f"{path}: made on other cases than {paths[0]}; only reports of the same cases merge"
            )
        mine = read_report(path)[1]
        taken = {(r.case, r.method) for r in runs} & {(r.case, r.method) for r in mine}
        if taken:
            raise CrossregError(f"{path}: {sorted(taken)[0]} is already in an earlier report")
        runs += mine
        methods = ", ".join(dict.fromkeys(r.method for r in mine))
        for key in ("cpu", "device", "date"):
            machine[key] = "; ".join(
                filter(None, [machine.get(key, ""), f"{methods}: {report['machine'][key]}"])
            )
    limits = {k: v for r in saved for k, v in r["protocol"]["limits"].items()}
    protocol = {
        **first["protocol"],
        "limits": limits,
        "description": _with_limits(first["protocol"]["cases"], limits),
    }
    command = " && ".join(r["command"] for r in saved)
    return AnatomyReport(first["task"], tuple(runs), tuple(summarize(runs)), protocol, machine, command)
