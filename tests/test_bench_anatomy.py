"""Anatomy benchmark: its numbers are computed right, its report files, the ANTs point direction, the CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from crossreg.cli import app
from crossreg.errors import CrossregError, OutputExistsError
from crossreg.evaluate.anatomy import (
    PointCase,
    PointMethod,
    Transferred,
    identity,
    merge_reports,
    read_report,
    run_anatomy,
    run_cases,
    summarize,
    to_markdown,
)
from crossreg.image import from_array
from crossreg.synth.geometry import move, random_affine, resample_anisotropic, salient_landmarks

OFFSET = np.array([3.0, 0.0, 0.0])  # every truth lies 3 mm from its point


def tiny_cases(n: int = 2, radius_mm: float | None = None) -> list[PointCase]:
    """``n`` cases of 10 points in two groups, each truth the point moved by OFFSET."""
    image = from_array(np.arange(512, dtype=np.float32).reshape(8, 8, 8))
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        points = rng.uniform(0.0, 3.0, (10, 3))
        radii = None if radius_mm is None else np.full(10, radius_mm)
        cases.append(
            PointCase(f"c{i}", "a" if i % 2 == 0 else "b", i, image, points, image, points + OFFSET, radii)
        )
    return cases


def truth(source, points, target, seed) -> Transferred:
    """Knows where the points go: each is moved by OFFSET; flags the first half reliable."""
    return Transferred(points + OFFSET, np.arange(len(points)) < len(points) // 2)


def crash(source, points, target, seed) -> Transferred:
    raise RuntimeError("no convergence")


def summary(runs, group, method):
    return next(s for s in summarize(runs) if s.group == group and s.method == method)


def test_truth_scores_zero_and_identity_scores_the_offset():
    runs = run_cases(
        tiny_cases(4, radius_mm=2.5), [PointMethod("truth", truth), PointMethod("identity", identity)]
    )
    right, floor = summary(runs, "all", "truth"), summary(runs, "all", "identity")
    assert right.n_cases == floor.n_cases == 4 and right.n_points == 40
    assert right.mean_mm == right.p90_mm == right.max_mm == 0.0
    assert (right.under_2mm, right.found, right.reliable, right.reliable_mean_mm) == (1.0, 1.0, 0.5, 0.0)
    assert floor.mean_mm == pytest.approx(3.0) and floor.median_mm == pytest.approx(3.0)
    assert floor.p90_mm == pytest.approx(3.0) and floor.worst_case_mm == pytest.approx(3.0)
    assert (floor.under_2mm, floor.under_4mm, floor.found) == (0.0, 1.0, 0.0)
    assert floor.reliable is None and floor.reliable_mean_mm is None  # identity flags nothing
    assert [s.group for s in summarize(runs)] == ["a", "a", "b", "b", "all", "all"]


def test_reliable_error_is_over_the_flagged_points_only():
    def half_wrong(source, points, target, seed):  # the unflagged half 10 mm off
        out = truth(source, points, target, seed)
        out.points_mm[len(points) // 2 :] += 10.0
        return out

    s = summary(run_cases(tiny_cases(1), [PointMethod("m", half_wrong)]), "a", "m")
    assert s.reliable_mean_mm == 0.0 and s.mean_mm == pytest.approx(np.sqrt(300.0) / 2)


def test_limit_runs_a_method_on_the_first_cases_of_each_group():
    runs = run_cases(tiny_cases(6), [PointMethod("all", identity), PointMethod("few", identity, limit=1)])
    assert [r.case for r in runs if r.method == "few"] == ["c0", "c1"]
    assert summary(runs, "a", "few").n_cases == 1 and summary(runs, "a", "all").n_cases == 3


def test_a_crash_is_that_run_s_failure():
    runs = run_cases(tiny_cases(2), [PointMethod("crash", crash), PointMethod("identity", identity)])
    failed = summary(runs, "all", "crash")
    assert failed.n_failed == 2 and failed.n_points == 0 and np.isnan(failed.mean_mm)
    assert "no convergence" in runs[0].failed
    assert summary(runs, "all", "identity").n_failed == 0


def test_report_files(tmp_path):
    methods = [PointMethod("truth", truth), PointMethod("identity", identity), PointMethod("crash", crash)]
    protocol = {"description": "tiny"}
    report = run_anatomy("tracking", tiny_cases(2, 2.5), methods, tmp_path, protocol, {"cpu": "test"}, "cmd")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["task"] == "tracking" and len(saved["runs"]) == 6
    by_method = {s["method"]: s for s in saved["summaries"] if s["group"] == "all"}
    assert by_method["identity"]["mean_mm"] == pytest.approx(3.0) and by_method["crash"]["mean_mm"] is None
    text = (tmp_path / "results.md").read_text()
    assert text == to_markdown(report)
    assert "| identity | 2 | 20 | 0% | 3.00 | 3.00 | 3.00 |" in text and "| truth | 2 | 20 | 100% |" in text
    assert "crash on c0: RuntimeError: no convergence" in text
    with pytest.raises(OutputExistsError):
        run_anatomy("tracking", tiny_cases(2), methods, tmp_path, protocol, {}, force=False)


def test_resume_runs_only_what_the_report_lacks(tmp_path):
    methods = [PointMethod("identity", identity)]
    run_anatomy("landmarks", tiny_cases(2), methods, tmp_path, {"description": "tiny"}, {})
    protocol, done = read_report(tmp_path / "results.json")
    assert [r.case for r in done] == ["c0", "c1"] and done[0].errors_mm[0] == pytest.approx(3.0)
    seeds = []

    def counting(source, points, target, seed):
        seeds.append(seed)
        return truth(source, points, target, seed)

    more = [*methods, PointMethod("truth", counting)]
    report = run_anatomy("landmarks", tiny_cases(3), more, tmp_path, protocol, {}, done=done)
    assert seeds == [0, 1, 2] and len(report.runs) == 6  # identity ran on the new case only
    assert summary(report.runs, "all", "identity").n_cases == 3


def _protocol(cases: str = "tiny", limits: dict | None = None) -> dict:
    limits = limits or {}
    keys = {"task": "landmarks", "contrasts": ["t1"], "families": ["regional"], "seeds": [0, 1]}
    return {**keys, "cases": cases, "limits": limits, "description": cases}


def test_merge_joins_methods_run_on_two_machines(tmp_path):
    gpu, cpu = tmp_path / "gpu", tmp_path / "cpu"
    run_anatomy(
        "landmarks",
        tiny_cases(3),
        [PointMethod("truth", truth)],
        gpu,
        _protocol(),
        {"cpu": "big", "device": "cuda", "date": "d1"},
    )
    slow = [PointMethod("identity", identity, 1)]
    run_anatomy(
        "landmarks",
        tiny_cases(3),
        slow,
        cpu,
        _protocol(limits={"identity": 1}),
        {"cpu": "small", "device": "cpu", "date": "d2"},
    )
    merged = merge_reports([gpu / "results.json", cpu / "results.json"])
    assert sorted((r.case, r.method) for r in merged.runs) == [
        ("c0", "identity"),
        ("c0", "truth"),
        ("c1", "identity"),
        ("c1", "truth"),
        ("c2", "truth"),
    ]  # identity on the first case of each group (c0 in a, c1 in b) only
    assert summary(merged.runs, "all", "identity").mean_mm == pytest.approx(3.0)
    assert merged.machine["cpu"] == "truth: big; identity: small"
    assert merged.protocol["description"] == "tiny; identity on the first 1 cases of each group only"
    with pytest.raises(CrossregError, match="already in an earlier report"):
        merge_reports([gpu / "results.json", gpu / "results.json"])
    other = tmp_path / "other"
    run_anatomy(
        "landmarks",
        tiny_cases(2),
        slow,
        other,
        _protocol("other cases"),
        {"cpu": "", "device": "", "date": ""},
    )
    with pytest.raises(CrossregError, match="other cases"):
        merge_reports([gpu / "results.json", other / "results.json"])
    out = tmp_path / "merged"
    argv = ["bench-anatomy", "--merge", f"{gpu / 'results.json'},{cpu / 'results.json'}", "--out", str(out)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert len(read_report(out / "results.json")[1]) == 5
    assert CliRunner().invoke(app, argv).exit_code != 0  # no overwrite without --force


def test_a_run_cut_short_keeps_what_it_measured(tmp_path):
    def interrupted(source, points, target, seed):
        if seed == 1:
            raise KeyboardInterrupt
        return identity(source, points, target, seed)

    with pytest.raises(KeyboardInterrupt):
        run_anatomy(
            "landmarks", tiny_cases(2), [PointMethod("m", interrupted)], tmp_path, {"description": ""}, {}
        )
    assert [r.case for r in read_report(tmp_path / "results.json")[1]] == ["c0"]


def test_ants_carries_points_from_the_source_to_the_target(t1):
    """antsApplyTransformsToPoints maps points the opposite way to images: the forward transforms of
    registration(fixed=source, moving=target) carry source points into the target."""
    pytest.importorskip("ants")
    from crossreg.evaluate.anatomy import ants_transfer

    source = resample_anisotropic(t1, (4.0, 4.0, 4.0))  # 4 mm: a fast registration
    known = random_affine(3, 10.0, 10.0, 0.1, 0.05, source.grid.center_mm(), seed=3)
    target = move(source, known)  # what the source shows at p appears at known(p)
    points = salient_landmarks(t1, 20)
    out = ants_transfer("Affine")(source, points, target, 0)
    assert np.linalg.norm(out.points_mm - known.apply(points), axis=1).mean() < 0.5
    assert np.linalg.norm(points - known.apply(points), axis=1).mean() > 8.0  # what no registration leaves


def test_cli_landmarks_identity(tmp_path):
    out = tmp_path / "lm"
    args = ["bench-anatomy", "--out", str(out), "--n", "1", "--contrasts", "t1", "--methods", "identity"]
    result = CliRunner().invoke(app, [*args, "--seed", "9000"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"]["seeds"] == [9000, 9000] and saved["runs"][0]["case"] == "t1-9000"
    assert len(saved["runs"][0]["errors_mm"]) >= 30 and saved["summaries"][0]["mean_mm"] > 1.0
    again = CliRunner().invoke(app, [*args, "--seed", "9000"])
    assert again.exit_code == 2 and "exists" in again.output
    other = CliRunner().invoke(app, [*args, "--resume"])  # the default seeds: another protocol
    assert other.exit_code == 2 and "another protocol" in other.output
    resumed = CliRunner().invoke(app, [*args, "--seed", "9000", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "results.json").read_text())["runs"] == saved["runs"]  # nothing left to run
    wrong = CliRunner().invoke(
        app, ["bench-anatomy", "--task", "tracking", "--contrasts", "t1", "--out", str(out)]
    )
    assert wrong.exit_code == 2 and "two" in wrong.output
