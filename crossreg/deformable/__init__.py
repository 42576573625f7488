"""The deformable stage: ConvexAdam-style registration after the linear result (:func:`deform`)."""

from crossreg.deformable.config import DeformableConfig
from crossreg.deformable.stage import DeformableResult, deform

__all__ = ["DeformableConfig", "DeformableResult", "deform"]
