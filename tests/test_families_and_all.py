"""Poisoner families (`family:NAME`, `ueb list` groups) and a stable `all` (ueb's own plugins)."""

from __future__ import annotations

import json
import sys

import pytest
from core_helpers import REPO, run_cli

from ueb.errors import ConfigError
from ueb.hookspecs import hookimpl
from ueb.plugins import PluginHost, set_host
from ueb.registry import FAMILIES, KINDS, Registry, get_registry

THIRD_PARTY = REPO / "tests" / "thirdparty_plugin"
# The built-in registrations this change gives a family (each from its method's paper).
EXPECTED_FAMILIES = {
    "clean": "reference",
    "random-noise": "reference",
    "cw-uniform": "reference",
    "cw-hf": "reference",
    "cw-mf": "reference",
    "cw-lf": "reference",
    "em": "error-minimising",
    "em-class": "error-minimising",
    "rem": "error-minimising",
    "tap": "error-maximising",
    "entf": "error-maximising",
    "lsp": "surrogate-free",
    "ar": "surrogate-free",
    "ops": "surrogate-free",
    "deephiding": "generative",
    "deephiding-s": "generative",
}


class _MoreThirdParty:
    """A second distribution: a family member, a hidden name and a victim."""

    @hookimpl
    def register_poisoners(self, register):
        register("tp-em", "ueb_baselines.reference:RandomNoise", family="error-minimising")
        register("tp-hidden", "ueb_baselines.reference:Clean", hidden_from_all=True)

    @hookimpl
    def register_victims(self, register):
        register("tp-net", "ueb_victims.fastnet:FastNet")


@pytest.fixture(autouse=True)
def _fresh_host():
    yield
    set_host(None)


def _registry(third_party: bool) -> Registry:
    """ueb's own entry points, plus (as installed packages would be) two other distributions."""
    host = PluginHost(entry_points=True)
    if third_party:
        sys.path.insert(0, str(THIRD_PARTY))
        import ueb_example_plugin

        host.register(
            ueb_example_plugin, name="ueb-example-plugin:example", distribution="ueb-example-plugin"
        )
        host.register(_MoreThirdParty(), name="aaa-lab:methods", distribution="aaa-lab")
    set_host(host)
    return get_registry()


def test_installing_plugins_does_not_change_what_all_selects():
    own = {k: _registry(False).select(k, ["all"]) for k in KINDS}
    reg = _registry(True)
    # registration order puts the other distributions' plugins first ("aaa-lab:...",
    # "ueb-example-plugin:..." sort before "ueb:..."): what `all` used to follow
    assert reg.names("poisoner")[:3] == ["tp-em", "tp-hidden", "corner-patch"]
    for kind in KINDS:
        assert reg.select(kind, ["all"]) == own[kind], kind
    assert own["poisoner"][:1] != ["corner-patch"] and "clean" not in own["poisoner"]


def test_all_plus_appends_the_other_distributions_in_their_order():
    own = _registry(False).select("poisoner", ["all"])
    reg = _registry(True)
    assert reg.select("poisoner", ["all+"]) == [*own, "tp-em", "corner-patch"]  # by distribution
    assert reg.select("countermeasure", ["all+"])[-1] == "hflip-all"
    assert reg.select("victim", ["all+"])[-1] == "tp-net"
    # a third-party name still joins by name, glob or family, after what came before
    assert reg.select("poisoner", ["all", "corner-patch"]) == [*own, "corner-patch"]
    assert reg.select("poisoner", ["corner*", "tp-hidden"]) == ["corner-patch", "tp-hidden"]


def test_left_out_of_all_says_why():
    reg = _registry(True)
    assert reg.left_out_of_all("poisoner", "em") is None
    assert reg.left_out_of_all("poisoner", "clean") == "hidden"
    assert reg.left_out_of_all("poisoner", "tp-hidden") == "hidden"
    assert reg.left_out_of_all("poisoner", "corner-patch") == "third-party"
    assert reg.left_out_of_all("countermeasure", "hflip-all") == "third-party"


