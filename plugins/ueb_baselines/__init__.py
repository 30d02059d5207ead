"""Built-in poisoners other than Deep Hiding: the paper's baselines and two references.

Each method's defaults are its official repository's settings; docs/poisoners.md gives the
sources.
"""

from ueb.hookspecs import hookimpl


@hookimpl
def register_poisoners(register):
    register(
        "clean",
        "ueb_baselines.reference:Clean",
        summary="No perturbation: the clean-training reference row",
        hidden_from_all=True,
        family="reference",
        role="reference",
    )
    register(
        "random-noise",
        "ueb_baselines.reference:RandomNoise",
        summary="Reference: uniform random sample-wise noise in Linf 8/255 (not an unlearnable method)",
        family="reference",
    )
    register(
        "cw-uniform",
        "ueb_baselines.controls:ClassWiseUniform",
        summary="Calibration control (method-independent): one uniform-noise image per class, Linf 8/255",
        hidden_from_all=True,
        family="reference",
    )
    register(
        "cw-hf",
        "ueb_baselines.controls:ClassWiseSign",
        summary="Calibration control (method-independent): a +-8/255 sign pattern per class, 1-pixel scale",
        hidden_from_all=True,
        family="reference",
    )
    register(
        "cw-mf",
        "ueb_baselines.controls:ClassWiseSign",
        summary="Calibration control (method-independent): a +-8/255 sign pattern per class on 2x2 blocks",
        hidden_from_all=True,
        defaults={"block": 2},
        family="reference",
    )
    register(
        "cw-lf",
        "ueb_baselines.controls:ClassWiseSign",
        summary="Calibration control (method-independent): a +-8/255 sign pattern per class on 8x8 blocks",
        hidden_from_all=True,
        defaults={"block": 8},
        family="reference",
    )
    register(
        "em",
        "ueb_baselines.em:ErrorMinimizing",
        summary="EM, error-minimizing noise (Huang et al. 2021), sample-wise Linf 8/255",
        family="error-minimising",
        # CPU scale: the same algorithm, a fastnet surrogate and fewer steps (measured poison
        # times on 2 cores and what they lower fastnet to: docs/poisoners.md)
        presets={
            "smoke": {
                "surrogate": "fastnet",
                "max_rounds": 2,
                "steps": 4,
                "train_steps": 2,
                "batch_size": 128,
            },
            "quick": {
                "surrogate": "fastnet",
                "max_rounds": 3,
                "steps": 3,
                "step_size": "2/255",
                "train_steps": 10,
            },
        },
    )
    register(
        "em-class",
        "ueb_baselines.em:ErrorMinimizing",
        summary="EM, class-wise variant",
        defaults={"mode": "class"},
        family="error-minimising",
        presets={
            "smoke": {"surrogate": "fastnet", "max_rounds": 2, "train_steps": 2, "batch_size": 128},
            "quick": {"surrogate": "fastnet", "max_rounds": 10},
        },
    )
    register(
        "rem",
        "ueb_baselines.rem:RobustErrorMinimizing",
        summary="REM, robust error-minimizing noise (Fu et al. 2022), Linf 8/255",
        family="error-minimising",
    )
    register(
        "tap",
        "ueb_baselines.tap:TargetedAdversarialPoisoning",
        summary="TAP, targeted adversarial poisoning (Fowl et al. 2021), Linf 8/255",
        family="error-maximising",
    )
    register(
        "entf",
        "ueb_baselines.entf:EntangledFeatures",
        summary="EntF, entangled features (Wen et al. 2023), Linf 8/255",
        family="error-maximising",
    )
    register(
        "lsp",
        "ueb_baselines.lsp:LinearSeparablePerturbations",
        summary="LSP, linear separable synthetic perturbations (Yu et al. 2022), L2",
        family="surrogate-free",
    )
    register(
        "ar",
        "ueb_baselines.ar:AutoregressivePerturbations",
        summary="AR, autoregressive perturbations (Sandoval-Segura et al. 2022), L2 1.0",
        family="surrogate-free",
    )
    register(
        "ops",
        "ueb_baselines.ops:OnePixelShortcut",
        summary="OPS, one-pixel shortcut (Wu et al. 2023), L0 1 pixel",
        family="surrogate-free",
    )
