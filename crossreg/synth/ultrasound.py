"""Synthetic intraoperative ultrasound (B-mode) from an MRI: a physics-inspired ray model, 2D and 3D.

The MRI's tissues (grey/white matter maps, or classes from T1 intensity) give three maps: diffuse
echogenicity, attenuation and a relative acoustic impedance. These are sampled on the probe's rays
(:mod:`crossreg.synth.beam`) and each ray is then simulated in one vectorised pass:

- specular reflection where impedance changes along the ray: ``|grad Z . ray|`` (angle dependent, so
  boundaries facing the probe are brightest), smoothed impedance so partial-volume sulci light up;
- speckle: complex Gaussian scatterers filtered by an anisotropic Gaussian PSF, whose magnitude is
  Rayleigh distributed in homogeneous tissue (mean/std = 1.91), scaled by the echogenicity;
- shadowing: the two-way transmission ``prod(1 - reflectivity)`` of everything above a sample;
- attenuation ``alpha * f`` (dB/cm/MHz) in tissue (not in fluid, hence enhancement behind the
  ventricles), partly compensated by time-gain compensation, which also amplifies receiver noise;
- log compression to a dynamic range, then scan conversion onto the output grid (0 outside the FOV).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from crossreg.filters import gaussian_blur, gaussian_kernel
from crossreg.image import Grid, Image
from crossreg.resample import grid_points_mm, on_grid, sample_world
from crossreg.synth.beam import Beam, Probe, make_beam, probe_pose_on_surface
from crossreg.synth.modality import tissue_fractions

MAX_BOUNDARY_ECHO = 3.0  # echogenicity of the brightest diffuse boundary


def _ranged(default: float, low: float, high: float) -> float:
    return field(default=default, metadata={"range": (low, high)})


@dataclass(frozen=True)
class UltrasoundConfig:
    """B-mode simulation parameters of :func:`simulate_ultrasound`. A numeric field's physical range,
    which :meth:`sample` draws from, stands beside its default: ``_ranged(default, low, high)``.
    """

    # Probe and field of view.
    probe: Probe = "curvilinear"  # "curvilinear" (a fan in 2D, a cone in 3D) or "linear"
    depth_mm: float = _ranged(60.0, 40.0, 80.0)  # image depth along the rays, mm
    opening_deg: float = _ranged(70.0, 50.0, 90.0)  # curvilinear: full opening angle, degrees
    width_mm: float = _ranged(40.0, 25.0, 50.0)  # linear: aperture width, mm
    # Attenuation: frequency_mhz x attenuation_db_cm_mhz dB/cm one way in tissue (fluid has none); tgc is
    # the fraction (0-1) of it that time-gain compensation gives back.
    frequency_mhz: float = _ranged(7.0, 5.0, 12.0)
    attenuation_db_cm_mhz: float = _ranged(0.6, 0.4, 0.9)
    tgc: float = _ranged(0.7, 0.5, 0.9)
    # Point-spread function: Gaussian sigma along / across the beam (across: at mid-depth), mm; these
    # are the speckle correlation lengths.
    speckle_axial_mm: float = _ranged(0.2, 0.15, 0.35)
    speckle_lateral_mm: float = _ranged(0.45, 0.3, 0.8)
    # Diffuse echogenicity per tissue: the RMS amplitude of its speckle (no unit).
    echo_csf: float = _ranged(0.02, 0.0, 0.05)
    echo_gm: float = _ranged(0.3, 0.2, 0.4)
    echo_wm: float = _ranged(0.4, 0.3, 0.5)
    echo_lesion: float = _ranged(2.0, 1.0, 3.0)
    # Acoustic impedance per tissue relative to CSF's (CSF: 0; no unit); its changes reflect.
    impedance_gm: float = _ranged(0.03, 0.02, 0.04)
    impedance_wm: float = _ranged(0.045, 0.03, 0.06)
    impedance_lesion: float = _ranged(0.25, 0.1, 0.4)
    # Gaussian sigma, mm, smoothing the impedance map, so partial-volume sulci reflect too.
    boundary_mm: float = _ranged(0.8, 0.5, 1.2)
    # Specular echo amplitude per unit reflectivity; reflectivity is per mm, so this is in mm.
    reflection_gain: float = _ranged(400.0, 250.0, 600.0)
    # Diffuse echogenicity of a boundary per unit impedance gradient (per mm, so this is in mm), whatever
    # the boundary's orientation; it saturates at MAX_BOUNDARY_ECHO.
    boundary_scatter_mm: float = _ranged(600.0, 300.0, 1000.0)
    # Exponent of |cos(angle between the ray and the boundary normal)| in specular reflection.
    angle_power: float = _ranged(1.0, 1.0, 2.0)
    # Receiver noise: RMS amplitude before time-gain compensation, in echogenicity units.
    noise: float = _ranged(0.0005, 0.0002, 0.002)
    # Log compression, dB: brightness = 1 + (20 log10(envelope) + gain_db) / dynamic_range_db, in [0, 1].
    dynamic_range_db: float = _ranged(50.0, 40.0, 60.0)
    gain_db: float = _ranged(-27.0, -33.0, -21.0)
    # Beam sampling step along the rays (and across them at full depth), mm; None: half the output
    # grid's finest spacing, at least 0.3 mm.
    beam_step_mm: float | None = None

    @classmethod
    def sample(cls, seed: int, probe: Probe | None = None) -> UltrasoundConfig:
        """A config with every ranged field drawn uniformly; the probe is curvilinear 3 times in 4
        unless given."""
        rng = np.random.default_rng(seed)
        drawn = {f.name: float(rng.uniform(*f.metadata["range"])) for f in fields(cls) if f.metadata}
        chosen = probe or ("curvilinear" if rng.uniform() < 0.75 else "linear")
        return replace(cls(), probe=chosen, **drawn)


def tissue_volumes(mri: Image, tissues: dict[str, Image] | None = None) -> dict[str, torch.Tensor]:
    """Fractions of ``csf``, ``gm``, ``wm`` and ``lesion`` per voxel of ``mri``, each ``(*mri.shape)``.

    tissues: ``gm``, ``wm`` probability maps (else classes from T1 intensity, see
    :func:`crossreg.synth.modality.tissue_fractions`) and optionally ``lesion``: a [0, 1] map of
    hyperechoic, strongly reflecting tissue (tumour, calcification, blood), which replaces the others.
    """
    maps = tissues if tissues is not None and "gm" in tissues else None
    frac = {k: torch.from_numpy(v).float() for k, v in tissue_fractions(mri, maps).items()}
    lesion = torch.zeros_like(frac["gm"])
    if tissues is not None and "lesion" in tissues:
        lesion = torch.from_numpy(np.clip(on_grid(tissues["lesion"], mri.grid), 0.0, 1.0)).float()
    return {**{k: v * (1.0 - lesion) for k, v in frac.items()}, "lesion": lesion}


def acoustic_maps(
    fractions: dict[str, torch.Tensor], grid: Grid, config: UltrasoundConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Echogenicity and one-way attenuation (dB/cm) ``(2, *grid.shape)``, and the world gradient of
    the smoothed relative impedance ``(d, *grid.shape)`` per mm (x, y, z), from :func:`tissue_volumes`."""
    c, f = config, fractions
    echo = c.echo_csf * f["csf"] + c.echo_gm * f["gm"] + c.echo_wm * f["wm"] + c.echo_lesion * f["lesion"]
    impedance = c.impedance_gm * f["gm"] + c.impedance_wm * f["wm"] + c.impedance_lesion * f["lesion"]
    alpha = c.attenuation_db_cm_mhz * c.frequency_mhz * (f["gm"] + f["wm"] + f["lesion"])
    gradient = _world_gradient(impedance, grid, c.boundary_mm)
    # Pia, arachnoid and vessels make boundaries scatter diffusely too, whatever their orientation;
    # the scatter saturates so a lesion's strong boundary does not outshine the lesion itself.
    ridges = c.boundary_scatter_mm * _ridges(gradient, grid)
    echo = echo + MAX_BOUNDARY_ECHO * torch.tanh(ridges / MAX_BOUNDARY_ECHO)
    return torch.stack([echo, alpha]), gradient


