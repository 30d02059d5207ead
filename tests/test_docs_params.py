"""The plugin docs' tables hold the code's values: parameter defaults, profile settings, stages.

Tables are read from the method docs and checked by their header:
  * a parameter column (`parameter`, `knob`, `ueb parameter`, `scale parameter`) with value
    columns named after a scale (`paper`, `quick`, `smoke`, `default`): each value is the
    plugin's parameter at that scale (Params defaults < registration defaults < the plugin's
    preset < the profile's [plugins.NAME]); a blank cell means "as at paper scale";
  * a parameter column without value columns: each backticked name is a parameter of the
    plugin, and `name = value` / `name (value)` is its default;
  * a `stage` column: the class's stage; a `class` column: the registered class;
    a `sample-wise` column: the plugin's sample_wise claim at its defaults.
The plugin of a row is its `name`/`plugin` cell, else the backticked names (or the leading
word) of the nearest heading. Values are compared after parsing with the parameter's type;
floats to the three significant digits docs print.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ueb.errors import ConfigError
from ueb.params import coerce
from ueb.plan_specs import SpecResolver
from ueb.profile import load_profile
from ueb.registry import KINDS, get_registry

REPO = Path(__file__).parent.parent
DOCS = [
    "docs/deephiding.md",
    "docs/sig.md",
    "docs/poisoners.md",
    "docs/poisoners-surrogate.md",
    "docs/poisoners-surrogate-free.md",
    "docs/countermeasures.md",
    "docs/countermeasures-modern.md",
    "docs/victims.md",
    "docs/datasets.md",
    "docs/poisoners-apbench.md",
    "docs/poisoners-modern.md",
    "docs/poisoners-clip.md",
    "docs/countermeasures-defences.md",
    "docs/detectors.md",
]
# Docs whose tables describe another plugin's parameters without naming it in a heading.
DOC_PLUGINS = {"docs/sig.md": ["deephiding", "deephiding-s"]}  # the poisoner's sig_* settings
SCALES = {"paper": "paper", "quick": "quick", "smoke": "smoke", "default": None}
PARAMETER_HEADERS = {"parameter", "knob", "ueb parameter", "scale parameter"}
MISSING = object()


# --------------------------------------------------------------------------- markdown


@dataclass
class Table:
    where: str  # the file, for messages
    headings: list[str]  # enclosing headings, outermost first
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # each row's line number


def tables(text: str, name: str) -> list[Table]:
    found: list[Table] = []
    headings: dict[int, str] = {}
    lines = text.splitlines()
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (m := re.match(r"^(#+) (.*)", line)):
            level = len(m.group(1))
            headings = {k: v for k, v in headings.items() if k < level} | {level: m.group(2)}
        elif (
            not in_fence
            and line.startswith("|")
            and i + 1 < len(lines)
            and re.match(r"^\|[\s:|-]+\|$", lines[i + 1])
        ):
            table = Table(name, [headings[k] for k in sorted(headings)], cells(line))
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                table.rows.append(cells(lines[i]))
                table.lines.append(i + 1)
                i += 1
            found.append(table)
            continue
        i += 1
    return found


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def split_top_level(text: str) -> list[str]:
    """'800k, (128,256), 2' -> ['800k', '(128,256)', '2'] (commas inside brackets stay)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return [*parts, current.strip()]


def leading_value(cell: str) -> str:
    """The value a cell states, before any explanation: '0 (= 40,000)' -> '0'."""
    text = cell.replace("`", "").strip()
    m = re.match(r'^("[^"]*"|\([^)]*\)|\[[^\]]*\]|[^\s(]+)', text)
    return m.group(1) if m else ""


# --------------------------------------------------------------------------- the code's values


def find_entry(name: str) -> Any:
    registry = get_registry()
    for kind in KINDS:
        if name in registry.entries[kind]:
            return registry.get(kind, name)
    return None


def effective(name: str, scale: str | None) -> tuple[Any, dict[str, Any]]:
    """(typed Params, type hints) of plugin `name` at `scale` (None: its defaults)."""
    entry = find_entry(name)
    cls = entry.load_class()
    if scale is None:
        return entry.create({}).params, typing.get_type_hints(cls.Params)
    resolver = SpecResolver(get_registry(), load_profile(scale))
    typed = resolver.unbound(entry.kind, name).params
    return typed, typing.get_type_hints(cls.Params)


