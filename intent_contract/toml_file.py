"""A TOML config file read whole: both programs' `--config`.

Its errors never carry the file's text. `tomllib.load` decodes the whole file first, and a byte that is
not UTF-8 (a Latin-1 `é` in a comment, an editor's backup) raised UnicodeDecodeError, which holds every
byte of the file: `cloud-bridge run` printed it in a traceback, and a reload (SIGHUP, `cloud-bridge
reload`) logged it whole, secrets pasted into the file included, and left `cloud-bridge reload` with no answer.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from intent_contract.errors import DecodeError


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; DecodeError (where, never what) when it is not UTF-8 or not TOML; OSError as raised."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        problem = f"is not UTF-8 text (line {line}, column {exc.start - line_start + 1})"
    else:
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            problem = f"is not valid TOML: {exc}"  # tomllib says where (line, column), never the text
    raise DecodeError(problem)
