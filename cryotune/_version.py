"""The installed cryotune version; modules that stamp artifacts import it from here.

Example::

    from cryotune._version import __version__
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _package_version

__all__ = ["__version__"]

try:
    __version__ = _package_version("cryotune")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"
