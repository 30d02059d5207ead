"""MobileNetV2, SENet-18, WRN-34-10, CaiT-small and the timm adapter; ranges on every victim.

The built-in conformance test (tests/test_conformance.py) runs the kit's check_victim on each
of them at its smoke preset; here: the layouts' parameter counts and shapes (built on the
meta device, so the full-size models cost nothing), what each block does, and the errors.
"""

from __future__ import annotations

import sys

import pytest
import torch

from ueb.errors import ConfigError
from ueb.registry import get_registry

NEW = ("mobilenetv2", "senet18", "wrn-34-10", "cait-small")


def _build(
    name: str, size: int = 32, channels: int = 3, classes: int = 10, meta: bool = True, **params
):
    victim = get_registry().create("victim", name, params)
    if not meta:
        return victim.build(classes, size, channels)
    with torch.device("meta"):
        return victim.build(classes, size, channels)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_reference_layouts():
    # kuangliu/pytorch-cifar (APBench's nets/) MobileNetV2 and SENet18, TRADES' WRN-34-10
    # without its unused sub_block1, at 10 classes and 32x32
    assert _count(_build("mobilenetv2")) == 2_296_922
    assert _count(_build("senet18")) == 11_260_354
    assert _count(_build("wrn-34-10")) == 46_160_474


def test_cait_small_has_apbench_shape():
    """Parameters of APBench's cait_small counted from its definition, layer by layer."""
    dim, heads, dim_head, mlp, tokens, patch_dim = 512, 6, 64, 256, 64, 3 * 4 * 4
    inner = heads * dim_head
    attention = dim * inner + dim * 2 * inner + 2 * heads * heads + inner * dim + dim
    feed_forward = dim * mlp + mlp + mlp * dim + dim
    layer = attention + feed_forward + 2 * (2 * dim) + 2 * dim  # two LayerNorms, two LayerScales
    expected = (
        patch_dim * dim + dim + tokens * dim + dim + (6 + 2) * layer + 2 * dim + dim * 10 + 10
    )
    model = _build("cait-small")
    assert _count(model) == expected
    backbone = model.backbone
    assert len(backbone.patch_layers.layers) == 6 and len(backbone.class_layers.layers) == 2
    assert backbone.patch == 4 and backbone.position.shape == (1, 64, 512)
    assert (
        _build(
            "cait-small", size=224, depth=1, cls_depth=1, dim=8, heads=1, dim_head=4, mlp_dim=8
        ).backbone.patch
        == 16
    )


def test_layer_scale_follows_the_cait_paper():
    from ueb_victims.cait import layer_scale_init

    assert [layer_scale_init(d) for d in (1, 18, 19, 24, 25)] == [0.1, 0.1, 1e-5, 1e-5, 1e-6]
    model = _build(
        "cait-small", meta=False, dim=8, depth=2, cls_depth=1, heads=2, dim_head=4, mlp_dim=8
    )
    scales = [
        m.scale
        for m in model.modules()
        if hasattr(m, "scale") and isinstance(m.scale, torch.nn.Parameter)
    ]
    assert len(scales) == 2 * 2 + 2 * 1 and all(bool((s == 0.1).all()) for s in scales)


