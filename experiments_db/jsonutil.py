"""Conversion of tool output to portable JSON (the same on SQLite and PostgreSQL)."""

import dataclasses
import json
import math
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel


def to_jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON data.

    Non-finite floats (NaN, ±inf) become ``None`` because PostgreSQL's JSON rejects them; array
    types with ``tolist()``/``item()`` (numpy, torch) are converted without importing them.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, BaseModel):
        return to_jsonable(value.model_dump(mode="json"))
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, Enum):
        return to_jsonable(value.value)
    if isinstance(value, Decimal):
        return to_jsonable(float(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    raise TypeError(f"cannot store a value of type {type(value).__name__} as JSON: {value!r:.80}")


def dumps_json(value: Any) -> str:
    """Serialise ``value`` as strict JSON, converting it with :func:`to_jsonable` where needed."""
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False, default=to_jsonable)
    except (ValueError, TypeError):  # a non-finite float or a non-string key somewhere
        return json.dumps(to_jsonable(value), allow_nan=False, ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """A canonical JSON text (sorted keys, no spaces), suitable for hashing."""
    return json.dumps(
        to_jsonable(value),
        allow_nan=False,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
