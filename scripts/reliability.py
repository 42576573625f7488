"""What `crossreg register` does with bad input: the table of docs/reliability.md.

Usage: python scripts/reliability.py [--doc docs/reliability.md]

Each case builds its bad input from the shipped MNI152 T1 in a temporary folder, runs the real command
line (``python -m crossreg register ...``, a subprocess) with every output asked for (transform,
resampled image, QA figure, matches), and records the exit code, the message on stderr, and what is left
in the output folder afterwards (files, temp files or a changed pre-existing file). A case is a BUG if
it prints a traceback, exits 0 or 1 (internal error) or with another code than expected, fails with a
message that does not name its own cause (``Case.expected``: a run refused for the wrong reason, e.g. the
NaN case because the file could not be read, is no evidence), or leaves anything behind; the script
exits 1 then.
"""

from __future__ import annotations

import argparse
import gzip
import re
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from doc_sections import replace_section

T1 = Path(str(resources.files("crossreg") / "data" / "mni152_t1_2mm.nii.gz"))
#: What a run returns: exit code and everything it printed on stderr.
Invoke = Callable[[list[str]], tuple[int, str]]


@dataclass(frozen=True)
class Case:
    """A bad input: ``make(folder)`` writes it under ``folder`` and returns ``register``'s arguments.

    ``expected`` is a regular expression the run's message must contain (``re.search``): the file and
    the cause, so that a run refused for another reason does not pass. Cases with one cause share it.
    """

    name: str
    tried: str
    make: Callable[[Path], list[str]]
    expected: str
    exit_code: int = 2


@dataclass(frozen=True)
class Row:
    """What one case did."""

    case: Case
    exit_code: int
    message: str
    left: list[str]
    traceback: bool

    def problems(self) -> list[str]:
        """Why this run is a bug (empty if it behaved)."""
        out = []
        if self.traceback:
            out.append("traceback")
        if self.exit_code in (0, 1):
            out.append(f"exit {self.exit_code}")
        elif self.exit_code != self.case.exit_code:
            out.append(f"exit {self.exit_code}, expected {self.case.exit_code}")
        if not re.search(self.case.expected, self.message):
            out.append("message does not match")
        if self.left:
            out.append("left " + ", ".join(self.left))
        return out


# ---------------------------------------------------------------- inputs


def outputs(folder: Path, **override: str) -> list[str]:
    """Every output option, in ``folder/out``; ``override`` replaces a file name (e.g. qa="qa.xyz")."""
    names = {"out": "T.tfm", "resampled": "R.nii.gz", "qa": "qa.png", "matches": "m.csv"} | override
    return [a for key, name in names.items() for a in (f"--{key}", str(folder / "out" / name))]


def nifti_bytes() -> bytearray:
    """The uncompressed bytes of the shipped 2 mm T1 (NIfTI-1, little-endian)."""
    return bytearray(gzip.decompress(T1.read_bytes()))


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(bytes(data))
    return path


def write_array(folder: Path, name: str, array: np.ndarray, spacing: tuple[float, ...] | None = None) -> Path:
    itk = sitk.GetImageFromArray(array)
    if spacing is not None:
        itk.SetSpacing(spacing)
    path = folder / name
    sitk.WriteImage(itk, str(path))
    return path


def t1_array() -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(T1))).astype(np.float32)


def pair(folder: Path, moving: Path, **override: str) -> list[str]:
    """``register`` arguments: the shipped T1 as fixed, ``moving``, every output."""
    return [str(T1), str(moving), *outputs(folder, **override)]


