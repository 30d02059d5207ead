"""What is installed: `ueb list`, `ueb plugins`, `ueb profiles`.

Importing this never imports torch: plugins register "module:Class" strings.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ueb.cli_app import _registry, app
from ueb.errors import ConfigError
from ueb.output import Output

KIND_ALIASES = {
    "poisoners": "poisoner",
    "poisoner": "poisoner",
    "countermeasures": "countermeasure",
    "countermeasure": "countermeasure",
    "victims": "victim",
    "victim": "victim",
    "datasets": "dataset",
    "dataset": "dataset",
    "detectors": "detector",
    "detector": "detector",
}


# --------------------------------------------------------------------------- list / plugins / profiles


@app.command("list")
def list_(
    kind: Annotated[
        str | None,
        typer.Argument(help="poisoners | countermeasures | victims | datasets (default: all)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List what the installed plugins provide; poisoners by family, and what `all` leaves out."""
    from ueb.registry import KINDS

    registry = _registry()
    if kind is not None and kind not in KIND_ALIASES:
        raise ConfigError(
            f"unknown kind '{kind}'", "use poisoners, countermeasures, victims or datasets"
        )
    kinds = [KIND_ALIASES[kind]] if kind else list(KINDS)
    rows = [_list_row(registry, k, n) for k in kinds for n in registry.ordered_names(k)]
    out = Output(json_mode=as_json)
    if as_json:
        out.json(rows)
        return
    # One table per kind (poisoners: per family), with only the columns that say something, so
    # that the summary keeps a readable width in an 80-column terminal.
    several_dists = len({r["distribution"] for r in rows}) > 1
    for k in kinds:
        mine = [r for r in rows if r["kind"] == k]
        if not mine:
            continue
        columns = [
            "name",
            *(["stage"] if k == "countermeasure" else []),
            "not in all",
            "summary",
            *(["distribution"] if several_dists else []),
        ]
        groups = _family_groups(mine) if k == "poisoner" else [("", mine)]
        for family, group in groups:
            title = f"{k}s: {family} ({len(group)})" if family else f"{k}s ({len(group)})"
            if k == "poisoner" and not family:
                title = f"{k}s: no family ({len(group)})" if len(groups) > 1 else title
            shown = [{**r, "not in all": r["not_in_all"] or ""} for r in group]
            if not any(r["not_in_all"] for r in group):
                shown = [{c: v for c, v in r.items() if c != "not in all"} for r in shown]
            out.rows(shown, columns=columns, title=title, wrap="summary")
    reasons = {r["not_in_all"] for r in rows if r["not_in_all"]}
    if reasons:
        import textwrap

        legend = "not in all: " + "; ".join(
            _NOT_IN_ALL[r] for r in ("hidden", "third-party") if r in reasons
        )
        out.info(textwrap.fill(legend, width=max(40, out.console.width)))


_NOT_IN_ALL = {
    "hidden": "hidden = kept out by its registration (reference rows, controls, variants), "
    "select it by name",
    "third-party": "third-party = from another distribution, select it with all+, its name, "
    "a glob or family:NAME",
}


def _list_row(registry: Any, kind: str, name: str) -> dict[str, Any]:
    """One `ueb list` row: the entry, its listing facts and whether `all` selects it."""
    e = registry.entries[kind][name]
    meta = {m: str(v) for m, v in e.meta.items()}
    if kind == "countermeasure":
        meta["stage"] = str(e.stage())
    reason = registry.left_out_of_all(kind, name)
    return {
        "kind": kind,
        "name": e.name,
        "summary": e.summary,
        "plugin": e.plugin,
        "distribution": e.distribution,
        **meta,
        "in_all": reason is None,
        "not_in_all": reason,
    }


def _family_groups(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows grouped by `family`: the built-in families in their documented order, then any
    other family by name, then the rows without one; rows keep their order in a group."""
    from ueb.registry import FAMILIES

    found = {str(r.get("family", "")) for r in rows}
    order = [f for f in FAMILIES if f in found]
    order += sorted(f for f in found if f and f not in FAMILIES)
    order += [""] if "" in found else []
    return [(f, [r for r in rows if str(r.get("family", "")) == f]) for f in order]


@app.command()
def plugins(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Loaded plugin modules: where they come from, what they registered, which failed."""
    registry = _registry()
    rows = [
        {
            "plugin": rec.name,
            "distribution": rec.distribution,
            "version": rec.version,
            "status": "ok" if rec.ok else f"FAILED: {rec.error}",
            "registered": ", ".join(rec.registered),
        }
        for rec in sorted(registry.host.records.values(), key=lambda r: (r.distribution, r.name))
    ]
    out = Output(json_mode=as_json)
    if as_json:
        out.rows(rows, columns=["plugin", "distribution", "version", "status", "registered"])
        return
    _print_plugins(out, rows)


def _print_plugins(out: Output, rows: list[dict[str, str]]) -> None:
    """One block per plugin module, legible at any width: a head line with the name,
    distribution, version and status in full, then what it registered (and a failure's reason),
    wrapped at word boundaries under it."""
    from rich.padding import Padding
    from rich.text import Text

    console = out.console
    for row in rows:
        ok = row["status"] == "ok"
        head = Text()
        head.append(row["plugin"], style="bold")
        head.append(f"  {row['distribution']} {row['version']}  ")
        head.append("ok" if ok else "FAILED", style="green" if ok else "bold red")
        console.print(head, overflow="fold")
        detail = row["registered"] or "(nothing registered)"
        if not ok:
            detail = row["status"].removeprefix("FAILED: ")
        console.print(Padding(Text(detail, overflow="fold"), (0, 0, 0, 4), expand=False))


@app.command()
def profiles(
    presets: Annotated[
        bool,
        typer.Option("--presets", help="Also list the scale presets the installed plugins ship."),
    ] = False,
) -> None:
    """The available profiles and what they set (and, with --presets, what plugins bring)."""
    from ueb.profile import available_profiles, load_profile

    if presets:
        registry = _registry()
        rows_p = []
        for k, names in registry.entries.items():
            for n, e in names.items():
                for scale, values in sorted(e.presets().items()):
                    rows_p.append(
                        {
                            "plugin": n,
                            "kind": k,
                            "scale": scale,
                            "settings": ", ".join(f"{a}={b}" for a, b in values.items()),
                        }
                    )
        if rows_p:
            Output().rows(
                rows_p,
                columns=["plugin", "kind", "scale", "settings"],
                title="Scale presets shipped by plugins (under the profile's [plugins.NAME] and --param)",
                wrap="settings",
            )
        else:
            Output().info(
                "no installed plugin ships scale presets (the profiles' [plugins.NAME] tables set the built-ins' scale)"
            )
    rows = []
    for name in available_profiles():
        p = load_profile(name)
        t = p.training
        rows.append(
            {
                "profile": name,
                "victims": ",".join(p.victims),
                "datasets": ",".join(p.datasets),
                "steps": str(t.iterations),
                "batch": str(t.batch_size),
                "description": p.description,
            }
        )
    Output().rows(
        rows,
        columns=["profile", "victims", "datasets", "steps", "batch", "description"],
        title="Profiles",
        wrap="description",
    )