def _crop_to_beam(
    fractions: dict[str, torch.Tensor], grid: Grid, beam_points_mm: torch.Tensor, margin_mm: float
) -> tuple[dict[str, torch.Tensor], Grid]:
    """``fractions`` and ``grid`` cut to the box around the beam's samples ``(*P, d)`` plus a margin
    (the work then scales with the field of view, not with the MRI)."""
    flat = beam_points_mm.reshape(-1, grid.ndim)
    corners = torch.stack([flat.min(dim=0).values, flat.max(dim=0).values]).double().cpu().numpy()
    box_points = np.array(list(itertools.product(*corners.T)))
    index = grid.world_to_index(box_points)
    size = grid.size_xyz
    margin = np.ceil(margin_mm / np.asarray(grid.spacing_mm)).astype(int)
    lo = np.clip(np.floor(index.min(axis=0)).astype(int) - margin, 0, size - 2)
    hi = np.clip(np.ceil(index.max(axis=0)).astype(int) + margin, lo + 1, size - 1) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1], strict=True))
    origin = grid.index_to_world(lo[None].astype(float))[0]
    cropped = Grid(tuple(int(n) for n in (hi - lo)[::-1]), grid.spacing_mm, tuple(origin), grid.direction)
    return {k: v[box] for k, v in fractions.items()}, cropped