def test_cait_class_attention_reads_the_patches_and_layer_dropout_keeps_one_layer():
    torch.manual_seed(0)
    small = {"dim": 16, "depth": 3, "cls_depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 16}
    model = _build("cait-small", meta=False, size=16, **small, layer_dropout=0.99).eval()
    x = torch.rand(2, 3, 16, 16)
    out = model.features(x)
    assert out.shape == (2, 16)
    moved = x.clone()
    moved[:, :, :4, :4] = 1 - moved[:, :, :4, :4]  # change one patch only
    assert not torch.allclose(model.features(moved), out)
    assert torch.equal(model.features(x), out)  # eval: every layer, no dropout
    model.train()
    stack = model.backbone.patch_layers
    assert all(1 <= len(stack._kept()) <= 3 for _ in range(50))
    assert _build(
        "cait-small", meta=False, size=16, **small, layer_dropout=0.0
    ).backbone.patch_layers._kept() == [0, 1, 2]


def test_mobilenetv2_cifar_strides_up_to_64_and_the_papers_above():
    def last_map(size: int) -> tuple[int, ...]:
        model = _build("mobilenetv2", size=size, width_mult=0.25)
        trunk = model.backbone[:-2]  # up to the global pool
        with torch.device("meta"):
            return tuple(trunk(torch.empty(1, 3, size, size)).shape[1:])

    assert last_map(32) == (1280, 4, 4)  # stride-1 stem and second stage: /8
    assert last_map(64) == (1280, 8, 8)
    assert last_map(224) == (1280, 7, 7)  # the paper's /32
    narrow = _build("mobilenetv2", width_mult=0.5)
    assert narrow.feature_dim == 1280 and _count(narrow) < _count(_build("mobilenetv2")) / 2
    assert _build("mobilenetv2", width_mult=2.0).feature_dim == 2560


def test_mobilenetv2_blocks_are_residual_only_at_stride_1():
    from ueb_victims.mobilenetv2 import InvertedResidual

    torch.manual_seed(0)
    same = InvertedResidual(8, 8, 6, 1).eval()
    for p in same.project.parameters():
        torch.nn.init.zeros_(p)  # the branch gives 0 (BN weight and bias 0)
    x = torch.rand(2, 8, 6, 6)
    assert torch.equal(same(x), x)
    widen = InvertedResidual(8, 16, 6, 1)
    assert isinstance(widen.shortcut, torch.nn.Sequential)  # 1x1 projection, kuangliu's layout
    down = InvertedResidual(8, 16, 6, 2).eval()
    for p in down.project.parameters():
        torch.nn.init.zeros_(p)
    assert torch.equal(down(x), torch.zeros(2, 16, 3, 3))


def test_senet_excitation_gates_the_residual_branch():
    from ueb_victims.senet import SEPreActBlock

    torch.manual_seed(0)
    block = SEPreActBlock(16, 16, 1, 16).eval()
    assert block.squeeze.out_channels == 1 and block.projection is None
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        block.excite.bias.fill_(-1e4)  # sigmoid -> 0: only the identity is left
        assert torch.allclose(block(x), x)
        block.excite.weight.zero_()
        block.excite.bias.fill_(1e4)  # sigmoid -> 1: identity plus the plain residual branch
        import torch.nn.functional as F

        plain = block.conv2(F.relu(block.bn2(block.conv1(F.relu(block.bn1(x))))))
        assert torch.allclose(block(x), x + plain, atol=1e-5)
    assert SEPreActBlock(16, 32, 2, 16).projection.stride == (2, 2)
    model = _build("senet18")
    assert model.backbone[0].kernel_size == (3, 3) and model.feature_dim == 512
    wide = _build("senet18", size=224, width=8)
    assert wide.backbone[0].kernel_size == (7, 7) and isinstance(
        wide.backbone[3], torch.nn.MaxPool2d
    )


def test_wideresnet_groups_widths_and_initialisation():
    from ueb_victims.wideresnet import WideBasicBlock

    model = _build("wrn-34-10")
    blocks = [m for m in model.modules() if isinstance(m, WideBasicBlock)]
    assert len(blocks) == 15 and model.feature_dim == 640
    assert [b.conv2.out_channels for b in blocks[::5]] == [160, 320, 640]
    assert [b.conv1.stride for b in blocks[::5]] == [(1, 1), (2, 2), (2, 2)]
    assert sum(b.projection is not None for b in blocks) == 3
    torch.manual_seed(0)
    small = _build("wrn-34-10", meta=False, depth=10, widen_factor=4)  # 32 ch convs: many weights
    conv = small.backbone[1].conv1  # 3x3, 64 out channels
    expected = (2.0 / (3 * 3 * conv.out_channels)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.05
    assert torch.equal(small.head.bias, torch.zeros_like(small.head.bias))
    with pytest.raises(ConfigError, match="depth 12 is not 6n \\+ 4"):
        _build("wrn-34-10", depth=12)


def test_new_victims_presets_are_smaller_versions_of_the_same_layout():
    reg = get_registry()
    for name in NEW:
        cls = reg.get("victim", name).load_class()
        sizes = [
            _count(_build(name, **cls.presets.get(s, {}))) for s in ("smoke", "quick", "paper")
        ]
        assert sizes[0] < sizes[1] < sizes[2], (name, sizes)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("resnet18", {"width": 0}),
        ("resnet50", {"width": -1}),
        ("vgg19", {"dropout": 1.5}),
        ("densenet121", {"growth_rate": 0}),
        ("vit", {"heads": 0}),
        ("vit", {"attention_dropout": -0.1}),
        ("fastnet", {"widths": [16, 0]}),
        ("fastnet", {"bn_momentum": 2.0}),
        ("mobilenetv2", {"width_mult": 0}),
        ("senet18", {"reduction": 0}),
        ("wrn-34-10", {"drop_rate": 1.0}),
        ("cait-small", {"layer_dropout": 1.0}),
        ("cait-small", {"patch_size": 0}),
    ],
)
def test_victim_parameters_outside_their_range_are_rejected_before_building(name, params):
    key = next(iter(params))
    with pytest.raises(ConfigError, match=f"parameter '{key}' is .*outside its range"):
        get_registry().create("victim", name, params)


