"""The service files shipped as the `transcache.service` package (the top-level service/
directory), filled in with `string.Template` so a template stays readable as the file it
becomes."""

from __future__ import annotations

import string
from importlib import resources

TEMPLATES_PACKAGE = "transcache.service"


def render(name: str, **values: str) -> str:
    text = resources.files(TEMPLATES_PACKAGE).joinpath(name).read_text()
    return string.Template(text).substitute(values)