def _world_gradient(field: torch.Tensor, grid: Grid, sigma_mm: float) -> torch.Tensor:
    """World gradient per mm ``(d, *grid.shape)`` (x, y, z) of ``field`` smoothed by ``sigma_mm``."""
    smooth = gaussian_blur(field[None], tuple(sigma_mm / s for s in grid.spacing_mm[::-1]))[0]
    grads = torch.gradient(smooth, spacing=tuple(float(s) for s in grid.spacing_mm[::-1]))
    per_axis = torch.stack(grads[::-1])  # d/dmm along index x, y, z
    direction = torch.as_tensor(grid.direction, dtype=field.dtype, device=field.device)
    return torch.einsum("ij,j...->i...", direction, per_axis)


def _ridges(gradient: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``|gradient|`` ``(*grid.shape)`` kept where it peaks across the boundary (thin edges, Canny's
    non-maximum suppression along the gradient direction), zero elsewhere."""
    magnitude = gradient.norm(dim=0)
    normal = torch.movedim(gradient / magnitude.clamp_min(1e-12), 0, -1) * min(grid.spacing_mm)
    points = grid_points_mm(grid, gradient.device)
    ahead, behind = (sample_world(magnitude[None], grid, points + s * normal)[0] for s in (1.0, -1.0))
    return magnitude * ((magnitude >= ahead) & (magnitude >= behind))


def _reflectivity(gradient: torch.Tensor, rays: torch.Tensor, power: float) -> torch.Tensor:
    """Specular reflectivity per mm ``(*shape)``: ``|grad Z| |cos(angle to the ray)|^power``."""
    dot = (gradient * torch.movedim(rays, -1, 0)).sum(0).abs()
    norm = gradient.norm(dim=0).clamp_min(1e-12)
    return norm * (dot / norm) ** power


def _specular_peaks(reflect: torch.Tensor) -> torch.Tensor:
    """``reflect`` ``(*shape)`` kept only at its maxima along each ray: one echo per boundary."""
    before = F.pad(reflect[..., :-1], (1, 0))
    after = F.pad(reflect[..., 1:], (0, 1))
    return reflect * ((reflect >= before) & (reflect > after))


def _through_psf(
    beam: Beam, config: UltrasoundConfig, reflect: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tissue scatterers and receiver noise (complex, ``E|z|^2 = 1``) and specular echoes (real, peak
    amplitude = reflectivity per mm), each ``(*beam.shape)``, all filtered by the Gaussian PSF."""
    white = torch.randn((4, *beam.shape), generator=generator, device=generator.device)
    axial = config.speckle_axial_mm / beam.step_mm
    lateral = config.speckle_lateral_mm / beam.lateral_step_mm(beam.depth_mm / 2.0)
    sigma = (*(lateral,) * (beam.ndim - 1), axial)
    filtered = gaussian_blur(torch.cat([white, _specular_peaks(reflect)[None]]), sigma)
    noise = (
        filtered[:4]
        / (2.0 * filtered[:4].pow(2).mean(dim=tuple(range(1, beam.ndim + 1)), keepdim=True)).sqrt()
    )
    # A peak one sample thin keeps its height only if the axial kernel is peak-normalised.
    specular = filtered[4] / gaussian_kernel(axial).max()
    return torch.complex(noise[0], noise[1]), torch.complex(noise[2], noise[3]), specular


def echo_envelope(
    mri: Image, tissues: dict[str, Image] | None, config: UltrasoundConfig, beam: Beam, seed: int = 0
) -> torch.Tensor:
    """The received echo amplitude along every ray, before log compression: ``(*beam.shape)``."""
    generator = torch.Generator().manual_seed(int(seed))
    return envelope(tissue_volumes(mri, tissues), mri.grid, config, beam, generator)


def envelope(
    fractions: dict[str, torch.Tensor],
    grid: Grid,
    config: UltrasoundConfig,
    beam: Beam,
    generator: torch.Generator,
) -> torch.Tensor:
    """:func:`echo_envelope` from tissue fractions (:func:`tissue_volumes`) on ``grid``, computed on
    ``generator``'s device (the fractions' too): ``(*beam.shape)``."""
    device = generator.device
    points, rays = beam.samples_mm(device)
    margin_mm = 3.0 * config.boundary_mm + 2.0 * max(grid.spacing_mm)
    cropped, grid = _crop_to_beam(fractions, grid, points, margin_mm)
    maps, gradient = acoustic_maps(cropped, grid, config)
    echo, alpha = sample_world(maps, grid, points)
    reflect = _reflectivity(sample_world(gradient, grid, points), rays, config.angle_power)
    step = beam.step_mm
    one_way = torch.cumprod((1.0 - reflect * step).clamp(0.0, 1.0), dim=-1)
    transmission = torch.cat([torch.ones_like(one_way[..., :1]), one_way[..., :-1]], dim=-1) ** 2
    depth_cm = torch.linspace(0.0, beam.depth_mm / 10.0, beam.shape[-1], device=device)
    loss_db = 2.0 * (torch.cumsum(alpha, dim=-1) - alpha) * (step / 10.0)
    tgc_db = 2.0 * config.tgc * config.attenuation_db_cm_mhz * config.frequency_mhz * depth_cm
    speckle, receiver, specular = _through_psf(beam, config, reflect, generator)
    tissue = echo * speckle + config.reflection_gain * specular
    gain = 10.0 ** ((tgc_db - loss_db) / 20.0) * transmission
    return (tissue * gain + config.noise * 10.0 ** (tgc_db / 20.0) * receiver).abs()


def log_compress(envelope: torch.Tensor, config: UltrasoundConfig) -> torch.Tensor:
    """Display brightness in [0, 1]: ``1 + (20 log10(envelope) + gain_db) / dynamic_range_db``, clipped."""
    db = 20.0 * torch.log10(envelope.clamp_min(1e-12)) + config.gain_db
    return (1.0 + db / config.dynamic_range_db).clamp(0.0, 1.0)


def scan_convert(beam: Beam, values: torch.Tensor, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Beam-space ``values`` ``(*beam.shape)`` on ``grid``: an array of ``grid.shape`` (0 outside the
    field of view) and the field-of-view mask."""
    array, inside = scan_convert_tensor(beam, values, grid)
    return array.cpu().numpy(), inside.cpu().numpy()


def scan_convert_tensor(beam: Beam, values: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`scan_convert` on ``values``' device: tensors of ``grid.shape``."""
    coords, inside = beam.coordinates(grid_points_mm(grid, values.device).reshape(-1, grid.ndim))
    flat = coords.reshape(1, -1, *([1] * (beam.ndim - 1)), beam.ndim)
    sampled = F.grid_sample(
        values[None, None], flat.to(values.dtype), align_corners=True, padding_mode="border"
    )
    array = torch.where(inside, sampled.reshape(-1), 0.0)
    return array.reshape(grid.shape), inside.reshape(grid.shape)


def beam_for(config: UltrasoundConfig, apex_mm: np.ndarray, direction: np.ndarray, grid: Grid) -> Beam:
    """The beam of ``config``'s probe at a pose, sampled for output on ``grid``."""
    step = config.beam_step_mm or max(0.5 * min(grid.spacing_mm), 0.3)
    return make_beam(
        config.probe, apex_mm, direction, config.depth_mm, config.opening_deg, config.width_mm, step
    )


def simulate_ultrasound(
    mri: Image,
    tissues: dict[str, Image] | None = None,
    config: UltrasoundConfig | None = None,
    apex_mm: np.ndarray | None = None,
    direction: np.ndarray | None = None,
    seed: int = 0,
    grid: Grid | None = None,
) -> Image:
    """A synthetic B-mode ultrasound of ``mri`` on ``grid`` (the MRI's if None), brightness in [0, 1].

    apex_mm, direction: ``(d,)`` probe pose in world mm (from :func:`probe_pose_on_surface` with
    ``seed`` if None). tissues: see :func:`acoustic_maps`. The mask is the probe's field of view.
    """
    config = config or UltrasoundConfig()
    if apex_mm is None or direction is None:
        apex_mm, direction = probe_pose_on_surface(mri, seed)
    grid = grid or mri.grid
    beam = beam_for(config, apex_mm, direction, grid)
    with torch.no_grad():
        brightness = log_compress(echo_envelope(mri, tissues, config, beam, seed), config)
        array, inside = scan_convert(beam, brightness, grid)
    return Image(array.astype(np.float32), grid, inside, f"{mri.source} [synthetic ultrasound]")


def random_ultrasound(
    mri: Image,
    tissues: dict[str, Image] | None = None,
    seed: int = 0,
    pose: tuple[np.ndarray, np.ndarray] | None = None,
) -> Image:
    """:func:`simulate_ultrasound` with a random probe pose on the brain surface (or ``pose``: apex and
    inward direction, ``(d,)`` each, e.g. at a craniotomy) and random parameters
    (:meth:`UltrasoundConfig.sample`), on the MRI's grid: one training or benchmark example."""
    pose_seed, config_seed, speckle_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(3))
    apex_mm, direction = probe_pose_on_surface(mri, pose_seed) if pose is None else pose
    config = UltrasoundConfig.sample(config_seed)
    return simulate_ultrasound(mri, tissues, config, apex_mm, direction, speckle_seed)