def parse_value(text: str, tp: Any) -> Any:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return coerce(text[1:-1], tp, "doc")
    if text in ("None", "none"):
        return coerce(None, tp, "doc")
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)k", text):
        return coerce(float(m.group(1)) * 1000, tp, "doc")
    return coerce(text, tp, "doc")


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=5e-3, abs_tol=1e-12)
    return bool(a == b)


# --------------------------------------------------------------------------- checks


class Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked = 0

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def value(
        self, where: str, plugin: str, param: str, text: str, scale: str | None, meaning: str
    ) -> None:
        typed, hints = effective(plugin, scale)
        actual = getattr(typed, param, MISSING)
        if actual is MISSING:
            self.fail(where, f"`{param}` is not a parameter of {plugin}")
            return
        try:
            stated = parse_value(text, hints[param])
        except ConfigError as exc:
            self.fail(
                where,
                f"{plugin}.{param}: '{text}' is not a value of its type ({exc.line()}); write the value, prose after it",
            )
            return
        self.checked += 1
        if not same(stated, actual):
            self.fail(
                where, f"{plugin}.{param} {meaning}: the docs say {text}, the code has {actual!r}"
            )

    def name(self, where: str, plugin: str, param: str) -> None:
        self.checked += 1
        if param not in effective(plugin, None)[1]:
            self.fail(where, f"`{param}` is not a parameter of {plugin}")

    def table(self, t: Table) -> None:
        header = [h.lower() for h in t.header]
        pcol = next((i for i, h in enumerate(header) if h in PARAMETER_HEADERS), None)
        ncol = next((i for i, h in enumerate(header) if h in ("name", "plugin")), None)
        for r, row in enumerate(t.rows):
            where = f"{t.where}:{t.lines[r]}"
            if len(row) != len(header):
                self.fail(where, f"{len(row)} cells under a header of {len(header)}")
                continue
            plugins = self.plugins(row[ncol] if ncol is not None else None, t.headings, where)
            if ncol is not None:
                for span in backticked(row[ncol]):
                    if "=" in span:
                        for p in plugins:
                            self.assignment(where, p, span)
            for i, h in enumerate(header):
                if h == "stage":
                    self.stage(where, plugins, row[i])
                elif h == "class":
                    self.target(where, plugins, row[i])
                elif h == "sample-wise":
                    self.sample_wise(where, plugins, row[i])
            if pcol is not None:
                self.parameter_row(where, plugins, header, pcol, row)

    def plugins(self, cell: str | None, headings: list[str], where: str) -> list[str]:
        if cell is not None:
            names = [s for s in backticked(cell) if "=" not in s] or [cell.strip()]
        else:
            names = []
            for heading in reversed(headings):
                names = [s for s in backticked(heading) if find_entry(s)]
                word = re.match(r"^([\w-]+)", heading)
                if not names and word and find_entry(word.group(1).lower()):
                    names = [word.group(1).lower()]
                if names:
                    break
        missing = [n for n in names if find_entry(n) is None]
        if missing or not names:
            self.fail(where, f"names no registered plugin ({missing or cell or headings[-1:]})")
        return [n for n in names if find_entry(n) is not None]

    def assignment(self, where: str, plugin: str, span: str) -> None:
        param, _, value = (s.strip() for s in span.partition("="))
        self.value(where, plugin, param, leading_value(value), None, "default")

    def parameter_row(
        self, where: str, plugins: list[str], header: list[str], pcol: int, row: list[str]
    ) -> None:
        cell = row[pcol]
        params = [s for s in backticked(cell) if re.fullmatch(r"[a-z_][a-z0-9_]*", s)]
        scales = {
            i: SCALES[w]
            for i, h in enumerate(header)
            if (w := re.split(r"[\s/(]", h)[0]) in SCALES and i != pcol
        }
        for span in backticked(cell):
            if "=" in span:
                for p in plugins:
                    self.assignment(where, p, span)
        if not scales:
            for p in plugins:
                for param in params:
                    self.name(where, p, param)
                    m = re.search(rf"`{param}` \(([-\w./]+)\)", cell)
                    if m and not m.group(1).isalpha():  # `width` (64), not `w_freq` (w1)
                        self.value(where, p, param, m.group(1), None, "default")
            return
        for i, scale in scales.items():
            text = row[i]
            per_plugin = dict(
                (p, v.strip()) for v, p in re.findall(r"([^/()`]+?)\s*\(`([\w-]+)`\)", text)
            )
            values = split_top_level(text) if len(params) > 1 and text else [text] * len(params)
            if text and not per_plugin and len(values) != len(params):
                self.fail(
                    where, f"{len(params)} parameters but {len(values)} values under '{header[i]}'"
                )
                continue
            for p in plugins:
                for param, value in zip(params, values, strict=True):
                    stated = per_plugin.get(p, value) if per_plugin else value
                    if stated:
                        self.value(
                            where, p, param, leading_value(stated), scale, f"at {header[i]} scale"
                        )
                    elif scale in (None, "paper"):
                        self.fail(where, f"{p}.{param}: no value under '{header[i]}'")
                    else:
                        self.blank(where, p, param, scale, header[i])

    def blank(self, where: str, plugin: str, param: str, scale: str, column: str) -> None:
        """A blank cell: the parameter keeps its paper-scale value at this scale."""
        paper = getattr(effective(plugin, "paper")[0], param, MISSING)
        here = getattr(effective(plugin, scale)[0], param, MISSING)
        self.checked += 1
        if paper is MISSING:
            self.fail(where, f"`{param}` is not a parameter of {plugin}")
        elif not same(paper, here):
            self.fail(
                where,
                f"{plugin}.{param}: blank under '{column}' (= paper value {paper!r}), the code has {here!r}",
            )

    def stage(self, where: str, plugins: list[str], cell: str) -> None:
        for p in plugins:
            self.checked += 1
            actual = find_entry(p).load_class().stage
            if cell.strip() != actual:
                self.fail(
                    where, f"{p}: stage '{cell.strip()}' in the docs, '{actual}' in the class"
                )

    def target(self, where: str, plugins: list[str], cell: str) -> None:
        spans = backticked(cell)
        if not spans or ":" not in spans[0]:
            return  # "idem": the row above's class
        for p in plugins:
            self.checked += 1
            entry = find_entry(p)
            target = (
                entry.target
                if isinstance(entry.target, str)
                else f"{entry.target.__module__}:{entry.target.__qualname__}"
            )
            if not target.endswith(spans[0]):
                self.fail(where, f"{p}: class `{spans[0]}` in the docs, {target} registered")
            for param in spans[1:]:
                self.name(where, p, param)

    def sample_wise(self, where: str, plugins: list[str], cell: str) -> None:
        stated = dict((p, w) for p, w in re.findall(r"`([\w-]+)` (yes|no)", cell))
        for p in plugins:
            word = stated.get(p) or leading_value(cell)
            if word not in ("yes", "no"):
                self.fail(where, f"{p}: sample-wise '{cell}' is neither yes nor no")
                continue
            self.checked += 1
            actual = get_registry().create(find_entry(p).kind, p).sample_wise
            if (word == "yes") != actual:
                self.fail(
                    where,
                    f"{p}: sample-wise '{word}' in the docs, sample_wise = {actual} in the code",
                )


