"""Job hash: the identity used for duplicate detection.

Canonical JSON (sorted keys, no whitespace, UTF-8 kept as is) makes the hash stable
across key order and independent of how the caller formatted its parameters.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def job_hash(job_type: str, organization: str, parameters: dict[str, Any]) -> str:
    # A JSON array keeps the three parts apart: no choice of names can make
    # ("a", "bc") and ("ab", "c") collide.
    material = canonical_json([job_type, organization, parameters])
    return hashlib.sha256(material.encode("utf-8")).hexdigest()