def test_cait_rejects_a_patch_that_does_not_tile():
    with pytest.raises(ConfigError, match="not a multiple of patch_size 5"):
        _build("cait-small", patch_size=5)


# --------------------------------------------------------------------------- timm


def test_timm_builds_any_architecture_from_scratch_with_our_head():
    import timm

    model = _build("timm", meta=False, size=32, channels=1, classes=7, arch="resnet10t")
    assert model.head.out_features == 7 and model.feature_dim == 512
    assert model.backbone.conv1[0].in_channels == 1  # in_chans reached timm
    x = torch.rand(2, 1, 32, 32)
    assert model.features(x).shape == (2, 512) and model(x).shape == (2, 7)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.backbone.modules())  # head reset
    assert timm.is_model("resnet10t")


def test_timm_gives_the_image_size_to_architectures_that_take_one():
    tiny = {"arch": "vit_tiny_patch16_224"}
    model = _build("timm", size=64, **tiny)
    assert tuple(model.backbone.patch_embed.img_size) == (64, 64)
    assert model.feature_dim == 192
    fixed = _build("timm", size=64, pass_image_size=False, **tiny)
    assert tuple(fixed.backbone.patch_embed.img_size) == (224, 224)


def test_timm_typo_is_one_line_with_the_closest_name():
    victim = get_registry().create("victim", "timm", {"arch": "convnext_nanoo"})
    with pytest.raises(ConfigError, match="did you mean 'convnext_nano'") as err:
        victim.preflight()
    assert "'convnext_nanoo' is not a timm architecture" in err.value.line()


def test_timm_typo_stops_the_plan_before_any_work():
    from ueb.config import RunConfig
    from ueb.plan import resolve

    config = RunConfig(
        poisoners=("random-noise",), victims=("timm",), params={"timm": {"arch": "convnext_nanoo"}}
    )
    with pytest.raises(ConfigError, match="did you mean 'convnext_nano'"):
        resolve(config, get_registry(), load_data=False)


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    victim = get_registry().create("victim", "timm", {"arch": "resnet18"})
    with pytest.raises(ConfigError, match=r"needs the optional package timm") as err:
        victim.preflight()
    assert "pip install 'ueb[timm]'" in err.value.line()
    with pytest.raises(ConfigError, match="pip install"):
        victim.build(10, 32)


def test_timm_release_is_part_of_the_victims_identity():
    import timm

    victim = get_registry().create("victim", "timm", {"arch": "resnet10t"})
    assert victim.input_identity() == {"timm": timm.__version__}


def test_all_victims_are_the_architectures_not_the_adapter():
    chosen = get_registry().select("victim", ["all"])
    assert set(NEW) <= set(chosen) and "timm" not in chosen
    assert get_registry().left_out_of_all("victim", "timm") == "hidden"
