"""Modern countermeasures: UEraser, Orthogonal Projection, AVATAR and SimCLR (paper Table II).

Targets are "module:Class" strings, so listing countermeasures never imports torch.
docs/countermeasures-modern.md gives each method's source, settings and cost knobs.
"""

from ueb.hookspecs import hookimpl


@hookimpl
def register_countermeasures(register):
    register(
        "ueraser",
        "ueb_countermeasures_modern.ueraser:UEraser",
        summary="UEraser (Qin et al. 2023): plasma/channel-shuffle/TrivialAugment, loss maximised over K=5 copies for the first 25% of training",
        stage="protocol",
        presets={
            "smoke": {"repeats": 2, "adversarial_fraction": 0.5},
            "quick": {"repeats": 2},
            # the official CIFAR-10 training code: 200 epochs, loss maximised over K = 5 copies
            # in the first 50 (LSP/cifar_train.py, EM/QuickStart.ipynb): the first 25% of the
            # run, trained with that script's own optimiser and schedule
            "paper": {"repeats": 5, "adversarial_fraction": 0.25, "recipe": "official"},
        },
    )
    register(
        "ueraser-lite",
        "ueb_countermeasures_modern.ueraser:UEraser",
        summary="UEraser-Lite: the UEraser augmentations, one copy, no loss maximisation",
        defaults={"level": "lite"},
        stage="protocol",
        presets={"smoke": {"repeats": 2}, "paper": {"recipe": "official"}},
        hidden_from_all=True,
    )
    register(
        "ueraser-max",
        "ueb_countermeasures_modern.ueraser:UEraser",
        summary="UEraser-Max: loss maximised over K=5 copies for the whole run",
        defaults={"level": "max"},
        stage="protocol",
        presets={"smoke": {"repeats": 2}, "quick": {"repeats": 2}, "paper": {"recipe": "official"}},
        hidden_from_all=True,
    )
    register(
        "orthogonal-projection",
        "ueb_countermeasures_modern.orthogonal:OrthogonalProjection",
        summary="Orthogonal Projection (Sandoval-Segura et al. 2023): project the data off a linear model's class weights",
        stage="protocol",
    )
    register(
        "avatar",
        "ueb_countermeasures_modern.avatar:Avatar",
        summary="AVATAR (Dolatabadi et al. 2023): DDPM purification, diffuse to t*=100 and denoise back (DiffPure-style)",
        stage="data",
    )
    register(
        "simclr",
        "ueb_countermeasures_modern.simclr:SimCLR",
        summary="SimCLR (Chen et al. 2020): contrastive pre-training on the poisoned set, then a linear probe",
        stage="protocol",
    )
