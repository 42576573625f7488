"""Shared fixtures: small real volumes shipped with the package."""

from __future__ import annotations

import os
from importlib import resources

import pytest

from crossreg import datasets
from crossreg.image import Image
from crossreg.imageio import load
from crossreg.resample import to_working_grid


def pytest_configure(config: pytest.Config) -> None:
    """One ITK thread in tests, set before any test registers: a baseline's answer for a seed is exact.

    Multi-threaded, ITK's metrics can differ in the last bits from run to run, and ANTs' rigid baseline
    then now and then stops in another optimum. ITK (SimpleITK, itk-elastix and ANTs' own copy) reads the
    variable once per process, at first use, and ANTs takes no thread count per call: a fixture setting
    it would be ignored once an earlier test had run ANTs.
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"


def data_path(name: str) -> str:
    return str(resources.files("crossreg") / "data" / name)


@pytest.fixture(scope="session")
def t1_2mm():
    """MNI152 2009a T1 at 2 mm, stored with direction diag(-1, -1, 1) (a RAS-stored NIfTI)."""
    return load(data_path("mni152_t1_2mm.nii.gz"))


@pytest.fixture(scope="session")
def t1() -> Image:
    """The same 2 mm T1 (shared name for modules that call it ``t1``)."""
    return datasets.mni152_t1(2)


@pytest.fixture(scope="session")
def tissues() -> dict[str, Image]:
    """Grey/white matter probability maps in [0, 1] on the 2 mm T1's grid."""
    return datasets.mni152_tissues(2)


@pytest.fixture(scope="session")
def work(t1: Image) -> Image:
    """The 2 mm T1 on a 2 mm working grid (identity direction)."""
    return to_working_grid(t1, 2.0)
