"""Test helpers for ueb and its plugins: small data, dataset files, and the conformance kit.

Data: `make_imageset` (structured synthetic images), `write_cifar_archive`,
`write_cifar100_archive` and `write_image_folders` (files in the layouts the built-in datasets
read), `tiny_classifier` (a victim-shaped model in a few thousand parameters).

Conformance kit: `check_poisoner`, `check_countermeasure`, `check_victim` and `check_dataset`
run one plugin through the promises the framework relies on, on small data, the way a run
calls it (parameters typed, `bind` and `preflight` called, a RunContext whose `plugin` builds
only what `requires()` declares). A broken promise raises AssertionError naming the plugin,
the promise and the fix. A plugin's own tests call them:

    from ueb.testing import check_poisoner

    def test_my_poisoner_keeps_the_contract(tmp_path):
        check_poisoner(MyPoisoner, params={"steps": 2}, workdir=tmp_path)

One module per job: `fixtures` (data and the tiny model), `contexts` (the kit's training and
RunContext), `declarations` (what every plugin declares), and one kit per kind (`poisoners`,
`countermeasures`, `victims`, `datasets`).
"""

from __future__ import annotations

# The `X as X` names are re-exported too (ueb.testing_detectors builds its kit on them).
from ueb.testing.contexts import _seed as _seed
from ueb.testing.contexts import _workdir as _workdir
from ueb.testing.contexts import make_run_context, tiny_training
from ueb.testing.countermeasures import check_countermeasure
from ueb.testing.datasets import check_dataset
from ueb.testing.declarations import _instantiate as _instantiate
from ueb.testing.declarations import _who as _who
from ueb.testing.declarations import is_numeric as is_numeric
from ueb.testing.fixtures import (
    make_imageset,
    tiny_classifier,
    write_cifar100_archive,
    write_cifar_archive,
    write_image_folders,
)
from ueb.testing.poisoners import check_class_wise, check_poisoner, check_sample_wise
from ueb.testing.poisoners import check_seed_dependence as check_seed_dependence
from ueb.testing.victims import check_victim

__all__ = [
    "check_class_wise",
    "check_countermeasure",
    "check_dataset",
    "check_poisoner",
    "check_sample_wise",
    "check_victim",
    "make_imageset",
    "make_run_context",
    "tiny_classifier",
    "tiny_training",
    "write_cifar100_archive",
    "write_cifar_archive",
    "write_image_folders",
]
