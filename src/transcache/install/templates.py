"""The service files shipped as package data (src/transcache/service/), filled in with
`string.Template` so a template stays readable as the file it becomes."""

from __future__ import annotations

import string
from importlib import resources


def render(name: str, **values: str) -> str:
    text = resources.files("transcache").joinpath("service", name).read_text()
    return string.Template(text).substitute(values)