def test_builtin_poisoners_carry_their_family():
    reg = _registry(False)
    for name, family in EXPECTED_FAMILIES.items():
        assert reg.get("poisoner", name).meta.get("family") == family, name
    declared = {reg.get("poisoner", n).meta.get("family") for n in reg.names("poisoner")}
    assert declared - {None} <= set(FAMILIES)  # a misspelt family would form its own group


def test_family_selection_spans_distributions_ueb_first():
    reg = _registry(True)
    chosen = reg.select("poisoner", ["family:error-minimising"])
    assert chosen[-1] == "tp-em" and {"em", "em-class", "rem"} <= set(chosen[:-1])
    assert all(reg.get("poisoner", n).meta["family"] == "error-minimising" for n in chosen)
    assert reg.select("poisoner", ["family:generative"])[-2:] == ["deephiding", "deephiding-s"]
    assert "clean" in reg.select("poisoner", ["family:reference"])  # explicit, so hidden joins
    both = reg.select("poisoner", ["family:surrogate-free,family:error-maximising"])
    assert {"lsp", "ar", "ops", "tap", "entf"} <= set(both) and len(both) == len(set(both))


def test_unknown_family_is_one_line_with_the_closest():
    reg = _registry(False)
    with pytest.raises(ConfigError, match="did you mean 'family:error-minimising'") as err:
        reg.select("poisoner", ["family:error-minimizing"])
    assert "no poisoner has family 'error-minimizing'" in err.value.line()
    with pytest.raises(ConfigError, match="families: none registered"):
        reg.select("victim", ["family:generative"])


def _plugins_dir(tmp_path):
    """A --plugins-dir file that loads the example third-party package's hooks."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "example_thirdparty.py").write_text(
        f"import sys\nsys.path.insert(0, {str(THIRD_PARTY)!r})\n"
        "from ueb_example_plugin import register_countermeasures, register_poisoners  # noqa: F401\n"
    )
    return tmp_path


def test_ueb_list_groups_poisoners_by_family_and_marks_what_all_leaves_out(tmp_path):
    folder = _plugins_dir(tmp_path)
    res = run_cli("--plugins-dir", str(folder), "list", "poisoners", env={"COLUMNS": "160"})
    assert res.returncode == 0, res.stderr
    titles = [
        line.strip() for line in res.stdout.splitlines() if line.strip().startswith("poisoners")
    ]
    families = [t.split(": ", 1)[1].rsplit(" (", 1)[0] for t in titles]
    assert families[: len(families) - 1] == [f for f in FAMILIES if f in families]
    assert families[-1] == "no family"  # the example package declares none
    row = next(line for line in res.stdout.splitlines() if "corner-patch" in line)
    assert "third-party" in row
    clean = next(line for line in res.stdout.splitlines() if "│ clean " in line)
    assert "hidden" in clean
    assert "not in all:" in res.stdout and "all+" in res.stdout
    rows = json.loads(run_cli("--plugins-dir", str(folder), "list", "poisoners", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert (
        by_name["corner-patch"]["not_in_all"] == "third-party"
        and not by_name["corner-patch"]["in_all"]
    )
    assert by_name["em"]["in_all"] and by_name["em"]["family"] == "error-minimising"
    assert by_name["clean"]["not_in_all"] == "hidden"
    assert [r["name"] for r in rows][-1] == "corner-patch"  # ueb's own first


def _run_id(registry: Registry, countermeasures: str) -> tuple[str, tuple[str, ...]]:
    from ueb.config import RunConfig
    from ueb.plan import resolve

    config = RunConfig(
        poisoners=("random-noise",), countermeasures=(countermeasures,), profile="smoke"
    )
    plan = resolve(config, registry, load_data=False)
    return plan.run_id(), tuple(plan.countermeasures)


def test_the_run_directory_of_all_does_not_move_when_a_plugin_is_added():
    before = _run_id(_registry(False), "all")
    with_plugins = _registry(True)
    assert _run_id(with_plugins, "all") == before
    plus_id, plus = _run_id(with_plugins, "all+")
    assert plus == (*before[1], "hflip-all") and plus_id != before[0]
