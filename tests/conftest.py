"""Shared fixtures: small real volumes shipped with the package."""

from __future__ import annotations

from importlib import resources

import pytest

from crossreg.imageio import load


def data_path(name: str) -> str:
    return str(resources.files("crossreg") / "data" / name)


@pytest.fixture(scope="session")
def t1_2mm():
    """MNI152 2009a T1 at 2 mm, stored with direction diag(-1, -1, 1) (a RAS-stored NIfTI)."""
    return load(data_path("mni152_t1_2mm.nii.gz"))