def check_text(text: str, name: str) -> Checker:
    checker = Checker()
    for t in tables(text, name):
        if name in DOC_PLUGINS:
            t.headings = [" ".join(f"`{p}`" for p in DOC_PLUGINS[name]), *t.headings]
        header = [h.lower() for h in t.header]
        if (PARAMETER_HEADERS | {"stage", "class", "sample-wise"}) & set(header):
            checker.table(t)
    return checker


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("doc", DOCS)
def test_doc_tables_hold_the_codes_defaults_profile_values_and_stages(doc):
    checker = check_text((REPO / doc).read_text(), doc)
    assert not checker.problems, "\n".join(checker.problems)
    assert checker.checked >= 3, (
        f"{doc}: only {checker.checked} values checked; did its tables change?"
    )


DOC = """# Deep Hiding (`deephiding`, `deephiding-s`)

| parameter | meaning | paper | quick | smoke |
| --- | --- | --- | --- | --- |
| `mode` | which | class (`deephiding`) / sample (`deephiding-s`) | | |
| `blocks` | N | 16 | 2 | 2 |
| `beta1`, `beta2` | betas | 0.5, 0.999 | | |
| `lr` | rate | 3.16e-5 | 1e-3 | 3e-3 |
| `eps` | radius | 8/255 | | |
"""


