"""The registration methods a benchmark compares: crossreg configurations, identity, and intensity-based
rigid baselines (SimpleITK, and ANTsPy and itk-elastix when installed: ``pip install 'crossreg[bench]'``).

Every method is ``(fixed, moving, seed) -> MethodOutput`` with the transform in crossreg's convention,
fixed world mm -> moving world mm. SimpleITK's ``ImageRegistrationMethod``, ANTs' forward transforms of
``registration(fixed, moving)`` and elastix's ``TransformParameters`` all map fixed points to moving
points as well, so each result is only converted, never inverted (tests/test_bench.py checks each).
A method that gives up (crossreg's RegistrationFailed, an ITK optimiser that loses the overlap)
returns ``failed`` with the message instead of a transform.

Reproducibility: each baseline seeds its metric sampling from the case seed, but ITK's multi-threaded
metrics can differ in the last bits between runs, and ANTs' may then stop in another optimum. One thread
makes a seed's answer exact. ANTs takes no thread count per call: its own copy of ITK reads
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process, at its first registration, so the variable
must be set before that (tests/conftest.py sets 1; ``crossreg bench`` leaves ITK's default, all cores).
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from crossreg.config import DenseConfig, RegisterConfig
from crossreg.correspond import MATCHERS
from crossreg.deformation import DeformableTransform
from crossreg.errors import NoOverlapError, RegistrationFailed
from crossreg.features import FEATURES
from crossreg.features.weights import shipped_weights
from crossreg.image import Image, fov_mask
from crossreg.imageio import to_sitk
from crossreg.matcher2d.match import SHIPPED
from crossreg.register import Registrator
from crossreg.transform import AffineTransform, from_sitk, read_transform


@dataclass(frozen=True, eq=False)
class MethodOutput:
    """What one method gave on one case.

    transform: fixed world mm -> moving world mm (linear or deformable), or None when ``failed``.
    seconds: wall time.
    matches: ``(fixed_mm (M, d), moving_mm (M, d))`` putative correspondences, for feature methods.
    failed: why no transform was returned (the method's own message), else None.
    """

    transform: AffineTransform | DeformableTransform | None
    seconds: float
    matches: tuple[np.ndarray, np.ndarray] | None = None
    failed: str | None = None


MethodFn = Callable[[Image, Image, int], MethodOutput]


@dataclass(frozen=True)
class Method:
    """A named registration method; ``requires`` lists the modules it imports (optional extras),
    ``ndims`` the image dimensions it registers (other cases are not run)."""

    name: str
    run: MethodFn
    requires: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    ndims: tuple[int, ...] = (2, 3)

    def missing(self) -> str | None:
        """Why the method cannot run here ("not installed: ...", "no file ..."), or None if it can."""
        for path in self.files:
            if not path.is_file():
                return f"no file {path} (train it with `crossreg train`)"
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:  # the parent package of a dotted name is absent
                found = False
            if not found:
                return f"not installed: {module} (pip install 'crossreg[bench]')"
        return None


def _failure(start: float, err: Exception) -> MethodOutput:
    message = " ".join(str(err).split()) or type(err).__name__
    return MethodOutput(None, time.perf_counter() - start, None, message)


# ---------------------------------------------------------------- crossreg and identity


def crossreg_method(name: str = "crossreg", config: RegisterConfig | None = None) -> Method:
    """crossreg.register with ``config`` (its seed replaced by the case seed); matches are all putative.
    One Registrator serves every case: its models load on the method's first case and stay."""
    config = config or RegisterConfig()
    registrator = Registrator(config)
    files = (Path(config.weights),) if config.weights else ()
    if config.matching == "matcher2d":
        files += (Path(config.matcher2d.weights) if config.matcher2d.weights else shipped_weights(SHIPPED),)

    def run(fixed: Image, moving: Image, seed: int) -> MethodOutput:
        start = time.perf_counter()
        try:
            result = registrator.register(fixed, moving, seed=seed)
        except (RegistrationFailed, NoOverlapError) as err:
            return _failure(start, err)
        matches = (result.fixed_points_mm, result.moving_points_mm)
        return MethodOutput(result.transform, time.perf_counter() - start, matches)

    return Method(name, run, files=files, ndims=(2,) if config.matching == "matcher2d" else (2, 3))


def identity(fixed: Image, moving: Image, seed: int) -> MethodOutput:
    """No registration: the images' own world coordinates (gives the initial error)."""
    return MethodOutput(AffineTransform.identity(fixed.ndim), 0.0)


# ---------------------------------------------------------------- SimpleITK


@dataclass(frozen=True)
class SitkRigidConfig:
    """A multi-resolution Mattes-MI rigid registration as an ITK user would set it up.

    shrink_factors / smoothing_sigmas_mm: the pyramid (coarse to fine); learning_rate_mm and
    min_step_mm: regular-step gradient descent with optimiser scales from physical shift, so steps
    are about millimetres of voxel motion for rotations and translations alike.
    """

    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (4.0, 2.0, 0.0)
    histogram_bins: int = 32
    sampling_fraction: float = 0.25
    learning_rate_mm: float = 2.0
    min_step_mm: float = 1e-3
    iterations: int = 200


def _fov_mask_sitk(image: Image, like: sitk.Image) -> sitk.Image:
    """The image's field of view (signal and valid voxels) as a SimpleITK uint8 mask."""
    mask = sitk.GetImageFromArray(fov_mask(image).astype(np.uint8))
    mask.CopyInformation(like)
    return mask


def sitk_rigid(fixed: Image, moving: Image, seed: int, config: SitkRigidConfig | None = None) -> MethodOutput:
    """Rigid SimpleITK registration: geometric-centre start, Mattes MI within the FOV masks, 3 levels."""
    config = config or SitkRigidConfig()
    start = time.perf_counter()
    f_itk, m_itk = to_sitk(fixed), to_sitk(moving)
    euler = sitk.Euler3DTransform() if fixed.ndim == 3 else sitk.Euler2DTransform()
    initial = sitk.CenteredTransformInitializer(
        f_itk, m_itk, euler, sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(config.sampling_fraction, seed + 1)  # ITK seed 0 means "the clock"
    reg.SetMetricFixedMask(_fov_mask_sitk(fixed, f_itk))
    reg.SetMetricMovingMask(_fov_mask_sitk(moving, m_itk))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=config.learning_rate_mm,
        minStep=config.min_step_mm,
        numberOfIterations=config.iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(config.shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(config.smoothing_sigmas_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    try:
        found = reg.Execute(f_itk, m_itk)
    except RuntimeError as err:  # e.g. "All samples map outside moving image buffer"
        return _failure(start, err)
    return MethodOutput(from_sitk(found, "SimpleITK result"), time.perf_counter() - start)


# ---------------------------------------------------------------- ANTsPy


def to_ants(array: np.ndarray, image: Image):
    """An ANTsImage of ``array`` (numpy order ``(z, y, x)``) on the image's grid."""
    import ants

    return ants.from_numpy(
        np.ascontiguousarray(array.T, np.float32),
        origin=tuple(image.origin_mm),
        spacing=tuple(image.spacing_mm),
        direction=np.asarray(image.direction, float),
    )


@dataclass(frozen=True)
class AntsRigidConfig:
    """The ANTsPy ``registration`` setting crossreg varies; the default is ANTsPy's own."""

    # Fraction of voxels the Mattes MI metric uses at every level (aff_random_sampling_rate: a regular
    # grid, each point jittered by the seeded generator). 0.2 leaves ~30 samples at the 6x-shrunk first
    # level of a 2 mm 2D brain slice, where MI is noise and a few seeds in a hundred end tens of mm off;
    # 1.0 (ANTsPy's "DenseRigid") uses every voxel: four times slower on a 2 mm brain volume.
    sampling_rate: float = 0.2


def ants_rigid(fixed: Image, moving: Image, seed: int, config: AntsRigidConfig | None = None) -> MethodOutput:
    """ANTsPy ``registration(type_of_transform="Rigid")``: its defaults (Mattes MI, 4 levels shrunk
    6/4/2/1, centre-of-mass start) with the FOV masks; reproducible for a seed with one ITK thread."""
    import ants
    import ants.config

    config = config or AntsRigidConfig()
    start = time.perf_counter()
    # on=False only sets the --random-seed that registration() passes. on=True would also seed numpy's and
    # random's global generators and set ITK's thread variable, which ITK has read by then if ANTs ran.
    ants.config.set_ants_deterministic(on=False, seed_value=seed + 1)
    with tempfile.TemporaryDirectory(prefix="crossreg-ants-") as tmp:
        try:
            out = ants.registration(
                fixed=to_ants(fixed.array, fixed),
                moving=to_ants(moving.array, moving),
                type_of_transform="Rigid",
                aff_metric="mattes",
                aff_random_sampling_rate=config.sampling_rate,
                mask=to_ants(fov_mask(fixed).astype(np.float32), fixed),
                moving_mask=to_ants(fov_mask(moving).astype(np.float32), moving),
                outprefix=str(Path(tmp) / "ants_"),
            )
        except RuntimeError as err:
            return _failure(start, err)
        transform = read_transform(out["fwdtransforms"][0])
    return MethodOutput(transform, time.perf_counter() - start)


# ---------------------------------------------------------------- itk-elastix


def _to_itk(array: np.ndarray, image: Image, dtype: type = np.float32):
    """An ITK image of ``array`` (numpy order) on the image's grid."""
    import itk

    out = itk.image_from_array(np.ascontiguousarray(array, dtype))
    out.SetSpacing([float(s) for s in image.spacing_mm])
    out.SetOrigin([float(o) for o in image.origin_mm])
    out.SetDirection(itk.matrix_from_array(np.ascontiguousarray(image.direction, float)))
    return out


def elastix_rigid(fixed: Image, moving: Image, seed: int) -> MethodOutput:
    """itk-elastix with its default rigid parameter map (EulerTransform, AdvancedMattesMutualInformation,
    4 levels), started at the geometric centres (as SimpleITK), within the FOV masks."""
    import itk

    itk.elastix_registration_method  # noqa: B018  first access loads elastix (seconds): not timed
    start = time.perf_counter()
    params = itk.ParameterObject.New()
    rigid = params.GetDefaultParameterMap("rigid")
    rigid["AutomaticTransformInitialization"] = ["true"]
    rigid["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
    rigid["WriteResultImage"] = ["false"]
    rigid["ErodeMask"] = ["false"]  # eroding by the coarse kernel empties a partial-FOV mask
    rigid["RandomSeed"] = [str(seed + 1)]
    params.AddParameterMap(rigid)
    with tempfile.TemporaryDirectory(prefix="crossreg-elastix-") as tmp:
        try:
            found = run_elastix(fixed, moving, params, Path(tmp))
        except RuntimeError as err:
            return _failure(start, err)
    transform = _euler_from_elastix(found.GetParameterMap(0))
    return MethodOutput(transform, time.perf_counter() - start)


def run_elastix(fixed: Image, moving: Image, params, log_dir: Path):
    """elastix of ``moving`` to ``fixed`` with the parameter object ``params``, within both FOV masks,
    logging to ``log_dir``: its result transform parameter object. Raises RuntimeError with the log's
    reason (elastix's own message only says "see the log")."""
    import itk

    try:
        _, found = itk.elastix_registration_method(
            _to_itk(fixed.array, fixed),
            _to_itk(moving.array, moving),
            parameter_object=params,
            fixed_mask=_to_itk(fov_mask(fixed), fixed, np.uint8),
            moving_mask=_to_itk(fov_mask(moving), moving, np.uint8),
            output_directory=str(log_dir),
            log_to_file=True,
            log_to_console=False,
        )
    except RuntimeError as err:
        raise RuntimeError(_elastix_error(log_dir) or str(err)) from None
    return found


def _elastix_error(log_dir: Path) -> str | None:
    """The last ITK error description in elastix's log, if any."""
    lines = [ln for p in log_dir.glob("*.log") for ln in p.read_text(errors="replace").splitlines()]
    found = [ln.split("Description:", 1)[1].strip() for ln in lines if "Description:" in ln]
    return found[-1] if found else None


def _euler_from_elastix(pmap) -> AffineTransform:
    """crossreg transform of an elastix EulerTransform parameter map (angles in radians, then shift)."""
    p = [float(v) for v in pmap["TransformParameters"]]
    center = [float(v) for v in pmap["CenterOfRotationPoint"]]
    if len(center) == 2:
        tx = sitk.Euler2DTransform(center, p[0], p[1:])
    else:
        tx = sitk.Euler3DTransform(center, p[0], p[1], p[2], p[3:])
        zyx = pmap["ComputeZYX"][0] if "ComputeZYX" in pmap else "false"
        tx.SetComputeZYX(zyx == "true")
    return from_sitk(tx, "elastix result")


# ---------------------------------------------------------------- the default line-up


#: A kind of features' name in the benchmark: MIND-SSC is crossreg's default, plainly ``crossreg``.
_BENCH_NAME = {"mind": "crossreg"}


def crossreg_methods(device: str = "cpu", weights: str | None = None) -> list[Method]:
    """For every kind of :data:`crossreg.features.FEATURES`: ``<name>`` (the defaults),
    ``<name>-norefine``, and ``<name>-<matcher>`` for every descriptor matcher of
    :data:`crossreg.correspond.MATCHERS` forced; then ``crosskey-learned``, CrossKEY's learned
    descriptor alone (no MIND-SSC re-ranking, no refinement), ``crossreg-matcher2d``, the 2D
    matcher network alone (2D cases only; MIND-SSC for its round trip), and ``crossreg-descriptors``,
    MIND-SSC matching without the network (on 3D the same as ``crossreg``). ``weights``: a model file for the
    learned features (None: the shipped ones)."""
    methods = []
    for kind in FEATURES:
        name = _BENCH_NAME.get(kind, kind)
        config = RegisterConfig(features=kind, weights=None if kind == "mind" else weights, device=device)
        methods += [
            crossreg_method(name, config),
            crossreg_method(f"{name}-norefine", replace(config, refine=None)),
        ]
        ways = [way for way in MATCHERS if way != "matcher2d"]
        methods += [crossreg_method(f"{name}-{way}", replace(config, matching=way)) for way in ways]
    crosskey = RegisterConfig(features="crosskey", weights=weights, device=device, refine=None)
    return [
        *methods,
        crossreg_method("crosskey-learned", replace(crosskey, dense=DenseConfig(shortlist=0))),
        crossreg_method("crossreg-matcher2d", RegisterConfig(matching="matcher2d", device=device)),
        crossreg_method("crossreg-descriptors", RegisterConfig(matching="descriptors", device=device)),
    ]


def default_methods(device: str = "cpu", weights: str | None = None) -> list[Method]:
    """identity, :func:`crossreg_methods`, and SimpleITK, ANTsPy and elastix rigid."""
    return [
        Method("identity", identity),
        *crossreg_methods(device, weights),
        Method("simpleitk-mi", sitk_rigid),
        Method("ants-rigid", ants_rigid, ("ants",)),
        Method("elastix-rigid", elastix_rigid, ("itk.ElastixPython",)),
    ]
