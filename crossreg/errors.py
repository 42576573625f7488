"""Errors a user can act on: each says what was wrong and what to do about it."""


class CrossregError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero."""

    exit_code = 2


class ImageReadError(CrossregError):
    """A file or directory could not be read as an image."""


class InvalidImageError(CrossregError):
    """An image was read but cannot be registered (dimensionality, NaN, constant, too small)."""


class EmptyRegionError(InvalidImageError):
    """A region where points must be placed (landmarks in a field of view) is too small."""


class InvalidConfigError(CrossregError, ValueError):
    """A setting is out of its range or names no known kind (a model, features, a matcher)."""


class DimensionMismatchError(CrossregError):
    """Fixed and moving images do not have the same number of dimensions."""


class NoOverlapError(CrossregError):
    """The images (or the field-of-view masks) cannot overlap."""


class TransformIOError(CrossregError):
    """A transform file could not be read or written."""


class OutputExistsError(CrossregError):
    """An output file exists and --force was not given."""


class OutputWriteError(CrossregError):
    """An output file could not be written."""


class RegistrationFailed(CrossregError):
    """Registration did not find a transform it can stand behind (e.g. too few inliers)."""

    exit_code = 3
