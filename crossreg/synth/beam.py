"""Ultrasound probe geometry: where a probe sits, the rays it fires, and the field of view they cover.

A probe pose is an apex ``apex_mm (d,)`` (world mm, LPS) and a unit beam direction ``(d,)``. A
curvilinear probe fires rays from the apex over an opening angle (a fan in 2D, a circular cone in 3D);
a linear probe fires parallel rays across a ``width_mm`` aperture (a rectangle, a square prism in 3D).

Beam space samples the field of view as rays x depth. Its tensors are ``(*lateral, n_depth)``: depth
is the last axis, lateral axes before it in reverse (3D: ``(n_b, n_a, n_depth)``), so ``grid_sample``
coordinates read ``(depth, lateral_a, lateral_b)``, each normalised to [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from crossreg.filters import erode, gaussian_blur
from crossreg.image import Grid, Image, fov_mask

Probe = Literal["curvilinear", "linear"]


def beam_basis(direction: np.ndarray) -> np.ndarray:
    """``(d, d)`` orthonormal world frame of a beam: columns are the lateral axes, then the beam axis.

    2D: ``[u, w]`` with ``det = 1``. 3D: ``[u, v, w]`` with ``v = u x w``, so the display grid
    ``[u, w, v]`` of :func:`beam_grid` is right-handed. The frame depends only on ``direction``.
    """
    w = np.asarray(direction, float) / np.linalg.norm(direction)
    if w.size == 2:
        return np.column_stack([[w[1], -w[0]], w])
    helper = np.eye(3)[int(np.argmin(np.abs(w)))]
    u = np.cross(w, helper)
    u /= np.linalg.norm(u)
    return np.column_stack([u, np.cross(u, w), w])


@dataclass(frozen=True, eq=False)
class Beam:
    """The rays x depth sampling of one probe pose.

    apex_mm: ``(d,)`` world mm. basis: ``(d, d)`` from :func:`beam_basis`. half_width: sine of the half
    opening angle (curvilinear) or half the aperture in mm (linear). shape: ``(*lateral, n_depth)``.
    """

    probe: Probe
    apex_mm: np.ndarray
    basis: np.ndarray
    half_width: float
    depth_mm: float
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def step_mm(self) -> float:
        """Spacing of the samples along each ray."""
        return self.depth_mm / (self.shape[-1] - 1)

    def lateral_step_mm(self, depth_mm: float) -> float:
        """Spacing of neighbouring rays at ``depth_mm`` (for a linear probe: at every depth)."""
        step = 2.0 * self.half_width / (self.shape[0] - 1)
        return step * depth_mm if self.probe == "curvilinear" else step

    def samples_mm(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """World positions and unit ray directions of every beam sample, each ``(*shape, d)`` float32."""
        axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float64, device=device) for n in self.shape]
        mesh = torch.meshgrid(*axes, indexing="ij")
        lateral = torch.stack(mesh[:-1][::-1], dim=-1) * self.half_width  # (..., d-1) in (a, b) order
        depth = (mesh[-1] + 1.0) * (self.depth_mm / 2.0)
        basis = torch.as_tensor(self.basis, dtype=torch.float64, device=device)
        apex = torch.as_tensor(self.apex_mm, dtype=torch.float64, device=device)
        if self.probe == "curvilinear":
            axial = torch.sqrt(torch.clamp(1.0 - (lateral**2).sum(-1, keepdim=True), min=0.0))
            rays = torch.cat([lateral, axial], dim=-1) @ basis.T
            points = apex + depth[..., None] * rays
        else:
            rays = basis[:, -1].expand(*self.shape, self.ndim)
            points = apex + torch.cat([lateral, depth[..., None]], dim=-1) @ basis.T
        return points.float(), rays.float().contiguous()

    def coordinates(self, points_mm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised beam coordinates ``(N, d)`` (depth, lateral_a[, lateral_b]) of world points
        ``(N, d)``, and whether each lies in the field of view ``(N,)`` bool."""
        basis = torch.as_tensor(self.basis, dtype=points_mm.dtype, device=points_mm.device)
        apex = torch.as_tensor(self.apex_mm, dtype=points_mm.dtype, device=points_mm.device)
        local = (points_mm - apex) @ basis  # (N, d): lateral..., along the beam axis
        if self.probe == "curvilinear":
            r = local.norm(dim=1).clamp_min(1e-6)
            lateral = local[:, :-1] / r[:, None] / self.half_width
            along = r
            inside = (r <= self.depth_mm) & ((lateral**2).sum(1) <= 1.0) & (local[:, -1] >= 0)
        else:
            lateral = local[:, :-1] / self.half_width
            along = local[:, -1]
            inside = (lateral.abs() <= 1.0).all(1) & (along >= 0) & (along <= self.depth_mm)
        depth = along * (2.0 / self.depth_mm) - 1.0
        return torch.cat([depth[:, None], lateral], dim=1), inside


