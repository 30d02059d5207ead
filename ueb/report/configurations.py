"""One table position, several configurations: records are split by `config_digest`, never
pooled across it, and a note says which recorded settings differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ueb.store import CellRecord


def _order(names: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(names))
    if not preferred:
        return seen
    first = [n for n in dict.fromkeys(preferred) if n in seen]
    return first + [n for n in seen if n not in first]


def _digest(r: CellRecord) -> str:
    return r.config_digest or ""


def _settings(r: CellRecord) -> dict[str, Any]:
    """What a row shares across its columns, as the record states it."""
    return {
        "profile": r.profile,
        "poisoner_version": r.poisoner_version,
        "poisoner_params": r.poisoner_params,
        "victim_version": r.victim_version,
        "victim_params": r.victim_params,
    }


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, str) else _canon(v)
    return out


def _differences(
    groups: Mapping[str, Sequence[CellRecord]], fields: Callable[[CellRecord], dict[str, Any]]
) -> str:
    """'poisoner_params.eps: 0.03 ⟨cfg a⟩ vs 0.06 ⟨cfg b⟩' over the groups' first records."""
    flat = {tag: _flat(fields(recs[0])) for tag, recs in groups.items()}
    keys = _order((k for f in flat.values() for k in f), None)
    diffs = []
    for k in keys:
        vals = {tag: f.get(k, "(unset)") for tag, f in flat.items()}
        if len(set(vals.values())) > 1:
            diffs.append(f"{k}: " + " vs ".join(f"{v} ⟨cfg {t}⟩" for t, v in vals.items()))
    return "; ".join(diffs)


def _full_fields(r: CellRecord) -> dict[str, Any]:
    return {
        **_settings(r),
        "countermeasure_version": r.countermeasure_version,
        "countermeasure_params": r.countermeasure_params,
        "git": r.git,
        "torch": r.torch,
        "device": r.device,
    }


def _tag(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


@dataclass
class _Slot:
    """The records of one table row: one configuration per column."""

    variant: str
    cells: dict[str, list[CellRecord]]


Position = tuple[str, str, str]  # dataset, victim, row label


def _split(
    pos: Position, recs: Sequence[CellRecord], notes: list[str], configs: list[dict[str, Any]]
) -> list[_Slot]:
    """One slot when every column of the position holds one configuration; else a slot per
    configuration, aligned across columns by the row's recorded settings when they tell the
    configurations apart, or (when they do not) a slot per conflicting cell and digest."""
    by_col: dict[str, dict[str, list[CellRecord]]] = {}
    for r in recs:
        by_col.setdefault(r.countermeasure, {}).setdefault(_digest(r), []).append(r)
    conflicts = [c for c, g in by_col.items() if len(g) > 1]
    if not conflicts:
        return [
            _Slot("", {c: [r for g in groups.values() for r in g] for c, groups in by_col.items()})
        ]
    where = f"{pos[2]} on {pos[0]} / {pos[1]}"
    sig = {id(r): _canon(_settings(r)) for r in recs}
    columns = [[r for rs in groups.values() for r in rs] for groups in by_col.values()]
    separable = all(
        len({_digest(r) for r in g})
        == len({sig[id(r)] for r in g})
        == len({(_digest(r), sig[id(r)]) for r in g})
        for g in columns
    )
    slots: dict[str, _Slot] = {}
    groups_by_tag: dict[str, list[CellRecord]] = {}
    if separable:
        for r in sorted(recs, key=lambda r: (r.finished, r.ordinal)):
            tag = _tag(sig[id(r)])
            slots.setdefault(tag, _Slot(tag, {})).cells.setdefault(r.countermeasure, []).append(r)
            groups_by_tag.setdefault(tag, []).append(r)
        differs = _differences(groups_by_tag, _settings)
    else:
        plain = _Slot("", {c: next(iter(g.values())) for c, g in by_col.items() if len(g) == 1})
        if plain.cells:
            slots[""] = plain
        per_column = []
        for c in conflicts:
            in_column = {}
            for digest, rs in by_col[c].items():
                tag = digest[:6] or "none"
                slots[f"{c}/{tag}"] = _Slot(tag, {c: rs})
                groups_by_tag.setdefault(tag, []).extend(rs)
                in_column[tag] = rs
            found = _differences(in_column, _full_fields)
            per_column.append(
                f"{c}: {found or 'no recorded parameter (training or data settings?)'}"
            )
        differs = "; ".join(per_column)
    digests = {tag: sorted({_digest(r) for r in rs}) for tag, rs in groups_by_tag.items()}
    listed = "; ".join(
        f"⟨cfg {t}⟩ "
        + ", ".join((d[:12] or "(none)") for d in ds[:3])
        + (f" (+{len(ds) - 3} more)" if len(ds) > 3 else "")
        for t, ds in digests.items()
    )
    notes.append(
        f"{where}: records of {len(digests)} configurations, shown apart, never pooled; differs: {differs}; config digests: {listed}"
    )
    configs.append(
        {
            "dataset": pos[0],
            "victim": pos[1],
            "poisoner": pos[2],
            "differs": differs,
            "digests": digests,
        }
    )
    return list(slots.values())
