"""The paper's Table I countermeasures and Image Shortcut Squeezing, as ueb plugins.

Targets are "module:Class" strings, so listing them never imports torch. One class serves
several names through `defaults` (jpeg10/jpeg50, at-linf/at-l2, the three ISS variants).
docs/countermeasures.md gives each setting and its source.
"""

from ueb.hookspecs import hookimpl

_PRE = "ueb_countermeasures.preprocess"
_AUG = "ueb_countermeasures.augment"
_AT = "ueb_countermeasures.adversarial:AdversarialTraining"
_ISS = "ueb_countermeasures.iss:ImageShortcutSqueezing"


@hookimpl
def register_countermeasures(register):
    train = {"stage": "train"}
    data = {"stage": "data"}
    register(
        "vanilla",
        f"{_AUG}:Vanilla",
        summary="Random crop (pad 4) and flip only",
        role="baseline",
        **train,
    )
    register(
        "cutout",
        f"{_AUG}:Cutout",
        summary="Cutout: one square zeroed per image, half the side (16 px at 32, 112 at 224)",
        **train,
    )
    register(
        "cutmix",
        f"{_AUG}:CutMix",
        summary="CutMix: box of uniform 0..1 side from another batch image, labels mixed by area",
        **train,
    )
    register(
        "mixup",
        f"{_AUG}:Mixup",
        summary="Mixup: blend with another batch image, weight uniform 0..1, own label kept",
        **train,
    )
    register("mean-filter", f"{_PRE}:MeanFilter", summary="Mean filter, kernel 3", **data)
    register("median-filter", f"{_PRE}:MedianFilter", summary="Median filter, kernel 3", **data)
    register(
        "gaussian-filter",
        f"{_PRE}:GaussianFilter",
        summary="Gaussian filter, kernel 3, sigma 0.1",
        **data,
    )
    register(
        "gaussian-blur",
        "ueb_countermeasures.blur:GaussianBlur",
        summary="Gaussian blur, kernel 3, sigma 0.8 (REM's low-pass setting; not in Table I)",
        hidden_from_all=True,
        **data,
    )
    register("bdr", f"{_PRE}:BitDepthReduction", summary="Bit-depth reduction to 2 bits", **data)
    register(
        "grayscale",
        f"{_PRE}:Grayscale",
        summary="Grayscale: ITU-R 601 weighted sum replicated to 3 channels",
        **data,
    )
    register(
        "gaussian-noise",
        f"{_PRE}:GaussianNoise",
        summary="Gaussian noise N(0, 0.1) per image, clamped to [0, 1]",
        **data,
    )
    register(
        "gaussian-noise-every-step",
        f"{_PRE}:GaussianNoiseEveryStep",
        summary="Gaussian noise N(0, 0.1) drawn afresh at every step (not in Table I)",
        hidden_from_all=True,
        **train,
    )
    register(
        "jpeg10",
        f"{_PRE}:Jpeg",
        summary="JPEG compression, quality 10",
        defaults={"quality": 10},
        **data,
    )
    register(
        "jpeg50",
        f"{_PRE}:Jpeg",
        summary="JPEG compression, quality 50",
        defaults={"quality": 50},
        **data,
    )
    register(
        "at-linf",
        _AT,
        summary="PGD-10 adversarial training, L-inf 8/255, step 2/255",
        defaults={"norm": "linf", "eps": 8 / 255},
        # CPU scale: fewer PGD steps, a step that still reaches the radius
        presets={
            "smoke": {"steps": 1, "step_size": "8/255"},
            "quick": {"steps": 2, "step_size": "4/255"},
        },
        **train,
    )
    register(
        "at-l2",
        _AT,
        summary="PGD-10 adversarial training, L2 radius 1, step 0.25 (2.5 eps / steps)",
        defaults={"norm": "l2", "eps": 1.0},
        presets={
            "smoke": {"steps": 1},
            "quick": {"steps": 2},
            # Sec. IV-A5: PGD-10, radius 1; step 2.5 * eps / steps = 0.25 so the attack reaches
            # the radius (sources: docs/countermeasures.md)
            "paper": {"eps": 1.0, "steps": 10, "step_size": 0.25},
        },
        **train,
    )
    register(
        "iss-grayscale",
        _ISS,
        summary="ISS (Liu et al. 2023): grayscale compression",
        defaults={"method": "grayscale"},
        **data,
    )
    register(
        "iss-jpeg",
        _ISS,
        summary="ISS (Liu et al. 2023): JPEG compression, quality 10 (sweep: quality)",
        defaults={"method": "jpeg", "quality": 10},
        **data,
    )
    register(
        "iss-bdr",
        _ISS,
        summary="ISS (Liu et al. 2023): bit-depth reduction, 2 bits (sweep: bits)",
        defaults={"method": "bdr", "bits": 2},
        **data,
    )