def make_beam(
    probe: Probe,
    apex_mm: np.ndarray,
    direction: np.ndarray,
    depth_mm: float,
    opening_deg: float,
    width_mm: float,
    step_mm: float,
) -> Beam:
    """The beam of a probe pose, sampled every ``step_mm`` along rays and (at full depth) across them."""
    apex = np.asarray(apex_mm, float)
    if probe == "curvilinear":
        half = float(np.sin(np.radians(opening_deg) / 2.0))
        span_mm = 2.0 * half * depth_mm
    elif probe == "linear":
        half, span_mm = width_mm / 2.0, width_mm
    else:
        raise ValueError(f"unknown probe {probe!r}; use 'curvilinear' or 'linear'")
    n_lat = int(np.ceil(span_mm / step_mm)) + 1
    n_depth = int(np.ceil(depth_mm / step_mm)) + 1
    shape = (*(n_lat,) * (apex.size - 1), n_depth)
    return Beam(probe, apex, beam_basis(direction), half, float(depth_mm), shape)


def beam_grid(beam: Beam, spacing_mm: float, lateral_axis: int = 0, thin: bool = False) -> Grid:
    """A grid aligned with the beam covering its field of view, as an ultrasound screen shows it.

    Index x runs along lateral axis ``lateral_axis`` (0: u, 1: v in 3D), y along the beam (depth
    down), z (3D) across. ``thin`` keeps one z slice through the apex: the plane of the beam axis.
    """
    d = beam.ndim
    half_mm = beam.half_width * beam.depth_mm if beam.probe == "curvilinear" else beam.half_width
    u, w = beam.basis[:, lateral_axis], beam.basis[:, -1]
    n_lat = int(np.ceil(2.0 * half_mm / spacing_mm)) + 1
    n_depth = int(np.ceil(beam.depth_mm / spacing_mm)) + 1
    start = beam.apex_mm - u * spacing_mm * (n_lat - 1) / 2.0
    if d == 2:
        return Grid((n_depth, n_lat), (spacing_mm,) * 2, tuple(start), np.column_stack([u, w]))
    v = np.cross(u, w)
    n_across = 1 if thin else n_lat
    origin = start - v * spacing_mm * (n_across - 1) / 2.0
    direction = np.column_stack([u, w, v])
    return Grid((n_across, n_depth, n_lat), (spacing_mm,) * 3, tuple(origin), direction)


def probe_pose_on_surface(
    mri: Image, seed: int = 0, mask: np.ndarray | None = None, max_tilt_deg: float = 15.0
) -> tuple[np.ndarray, np.ndarray]:
    """A probe pose on the brain surface: apex ``(d,)`` world mm and inward unit direction ``(d,)``.

    One of :func:`surface_poses` drawn uniformly, tilted by a random angle up to ``max_tilt_deg``.
    """
    rng = np.random.default_rng(seed)
    apexes, directions = surface_poses(mri, mask)
    pick = int(rng.choice(len(apexes)))
    return apexes[pick], tilt(directions[pick], rng.uniform(0.0, max_tilt_deg), rng)


def surface_poses(mri: Image, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every untilted probe pose on the brain surface: apexes ``(K, d)`` world mm and inward unit
    directions ``(K, d)``.

    The apexes are the voxel centres on the border of ``mask`` (the image's signal,
    :func:`crossreg.image.fov_mask`, if None); in 3D only where the surface faces up (superior, a
    craniotomy on the convexity, not the skull base). Each beam points halfway between the inward
    surface normal and the mask centroid.
    """
    region = fov_mask(mri) if mask is None else np.asarray(mask, bool)
    outward = _outward_normals(mri, region)  # (d, *shape), world
    surface = region & ~erode(torch.from_numpy(region), 1).numpy()
    if mri.ndim == 3:
        surface &= outward[2] > 0.2 * np.linalg.norm(outward, axis=0)
    index = np.argwhere(surface)
    if index.size == 0:
        raise ValueError("probe_pose_on_surface: the mask has no (upward-facing) surface voxels")
    apexes = mri.grid.index_to_world(index[:, ::-1].astype(float))
    inward = -outward[(slice(None), *index.T)].T
    centroid = mri.grid.index_to_world(np.argwhere(region)[:, ::-1].mean(axis=0)[None])[0]
    directions = _units(_units(inward) + _units(centroid - apexes))
    return apexes, directions


def _outward_normals(image: Image, region: np.ndarray, smooth_mm: float = 4.0) -> np.ndarray:
    """Minus the world gradient of the smoothed mask, ``(d, *shape)``: points out of the region."""
    sigma = tuple(smooth_mm / s for s in image.spacing_mm[::-1])
    soft = gaussian_blur(torch.from_numpy(region.astype(np.float32))[None], sigma)[0]
    grads = torch.gradient(soft, spacing=tuple(float(s) for s in image.spacing_mm[::-1]))
    per_axis = np.stack([g.numpy() for g in grads[::-1]])  # (d, *shape): d/dmm along index x, y, z
    return -np.einsum("ij,j...->i...", np.asarray(image.direction, float), per_axis)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _units(v: np.ndarray) -> np.ndarray:
    """Rows of ``v`` ``(K, d)`` scaled to unit length."""
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def tilt(direction: np.ndarray, angle_deg: float, rng: np.random.Generator) -> np.ndarray:
    """``direction`` turned by ``angle_deg`` towards a random perpendicular direction."""
    perp = rng.standard_normal(direction.size)
    perp = _unit(perp - (perp @ direction) * direction)
    a = np.radians(angle_deg)
    return np.cos(a) * direction + np.sin(a) * perp
