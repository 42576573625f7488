"""Cohort registration on Dask: real 2D cross-modal pairs, a failing row, resume, bad CSVs, the CLI."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from crossreg import datasets
from crossreg.batch import BatchConfig, Pair, done_record, read_pairs, run_batch, run_pair
from crossreg.cli import app
from crossreg.errors import CrossregError
from crossreg.matcher2d.match import SHIPPED
from crossreg.synth.cases import make_case
from crossreg.synth.pairs import write_pair

runner = CliRunner()
HEADER = "id,fixed,moving,landmarks,refine,seed\n"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two real 2D T1 -> T2-like pairs (15 deg / 15 mm) and a row whose moving image does not exist."""
    root = tmp_path_factory.mktemp("cohort")
    for name, axis, seed in (("axial", "axial", 1), ("coronal", "coronal", 2)):
        case = make_case(datasets.mni152_slice(1, axis), "t2", 15.0, 15.0, fov_fraction=0.7, seed=seed)
        write_pair(case, root / "data" / name)
    rows = [
        "axial,data/axial/fixed.nii.gz,data/axial/moving.nii.gz,data/axial/landmarks.csv,,\n",
        "coronal,data/coronal/fixed.nii.gz,data/coronal/moving.nii.gz,data/coronal/landmarks.csv,false,3\n",
        "lost,data/axial/fixed.nii.gz,data/missing.nii.gz,,,\n",
    ]
    (root / "pairs.csv").write_text(HEADER + "".join(rows))
    (root / "good.csv").write_text(HEADER + "".join(rows[:2]))
    return root


