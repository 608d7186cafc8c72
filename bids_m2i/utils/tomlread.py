"""Reading TOML on every Python the package supports.

``requires-python`` is ``>=3.10``, but :mod:`tomllib` arrived in 3.11; on 3.10 the same parser ships as
``tomli`` (pyproject.toml asks for it there only). Callers import :data:`load` and :data:`TOMLDecodeError`
from here rather than choosing a module themselves.
"""

from __future__ import annotations

try:
    import tomllib as _toml
except ModuleNotFoundError:  # Python 3.10
    import tomli as _toml  # type: ignore[no-redef]

load = _toml.load
loads = _toml.loads
TOMLDecodeError = _toml.TOMLDecodeError

__all__ = ["load", "loads", "TOMLDecodeError"]
