"""JSON that every parser accepts: no NaN or Infinity tokens (which Python writes by default and
JavaScript, Go and serde refuse). A non-finite number becomes a string ("inf", "-inf") or null
(NaN), the way edgepipe's reports already spell an infinite SQNR."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(finite(value), allow_nan=False, **kwargs)