def test_the_checker_accepts_true_tables_and_reads_every_form():
    checker = check_text(DOC, "doc")
    assert checker.problems == []
    assert checker.checked == 2 * (3 + 3 + 2 * 3 + 3 + 3)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            "| 16 | 2 | 2 |",
            "| 16 | 2 | 1 |",
            "blocks at smoke scale: the docs say 1, the code has 2",
        ),
        ("| 16 | 2 | 2 |", "| 12 | 2 | 2 |", "blocks at paper scale: the docs say 12"),
        (
            "| 16 | 2 | 2 |",
            "| 16 | | 2 |",
            "blank under 'quick' (= paper value 16), the code has 2",
        ),
        (
            "class (`deephiding`)",
            "sample (`deephiding`)",
            "deephiding.mode at paper scale: the docs say sample",
        ),
        ("`blocks` | N", "`block` | N", "`block` is not a parameter of deephiding"),
        ("| 3.16e-5 |", "| 3.5e-5 |", "lr at paper scale"),
        ("0.5, 0.999 |", "0.5 |", "2 parameters but 1 values"),
        ("| 8/255 |", "| eight |", "'eight' is not a value of its type"),
    ],
)
def test_the_checker_reports_drift(old, new, problem):
    assert old in DOC
    problems = check_text(DOC.replace(old, new), "doc").problems
    assert any(problem in p for p in problems), problems


def test_the_checker_reads_name_value_and_stage_and_class_columns():
    good = (
        "## LSP: linear separable\n\n| setting | ueb parameter |\n|---|---|\n| x | `class_sep = 10.0`, `norm = None` |\n\n"
        "| name | stage | what | class |\n|---|---|---|---|\n| `jpeg10`, `jpeg50` | data | JPEG | `preprocess:Jpeg` (`quality`) |\n"
        "| `ueraser` (`level=standard`) | protocol | x | idem |\n\n"
        "| name | scale parameter |\n|---|---|\n| `resnet18` | `width` (64) |\n\n"
        "| name | sample-wise |\n|---|---|\n| `em`, `em-class` | `em` yes, `em-class` no |\n"
    )
    checker = check_text(good, "doc")
    assert checker.problems == [] and checker.checked == 14
    for old, new, problem in [
        ("`class_sep = 10.0`", "`class_sep = 9.0`", "lsp.class_sep default: the docs say 9.0"),
        (
            "| data | JPEG",
            "| train | JPEG",
            "jpeg10: stage 'train' in the docs, 'data' in the class",
        ),
        ("`preprocess:Jpeg`", "`preprocess:Jpg`", "class `preprocess:Jpg` in the docs"),
        ("`level=standard`", "`level=max`", "ueraser.level default: the docs say max"),
        ("`width` (64)", "`width` (32)", "resnet18.width default: the docs say 32"),
        ("`em-class` no", "`em-class` yes", "em-class: sample-wise 'yes' in the docs"),
    ]:
        problems = check_text(good.replace(old, new), "doc").problems
        assert any(problem in p for p in problems), (problem, problems)


def test_value_parsing_follows_the_parameter_type():
    assert split_top_level("800k, (128,256,256,256), 2, (1,), 0") == [
        "800k",
        "(128,256,256,256)",
        "2",
        "(1,)",
        "0",
    ]
    assert leading_value('"" (train one)') == '""' and leading_value("0 (= 40,000)") == "0"
    assert parse_value("800k", int) == 800_000 and parse_value("8/255", float) == 8 / 255
    assert (
        parse_value("(16,32)", tuple[int, ...]) == (16, 32)
        and parse_value("()", tuple[int, ...]) == ()
    )
    assert parse_value("None", int | None) is None and parse_value('""', str) == ""
    assert same(3.16e-5, 10**-4.5) and not same(3.5e-5, 10**-4.5) and not same(True, 1.0)
