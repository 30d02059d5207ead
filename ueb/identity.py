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
  without the seed, so that a report pools seeds of one configuration only;
* a training: what determines one victim training bit for bit (the bytes it trains and is
  evaluated on, the victim, the countermeasure's training-time hooks, protocol, numerics and
  seed), so cells whose trainings are identical share one;
* an artifact (a trained surrogate, a hider, a semantic-image bank): its kind, its plugin's
  recipe and the numerics it is built under.

Poisons, cells, trainings and artifacts all hash the run's numerics (ueb/numerics.py): a
number computed under other numerics is never reused as this one.
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


def cell_identity(
    config_digest: str, seed: int, labels: tuple[str, ...], poison_seed: int | None = None
) -> str:
    """`poison_seed` only in the nested design, where the poison's seed is not the cell's."""
    if poison_seed is None:
        return digest("cell", config_digest, seed, list(labels))
    return digest("cell", config_digest, seed, list(labels), "poison-seed", poison_seed)


def training_identity(
    *,
    poison_key: str,
    fraction: float,
    train_fingerprint: str,
    test_fingerprint: str,
    victim: dict[str, Any],
    hooks: dict[str, Any] | None,
    computation: dict[str, Any],
    seed: int,
) -> str:
    """One victim training: `hooks` is the countermeasure's spec when it acts inside training
    (augment, loss, fit) or on test inputs, None when it only changed the training set (whose
    bytes `train_fingerprint` already names)."""
    return digest(
        "training",
        poison_key,
        float(fraction),
        train_fingerprint,
        test_fingerprint,
        victim,
        hooks,
        computation,
        seed,
    )


def artifact_identity(kind: str, recipe: Any, numerics: dict[str, Any] | None) -> str:
    return digest("artifact", kind, recipe, numerics)


def record_checksum(record: dict[str, Any]) -> str:
    """The full sha256 of a stored record's canonical JSON (cell-index entries carry it)."""
    blob = json.dumps(canonical(record), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