@pytest.fixture(scope="module")
def scheduler():
    """An in-process Dask cluster (threads): the --scheduler path, without worker start-up time."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as c:
        yield c.scheduler_address


def by_id(records):
    return {r.id: r for r in records}


def test_read_pairs_resolves_paths_against_the_csv_and_reads_options(cohort):
    pairs = read_pairs(cohort / "pairs.csv")
    assert [p.id for p in pairs] == ["axial", "coronal", "lost"]
    axial, coronal, lost = pairs
    assert axial.fixed == cohort.resolve() / "data/axial/fixed.nii.gz"
    assert axial.landmarks == cohort.resolve() / "data/axial/landmarks.csv"
    assert (axial.refine, axial.seed, axial.model, axial.matching) == (True, 0, "rigid", "auto")
    assert (coronal.refine, coronal.seed) == (False, 3)
    assert lost.landmarks is None


def test_rows_without_id_are_numbered(tmp_path):
    (tmp_path / "p.csv").write_text("fixed,moving,model\na.nii,b.nii,affine\n\nc.nii,d.nii,\n")
    pairs = read_pairs(tmp_path / "p.csv")
    assert [(p.id, p.model) for p in pairs] == [("0001", "affine"), ("0002", "rigid")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fixed,id\na.nii,x\n", "line 1: no moving column"),
        ("fixed,moving,modle\na,b,rigid\n", "line 1: unknown column.* modle"),
        ("id,fixed,moving\nx,a,b\ny,a,b\nx,c,d\n", "line 4: id 'x' is already used on line 2"),
        ("fixed,moving,model\na,b,rigid\na,b,bspline\n", "line 3: model 'bspline' is unknown"),
        ("fixed,moving,matching\na,b,dense\na,b,global\n", "line 3: matching 'global' is unknown"),
        ("fixed,moving,seed\na,b,one\n", "line 2: seed 'one' is not an integer"),
        ("fixed,moving,refine\na,b,maybe\n", "line 2: refine 'maybe'"),
        ("fixed,moving\na,\n", "line 2: empty moving cell"),
        ("id,fixed,moving\n../x,a,b\n", "line 2: id '../x' is not a folder name"),
        ("fixed,moving\na,b,c\n", "line 2: more cells"),
        ("fixed,moving\n", "no pairs"),
    ],
)
def test_bad_csv_names_the_row(tmp_path, text, message):
    (tmp_path / "p.csv").write_text(text)
    with pytest.raises(CrossregError, match=message):
        read_pairs(tmp_path / "p.csv")


def test_batch_registers_records_the_failure_and_resumes(cohort, scheduler, tmp_path):
    pairs = read_pairs(cohort / "pairs.csv")
    config = BatchConfig(tmp_path, scheduler=scheduler)
    seen = []
    first = by_id(run_batch(pairs, config, seen.append))
    assert sorted(r.id for r in seen) == ["axial", "coronal", "lost"]
    for pair_id in ("axial", "coronal"):
        assert first[pair_id].status == "ok"
        assert first[pair_id].tre_mean_mm < 3.0 and first[pair_id].tre_max_mm < 5.0
        assert first[pair_id].confidence > 0.9
        assert (tmp_path / pair_id / "transform.tfm").is_file() and (tmp_path / pair_id / "qa.png").is_file()
    assert first["lost"].status == "failed" and "missing.nii.gz: no such file" in first["lost"].error
    assert not (tmp_path / "lost" / "done.json").exists()
    with open(tmp_path / "summary.csv") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert [rows[i]["status"] for i in ("axial", "coronal", "lost")] == ["ok", "ok", "failed"]
    assert float(rows["axial"]["tre_mean_mm"]) == pytest.approx(first["axial"].tre_mean_mm)
    assert json.loads((tmp_path / "summary.json").read_text())["counts"] == {
        "ok": 2,
        "failed": 1,
        "skipped": 0,
    }

    done = {i: (tmp_path / i / "done.json").stat().st_mtime_ns for i in ("axial", "coronal")}
    tfm = (tmp_path / "axial" / "transform.tfm").stat().st_mtime_ns
    (tmp_path / "coronal" / "done.json").unlink()
    second = by_id(run_batch(pairs, config))
    assert [second[i].status for i in ("axial", "coronal", "lost")] == ["skipped", "ok", "failed"]
    assert second["axial"].tre_mean_mm == first["axial"].tre_mean_mm  # read back from done.json
    assert (tmp_path / "axial" / "done.json").stat().st_mtime_ns == done["axial"]
    assert (tmp_path / "axial" / "transform.tfm").stat().st_mtime_ns == tfm
    assert (tmp_path / "coronal" / "done.json").is_file()
    counts = json.loads((tmp_path / "summary.json").read_text())["counts"]
    assert counts == {"ok": 1, "failed": 1, "skipped": 1}

    forced = by_id(run_batch(pairs[:1], BatchConfig(tmp_path, scheduler=scheduler, force=True)))
    assert forced["axial"].status == "ok"
    assert (tmp_path / "axial" / "done.json").stat().st_mtime_ns > done["axial"]


def test_done_json_counts_only_for_the_same_inputs_and_complete_files(cohort, tmp_path):
    pair = read_pairs(cohort / "good.csv")[0]
    assert run_pair(pair, tmp_path).status == "ok"
    assert done_record(pair, tmp_path) is not None
    assert done_record(Pair(pair.id, pair.fixed, pair.moving, pair.landmarks, seed=7), tmp_path) is None
    (tmp_path / pair.id / "qa.png").unlink()
    assert done_record(pair, tmp_path) is None
    (tmp_path / pair.id / "done.json").write_text("{not json")
    assert done_record(pair, tmp_path) is None


def test_a_worker_reads_the_models_once_for_rows_that_share_a_config(cohort, tmp_path, monkeypatch):
    from crossreg.register import warm_registrator

    read, real_load = [], torch.load

    def counted(f, *args, **kwargs):
        read.append(Path(f).name)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    warm_registrator.cache_clear()  # as a fresh worker process
    pair = read_pairs(cohort / "good.csv")[0]
    for seed in (0, 5):  # the seed is the pair's, not the Registrator's
        assert run_pair(replace(pair, id=f"s{seed}", seed=seed), tmp_path).status == "ok"
    assert read == [SHIPPED]  # the 2D pairs went to the matcher network, loaded on the first


def test_unexpected_errors_become_failed_records(cohort, tmp_path, monkeypatch):
    import crossreg.batch

    def broken(*args):
        raise RuntimeError("worker ran out of luck")

    monkeypatch.setattr(crossreg.batch, "_register_pair", broken)
    record = run_pair(read_pairs(cohort / "good.csv")[0], tmp_path)
    assert (record.status, record.error) == ("failed", "RuntimeError: worker ran out of luck")


def test_without_dask_the_error_says_what_to_install(cohort, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)
    with pytest.raises(CrossregError, match=r"pip install crossreg\[cluster\]"):
        run_batch(read_pairs(cohort / "good.csv"), BatchConfig(tmp_path))


def test_cli_local_cluster_exit_codes_and_summary(cohort, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["batch", str(cohort / "pairs.csv"), "--out", str(out), "--workers", "2"])
    assert result.exit_code == 3, result.output
    assert "1 of 3 pairs failed" in result.output and "lost" in result.output
    assert json.loads((out / "summary.json").read_text())["counts"] == {"ok": 2, "failed": 1, "skipped": 0}
    again = runner.invoke(app, ["batch", str(cohort / "good.csv"), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "0 ok, 2 skipped, 0 failed" in again.output
    remote = ["--scheduler", "tcp://127.0.0.1:1", "--workers", "2", "--force"]
    bad = runner.invoke(app, ["batch", str(cohort / "good.csv"), "--out", str(out), *remote])
    assert bad.exit_code == 2 and "size the local cluster" in bad.output
