"""Coupled convex optimisation (Heinrich, Papiez, Schnabel, Handels, "Non-parametric discrete
registration with convex optimisation", WBIR 2014; the first half of ConvexAdam, Siebert et al. 2021).

Nodes sit on a coarse grid over the working grid (one every ``k`` voxels). Each node's cost of every
candidate displacement (a cube of ``(2R+1)^d`` steps) is the squared difference of its block-mean
MIND-SSC features and the moving features' block mean at the displaced position: one volume,
computed once. The search then alternates a per-node argmin of ``cost + coupling |u - smooth(u)|^2``
with smoothing the chosen field, the coupling growing from nearly nothing (each node on its own) to
strong (the field smooth): a global search, no local minimum to get stuck in, no gradient.

Everything here is in working voxels; displacement components are in ``(x, y, z)`` order, the
grid's index (and, on an axis-aligned working grid, world) axes.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from crossreg.filters import box_mean

# Coupling weights of the alternation, weak to strong, per squared search step of disagreement with
# the smoothed field, against costs normalised to mean 1.
COUPLINGS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
_CHUNK = 4096  # nodes per argmin batch: bounds the (candidates x nodes) temporary
# Per squared search step of displacement: breaks ties towards no displacement. A node with no cost
# (outside either field of view, or flat) otherwise took the first candidate, the far corner of the
# search cube (-capture_mm on every axis), and dragged its informed neighbours towards it.
_TIE = 1e-4


def candidates(radius_steps: int, step_vox: int, ndim: int, device: torch.device) -> torch.Tensor:
    """Candidate displacements ``(S, d)`` in voxels, ``(x, y, z)`` order, ``S = (2R+1)^d``."""
    ticks = range(-radius_steps, radius_steps + 1)
    offsets = torch.tensor(list(itertools.product(ticks, repeat=ndim)), dtype=torch.float32, device=device)
    return offsets.flip(-1) * step_vox  # product runs (z, y, x); components are (x, y, z)


def _pad_to_blocks(x: torch.Tensor, k: int, margin: int) -> torch.Tensor:
    """``x`` ``(C, *spatial)`` zero padded by ``margin`` before and ``margin`` plus up to a whole
    block after each axis, so that blocks of ``k`` tile the original extent."""
    pad = []
    for n in reversed(x.shape[1:]):
        pad += [margin, margin + (-n) % k]
    return F.pad(x[None], pad)[0]


def cost_volume(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    fixed_mask: torch.Tensor,
    moving_mask: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    radius_steps: int,
    step_vox: int,
) -> torch.Tensor:
    """Matching cost ``(S, *nodes)`` of every candidate of :func:`candidates` at every node.

    fixed, moving: ``(C, *spatial)`` features on one grid; masks ``(*spatial)`` bool. A candidate that
    looks outside the moving mask costs what the node's valid candidates cost on average; a node
    outside the fixed mask, or with no valid candidate, costs nothing anywhere: the coupling alone
    places it. Costs are normalised to mean 1 over valid entries, then scaled by the node's block mean
    of ``weight`` ``(*spatial)`` in [0, 1] (structure confidence): a flat node hardly pulls.
    """
    margin = radius_steps * step_vox
    f = _pad_to_blocks(torch.cat([fixed, weight[None], fixed_mask[None].float()]), k, 0)
    m = _pad_to_blocks(torch.cat([moving, moving_mask[None].float()]), k, margin)
    pool = F.avg_pool3d if fixed.dim() == 4 else F.avg_pool2d
    f_nodes = pool(f[None], k, stride=k)[0]
    m_blocks = pool(m[None], k, stride=1)[0]
    f_nodes, node_weight = torch.cat([f_nodes[:-2], f_nodes[-1:]]), f_nodes[-2]
    nodes = f_nodes.shape[1:]
    # The block means in k^d phases (voxel index mod k), each contiguous: every candidate then reads
    # one contiguous slice of one phase instead of a strided gather.
    phases = {
        phase: m_blocks[(slice(None), *(slice(p, None, k) for p in phase))].contiguous()
        for phase in itertools.product(range(k), repeat=len(nodes))
    }
    ticks = range(-radius_steps, radius_steps + 1)
    width = len(ticks)
    cost = torch.empty((width ** len(nodes), *nodes), dtype=fixed.dtype, device=fixed.device)
    inside = torch.empty_like(cost, dtype=torch.bool)
    # One batch per row of candidates (all x offsets of one (z, y) offset): few, large operations.
    for r, row in enumerate(itertools.product(ticks, repeat=len(nodes) - 1)):
        views = []
        for ox in ticks:
            start = [margin + o * step_vox for o in (*row, ox)]
            phase = phases[tuple(a % k for a in start)]
            views.append(
                phase[(slice(None), *(slice(a // k, a // k + n) for a, n in zip(start, nodes, strict=True)))]
            )
        batch = torch.stack(views)
        cost[r * width : (r + 1) * width] = ((f_nodes[None, :-1] - batch[:, :-1]) ** 2).mean(1)
        inside[r * width : (r + 1) * width] = batch[:, -1] > 0.5
    count = inside.sum(0)
    mean = torch.where(inside, cost, 0.0).sum(0) / count.clamp(min=1)
    cost = torch.where(inside, cost, mean)
    cost = torch.where((f_nodes[-1] > 0.5) & (count > 0), cost, 0.0)
    cost = box_mean(cost, 1)  # ConvexAdam's spatial aggregation: a node's cost sees its neighbours
    return cost / cost[cost > 0].mean().clamp(min=1e-12) * box_mean(node_weight[None], 1)


def coupled_convex(cost: torch.Tensor, offsets: torch.Tensor, step_vox: float) -> torch.Tensor:
    """Smooth node displacements ``(d, *nodes)`` (voxels) minimising ``cost`` ``(S, *nodes)`` over the
    candidates ``offsets`` ``(S, d)`` under growing coupling to the smoothed field."""
    d = offsets.shape[1]
    nodes = cost.shape[1:]
    sq = (offsets**2).sum(1, keepdim=True) / step_vox**2
    flat = cost.reshape(len(offsets), -1) + _TIE * sq
    choice = flat.argmin(0)
    smooth = _smoothed(offsets[choice], nodes)
    for coupling in COUPLINGS:
        target = smooth.reshape(d, -1)
        for a in range(0, flat.shape[1], _CHUNK):
            t = target[:, a : a + _CHUNK] / step_vox
            gap = sq - 2.0 * (offsets / step_vox) @ t + (t**2).sum(0, keepdim=True)
            choice[a : a + _CHUNK] = (flat[:, a : a + _CHUNK] + coupling * gap).argmin(0)
        smooth = _smoothed(offsets[choice], nodes)
    return smooth


def _smoothed(chosen: torch.Tensor, nodes: torch.Size) -> torch.Tensor:
    """Node displacements ``(N, d)`` as a field ``(d, *nodes)``, box-smoothed over 3 nodes per axis."""
    field = chosen.T.reshape(chosen.shape[1], *nodes)
    return box_mean(field, 1)


def to_voxels(node_field: torch.Tensor, k: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Node displacements ``(d, *nodes)`` interpolated onto the working grid ``(d, *shape)``.

    Node ``n`` sits at the centre of block ``n`` (voxels ``k n .. k n + k - 1``), which is where
    ``align_corners=False`` interpolation puts it.
    """
    padded = [n * k for n in node_field.shape[1:]]
    mode = "trilinear" if node_field.dim() == 4 else "bilinear"
    full = F.interpolate(node_field[None], size=padded, mode=mode, align_corners=False)[0]
    return full[(slice(None), *(slice(0, n) for n in shape))]