def truncated(folder: Path) -> list[str]:
    raw = nifti_bytes()
    return pair(folder, write(folder, "half.nii", raw[: len(raw) // 2]))


def truncated_gz(folder: Path) -> list[str]:
    return pair(folder, write(folder, "cut.nii.gz", T1.read_bytes()[:-3000]))


def wrong_magic(folder: Path) -> list[str]:
    raw = nifti_bytes()
    raw[344:348] = b"xyz\0"
    return pair(folder, write(folder, "magic.nii", raw))


def not_an_image(folder: Path) -> list[str]:
    return pair(folder, write(folder, "notes.nii.gz", b"patient notes, not an image\n"))


def dicom_mixed(folder: Path) -> list[str]:
    """Two DICOM series (different SeriesInstanceUID) written into one directory."""
    dcm = folder / "dicom"
    dcm.mkdir()
    vol = sitk.Cast(sitk.ReadImage(str(T1)), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for series in ("1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2"):
        for k in range(0, vol.GetDepth(), 10):
            slice_ = vol[:, :, k]
            for tag, value in (("0020|000e", series), ("0020|0013", str(k)), ("0008|0060", "MR")):
                slice_.SetMetaData(tag, value)
            origin = vol.TransformIndexToPhysicalPoint((0, 0, k))
            slice_.SetMetaData("0020|0032", "\\".join(f"{v:g}" for v in origin))
            writer.SetFileName(str(dcm / f"{series[-1]}_{k:03d}.dcm"))
            writer.Execute(slice_)
    return pair(folder, dcm)


def four_d(folder: Path) -> list[str]:
    vol = sitk.ReadImage(str(T1))
    path = folder / "4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(path))
    return pair(folder, path)


def one_voxel(folder: Path) -> list[str]:
    return pair(folder, write_array(folder, "one.nii.gz", np.ones((1, 1, 1), np.float32)))


def constant(folder: Path) -> list[str]:
    return pair(folder, write_array(folder, "constant.nii.gz", np.full((40, 40, 40), 100.0, np.float32)))


def nan_voxels(folder: Path) -> list[str]:
    arr = t1_array()
    arr[40, 50, 45], arr[41, 50, 45] = np.nan, np.inf
    return pair(folder, write_array(folder, "nan.nii.gz", arr, (2.0, 2.0, 2.0)))


def non_overlapping(folder: Path) -> list[str]:
    """Top and bottom slabs of the head as fixed and moving: no anatomy in common."""
    arr = t1_array()
    top = write_array(folder, "top.nii.gz", arr[-30:], (2.0, 2.0, 2.0))
    bottom = write_array(folder, "bottom.nii.gz", arr[:30], (2.0, 2.0, 2.0))
    return [str(top), str(bottom), *outputs(folder)]


def zero_spacing(folder: Path) -> list[str]:
    raw = nifti_bytes()
    struct.pack_into("<f", raw, 80, 0.0)  # pixdim[1]: ITK would read it as 1 mm
    return pair(folder, write(folder, "pixdim0.nii", raw))


def absurd_spacing(folder: Path) -> list[str]:
    return pair(folder, write_array(folder, "huge.nrrd", t1_array(), (1e5, 1e5, 1e5)))


def sheared_nifti(folder: Path) -> list[str]:
    raw = nifti_bytes()
    struct.pack_into("<f", raw, 284, 1.0)  # srow_x[1]: a shear ITK would silently rotate away
    return pair(folder, write(folder, "sheared.nii", raw))


def sheared_nrrd(folder: Path) -> list[str]:
    itk = sitk.ReadImage(str(T1))
    itk.SetDirection((1, 0.5, 0, 0, 1, 0, 0, 0, 1))
    path = folder / "sheared.nrrd"
    sitk.WriteImage(itk, str(path))
    return pair(folder, path)


def corrupt_weights(folder: Path) -> list[str]:
    path = write(folder, "model.pt", b"PK\x03\x04 not really a zip file")
    return [*pair(folder, T1), "--features", "crosskey", "--weights", str(path)]


def wrong_architecture(folder: Path) -> list[str]:
    """A crossreg model file whose stored config does not fit its weights."""
    from crossreg.features.crosskey import CrossKeyConfig, DescriptorNet, save_model

    path = folder / "other.pt"
    save_model(path, DescriptorNet(CrossKeyConfig(channels=(8, 16))), {"data": "reliability"})
    payload = torch.load(path, weights_only=True)
    payload["config"]["channels"] = [16, 32, 48, 64]
    torch.save(payload, path)
    return [*pair(folder, T1), "--features", "crosskey", "--weights", str(path)]


def model_2d_for_3d(folder: Path) -> list[str]:
    from crossreg.features.crosskey import CrossKeyConfig, DescriptorNet, save_model

    path = folder / "model2d.pt"
    save_model(path, DescriptorNet(CrossKeyConfig(ndim=2)), {"data": "reliability"})
    return [*pair(folder, T1), "--features", "crosskey", "--weights", str(path)]


def unwritable(folder: Path) -> list[str]:
    (folder / "out").mkdir()
    (folder / "out" / "blocker").write_text("a file, not a folder\n")
    return [str(T1), str(T1), "--out", str(folder / "out" / "blocker" / "T.tfm")]


def read_only_fs(folder: Path) -> list[str]:
    return [str(T1), str(T1), "--out", "/sys/crossreg/T.tfm", "--qa", str(folder / "out" / "qa.png")]


def existing(folder: Path) -> list[str]:
    (folder / "out").mkdir()
    (folder / "out" / "qa.png").write_text("an older figure\n")
    return pair(folder, T1)


def bad_suffix(folder: Path) -> list[str]:
    return pair(folder, T1, resampled="R.xyz")


#: The dense paths' refusal of a pair without common anatomy (MIND-SSC and CrossKEY: one cause).
NO_COMMON_ANATOMY = (
    r"only \d+ of \d+ matches agree on a rigid transform .*: the images probably show no common"
)


CASES = (
    Case(
        "truncated NIfTI",
        "the T1 .nii cut to half its bytes",
        truncated,
        r"half\.nii: truncated file \(\d+ of",
    ),
    Case(
        "truncated .nii.gz",
        "the gzip stream cut 3 kB short",
        truncated_gz,
        r"cut\.nii\.gz: corrupt or truncated image file",
    ),
    Case(
        "wrong magic",
        "NIfTI magic `n+1` overwritten (ITK reads it as Analyze, flipped)",
        wrong_magic,
        r"magic\.nii: damaged NIfTI header \(magic bytes",
    ),
    Case(
        "not an image",
        "a text file named .nii.gz",
        not_an_image,
        r"notes\.nii\.gz: not a readable image \(unknown format",
    ),
    Case(
        "DICOM, mixed series",
        "one directory holding slices of two series",
        dicom_mixed,
        r"dicom: directory holds 2 DICOM series .*one series per directory",
    ),
    Case("4D image", "two T1 volumes joined along t", four_d, r"4d\.nii\.gz: 4D image"),
    Case("1-voxel image", "a 1x1x1 NIfTI", one_voxel, r"one\.nii\.gz: size 1x1x1 voxels; each axis needs"),
    Case("constant image", "40^3 voxels all 100", constant, r"constant\.nii\.gz: constant image"),
    Case(
        "NaN/Inf voxels",
        "the T1 as float with one NaN and one Inf",
        nan_voxels,
        r"nan\.nii\.gz: 2 NaN/Inf voxels",
    ),
    Case(
        "non-overlapping pair",
        "top 30 slices vs bottom 30 slices of the head",
        non_overlapping,
        r"only \d+ matches \(need \d+\) for a rigid fit: the images may not overlap",
        3,
    ),
    Case(
        "non-overlapping pair, dense",
        "the same with `--matching dense` (MIND-SSC)",
        lambda folder: [*non_overlapping(folder), "--matching", "dense"],
        NO_COMMON_ANATOMY,
        3,
    ),
    Case(
        "non-overlapping pair, CrossKEY",
        "the same with `--features crosskey` (shipped model, dense)",
        lambda folder: [*non_overlapping(folder), "--features", "crosskey"],
        NO_COMMON_ANATOMY,
        3,
    ),
    Case(
        "zero voxel size",
        "NIfTI pixdim[1] = 0 (ITK would read 1 mm)",
        zero_spacing,
        r"pixdim0\.nii: voxel size \(0\.0, 2\.0, 2\.0\) mm in the header is not physical",
    ),
    Case(
        "absurd spacing",
        "NRRD with 100 m voxels",
        absurd_spacing,
        r"huge\.nrrd: spacing \(100000\.0, 100000\.0, 100000\.0\) mm is not physical",
    ),
    Case(
        "sheared NIfTI",
        "sform with a shear (ITK would rotate it into another orientation)",
        sheared_nifti,
        r"sheared\.nii: sheared orientation \(sform axes not orthogonal\)",
    ),
    Case(
        "sheared direction",
        "NRRD with a non-orthonormal direction matrix",
        sheared_nrrd,
        r"sheared\.nrrd: direction matrix is not orthonormal",
    ),
    Case(
        "corrupt weights",
        "`--weights` file of random bytes",
        corrupt_weights,
        r"model\.pt: not a readable weights file",
    ),
    Case(
        "wrong-architecture weights",
        "model file whose config does not fit its weights",
        wrong_architecture,
        r"other\.pt: weights do not fit the crosskey network .* \(tensors: \d+ of another shape",
    ),
    Case(
        "2D model, 3D images",
        "a valid 2D CrossKEY model on 3D images",
        model_2d_for_3d,
        r"descriptor model is 2D but the images are 3D",
    ),
    Case(
        "unwritable output",
        "`--out` under a path component that is a file",
        unwritable,
        r"cannot write \S*blocker/T\.tfm: \S*blocker is not a directory",
    ),
    Case(
        "read-only output",
        "`--out` under /sys (not writable, even for root)",
        read_only_fs,
        r"cannot write /sys/crossreg/T\.tfm: /sys is not writable",
    ),
    Case(
        "existing output",
        "`--qa` file already there, no `--force`",
        existing,
        r"qa\.png exists; pass --force to overwrite it",
    ),
    Case(
        "unknown output format",
        "`--resampled R.xyz`",
        bad_suffix,
        r"R\.xyz: not a 3D image format crossreg writes",
    ),
)


# ---------------------------------------------------------------- running


def subprocess_invoke(args: list[str]) -> tuple[int, str]:
    """``python -m crossreg register *args``: exit code and stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "crossreg", "register", *args], capture_output=True, text=True, timeout=600
    )
    return done.returncode, done.stderr + done.stdout


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden temp files included) with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """Files that appeared or changed between two snapshots."""
    return [
        name + ("" if name not in before else " (changed)")
        for name in after
        if after[name] != before.get(name)
    ]


def run_case(case: Case, root: Path, invoke: Invoke = subprocess_invoke) -> Row:
    """Build ``case`` under ``root/<name>`` and run it through ``invoke``."""
    folder = root / case.name.replace(" ", "_").replace("/", "_")
    folder.mkdir(parents=True)
    args = case.make(folder)
    (folder / "out").mkdir(exist_ok=True)
    before = snapshot(folder / "out")
    code, text = invoke(args)
    left = leftovers(before, snapshot(folder / "out"))
    return Row(case, code, message(text, root), left, "Traceback" in text)


def message(text: str, root: Path) -> str:
    """The line a user reads (the error, or a success's summary), with the temporary folder removed."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    chosen = [ln for ln in lines if ln.startswith(("error:", "internal error:"))]
    chosen = chosen or [ln for ln in lines if "confidence" in ln] or lines[-1:] or [""]
    return chosen[-1].replace(str(root) + "/", "")


def interrupted(root: Path) -> tuple[Row, float]:
    """A valid registration, then the same one interrupted with SIGINT halfway: (row, seconds sent at)."""
    case = Case(
        "interrupted run",
        "SIGINT (Ctrl-C) halfway through a registration",
        lambda f: pair(f, T1),
        r"^interrupted: no output was written",
        130,
    )
    durations = []
    for attempt in range(2):  # the first run also warms the disk cache and bytecode: time the faster
        base = root / f"control{attempt}"
        base.mkdir()
        start = time.perf_counter()
        code, text = subprocess_invoke(pair(base, T1))
        if code != 0:
            raise RuntimeError(f"the valid control registration failed: {text}")
        durations.append(time.perf_counter() - start)
    halfway = min(durations) / 2
    folder = root / "interrupted"
    folder.mkdir()
    args = case.make(folder)
    (folder / "out").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "crossreg", "register", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    time.sleep(halfway)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=120)[0].decode()
    row = Row(
        case,
        proc.returncode,
        message(text, root),
        leftovers({}, snapshot(folder / "out")),
        "Traceback" in text,
    )
    return row, halfway


# ---------------------------------------------------------------- report


def table(rows: list[Row]) -> str:
    lines = [
        "| case | what was tried | exit | message users see | outputs left | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "BUG: " + "; ".join(r.problems()) if r.problems() else "ok"
        msg = r.message.replace("|", "\\|")
        msg = f"`` {msg} ``" if "`" in msg else f"`{msg}`"  # a message may quote a command in backticks
        left = ", ".join(r.left) or "none"
        lines.append(f"| {r.case.name} | {r.case.tried} | {r.exit_code} | {msg} | {left} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=Path("docs/reliability.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crossreg-reliability-") as tmp:
        root = Path(tmp)
        rows = []
        for case in CASES:
            rows.append(run_case(case, root))
            print(f"{case.name}: exit {rows[-1].exit_code}, {rows[-1].message}", file=sys.stderr)
        row, halfway = interrupted(root)
        rows.append(row)
    text = (
        f"{table(rows)}\n\nEvery run asks for all four outputs (`--out T.tfm --resampled R.nii.gz "
        "--qa qa.png --matches m.csv`, plus the two `.mrk.json` files beside `m.csv`); *outputs left* "
        "lists any file (temp files included) that appeared or changed in the output folder. The "
        f"interrupt came {halfway:.1f} s into the run (half the time the same registration took "
        "uninterrupted, the faster of two runs).\n\n"
        "Produced by:\n\n```\npython scripts/reliability.py " + shlex.join(sys.argv[1:]) + "\n```"
    )
    replace_section(args.doc, "bad-input", text)
    bugs = [r for r in rows if r.problems()]
    for r in bugs:
        print(f"BUG {r.case.name}: {'; '.join(r.problems())}", file=sys.stderr)
    sys.exit(1 if bugs else 0)


if __name__ == "__main__":
    main()
