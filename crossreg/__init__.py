"""crossreg: find corresponding anatomy across imaging modalities and register the images.

>>> import crossreg as xr
>>> fixed, moving = xr.load("mri.nii.gz"), xr.load("us.nii.gz")
>>> result = xr.register(fixed, moving)   # result.transform maps fixed points to moving points
>>> result.save("T.tfm", qa_path="qa.png")
>>> registrator = xr.Registrator(xr.RegisterConfig(features="crosskey"))  # models loaded once
>>> results = [registrator.register(f, m) for f, m in pairs]
"""

from crossreg.config import RegisterConfig
from crossreg.errors import CrossregError, NoOverlapError, RegistrationFailed
from crossreg.estimate import estimate
from crossreg.image import Image, from_array
from crossreg.imageio import load, save
from crossreg.keypoints import detect_keypoints
from crossreg.matching import match
from crossreg.register import Registrator, register
from crossreg.result import Result
from crossreg.transform import AffineTransform, HomographyTransform, read_homography, read_transform

__version__ = "0.1.0"
__all__ = [
    "AffineTransform",
    "CrossregError",
    "HomographyTransform",
    "Image",
    "NoOverlapError",
    "RegisterConfig",
    "RegistrationFailed",
    "Registrator",
    "Result",
    "detect_keypoints",
    "estimate",
    "from_array",
    "load",
    "match",
    "read_homography",
    "read_transform",
    "register",
    "save",
]
