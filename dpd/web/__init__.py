"""The dashboard's static files: ``static/`` (index.html, app modules, CSS, vendored
libraries) ships inside the package, so the wheel and the .deb carry it and nothing is
built or fetched at install time. ``dpd.http.routes.dashboard`` serves it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def static_dir() -> Path:
    """Where the installed static files are (a real directory: the package is installed
    unzipped, as pip and the .deb install it)."""
    return Path(str(resources.files("dpd.web").joinpath("static")))
