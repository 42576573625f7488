"""The 2D matcher's training loss: focal loss on the coarse dual softmax at the true matches, and the
squared error of the fine refinement against the true sub-pixel positions.

Ground truth comes from the pair generator's sampling map (:class:`crossreg.matcher2d.pairs.PairBatch`):
the centre of every coarse cell of ``image0`` that holds data is carried into ``image1``; the cell it
lands in is its true coarse match, and where in that cell it lands is the fine target. As in LoFTR,
only true matches are supervised: the dual softmax already spreads their loss over every rival pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossreg.matcher2d.match import Matcher2dConfig, cell_centres, coarse_masks, dual_softmax, refine
from crossreg.matcher2d.net import COARSE_STRIDE, MatcherNet, structure_input
from crossreg.matcher2d.pairs import PairBatch, sample


@dataclass(frozen=True)
class MatcherLossConfig:
    """Weights of the loss terms."""

    focal_gamma: float = 2.0  # focal loss exponent on the coarse confidence (0: plain NLL)
    focal_alpha: float = 0.25
    fine_weight: float = 1.0  # of the fine term (squared error in units of one coarse cell)


@dataclass(frozen=True, eq=False)
class CoarseTruth:
    """True coarse matches: pair index ``b``, image0 cell ``i``, image1 cell ``j`` (each ``(M,)``) and
    where image0's cell centre lands in image1, ``target_px`` ``(M, 2)``."""

    b: torch.Tensor
    i: torch.Tensor
    j: torch.Tensor
    target_px: torch.Tensor


def coarse_truth(pairs: PairBatch) -> CoarseTruth:
    """The true coarse matches of a batch of pairs."""
    batch, _, h, w = pairs.image0.shape
    cells_x, cells_y = w // COARSE_STRIDE, h // COARSE_STRIDE
    index = torch.arange(cells_x * cells_y, device=pairs.image0.device)
    centres = cell_centres(index, cells_x).expand(batch, -1, 2)  # (B, L0, 2)
    landed = sample(pairs.to1.permute(0, 3, 1, 2), centres).permute(0, 2, 1)  # (B, L0, 2)
    valid0 = sample(pairs.valid0[:, None].float(), centres, mode="nearest")[:, 0] > 0.5
    cell = torch.div(landed, COARSE_STRIDE, rounding_mode="floor").long()
    inside = ((cell >= 0) & (cell < torch.tensor([cells_x, cells_y], device=cell.device))).all(-1)
    j = cell[..., 1].clamp(0, cells_y - 1) * cells_x + cell[..., 0].clamp(0, cells_x - 1)
    valid1 = torch.gather(coarse_masks(pairs.mask1), 1, j)
    b, i = torch.nonzero(valid0 & inside & valid1, as_tuple=True)
    return CoarseTruth(b, i, j[b, i], landed[b, i])


def matcher_loss(
    net: MatcherNet, pairs: PairBatch, config: MatcherLossConfig, matching: Matcher2dConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of a batch of pairs and its statistics (coarse and fine terms, true matches per pair,
    the share of them the coarse stage ranks first in their row)."""
    truth = coarse_truth(pairs)
    c0, c1 = coarse_masks(pairs.mask0), coarse_masks(pairs.mask1)
    inputs0, inputs1 = structure_input(pairs.image0, pairs.mask0), structure_input(pairs.image1, pairs.mask1)
    f0, f1, fine0, fine1 = net(inputs0, inputs1, c0, c1)
    confidence = dual_softmax(f0, f1, c0, c1, matching.temperature)
    if len(truth.b) == 0:  # no overlap anywhere in the batch: nothing to learn, keep the graph
        zero = confidence.sum() * 0
        return zero, {"coarse": 0.0, "fine": 0.0, "truths": 0.0, "top1": 0.0}
    p = confidence[truth.b, truth.i, truth.j].clamp(1e-6, 1 - 1e-6)
    coarse = (-config.focal_alpha * (1 - p) ** config.focal_gamma * p.log()).mean()
    cells_x = pairs.image1.shape[-1] // COARSE_STRIDE
    p0 = cell_centres(truth.i, pairs.image0.shape[-1] // COARSE_STRIDE)
    p1 = cell_centres(truth.j, cells_x)
    offset = refine(fine0, fine1, truth.b, p0, p1, matching.window)
    fine = (((offset - (truth.target_px - p1)) / COARSE_STRIDE) ** 2).sum(-1).mean()
    top1 = (confidence[truth.b, truth.i].argmax(-1) == truth.j).float().mean()
    stats = {
        "coarse": float(coarse.detach()),
        "fine": float(fine.detach()),
        "truths": len(truth.b) / pairs.image0.shape[0],
        "top1": float(top1),
    }
    return coarse + config.fine_weight * fine, stats
