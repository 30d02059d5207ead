"""Identities: the hashes that name cells, poisons and configurations.

Every identity is a digest of typed, canonical values (a parameter written `8/255` and one
written `0.03137254901960784` are the same float, so the same id), never of what the user typed.
What goes into each:

* a plugin spec: kind, implementing class, version, typed parameters (defaults included) and
  the specs of the plugins it requires; the registered name is a label, not an input;
* a poison: the poisoner's spec, the training set's content fingerprint, the seed and the
  victim-training protocol the poisoner's context carries;
* a cell: the poison's inputs plus the test set, the countermeasure and victim specs, the poison
  fraction, the data subset, and the names shown in the table; its `config_digest` is the same
  without the seed, so that a report pools seeds of one configuration only.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

DIGEST_CHARS = 16


def canonical(value: Any) -> Any:
    """JSON-ready form with one spelling per value: tuples as lists, -0.0 as 0.0, ints that are
    whole floats kept as they are typed (the typed Params decide int vs float)."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return 0.0 if value == 0 else value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def digest(*parts: Any) -> str:
    """A short, stable sha256 of canonical JSON."""
    blob = json.dumps(canonical(list(parts)), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:DIGEST_CHARS]


def poison_identity(
    poisoner_digest: str, train_fingerprint: str, seed: int, training: dict[str, Any]
) -> str:
    return digest("poison", poisoner_digest, train_fingerprint, seed, training)


def cell_configuration(
    *,
    dataset: dict[str, Any],
    poisoner: dict[str, Any],
    countermeasure: dict[str, Any],
    victim: dict[str, Any],
    fraction: float,
    training: dict[str, Any],
    data: dict[str, Any],
) -> str:
    """Everything that determines a cell's numbers except the seed (and the labels shown)."""
    return digest(
        "cell-config", dataset, poisoner, countermeasure, victim, float(fraction), training, data
    )


def cell_identity(config_digest: str, seed: int, labels: tuple[str, ...]) -> str:
    return digest("cell", config_digest, seed, list(labels))
