"""Built-in victims: the paper's five architectures, four more from the robustness and
APBench literature, any timm architecture, and a fast conv net for CPUs.

Targets are "module:Class" strings, so listing victims never imports torch. docs/victims.md
gives each architecture's source and the choices made for 32x32 inputs.
"""

from ueb.hookspecs import hookimpl


@hookimpl
def register_victims(register):
    register(
        "fastnet",
        "ueb_victims.fastnet:FastNet",
        summary="Small airbench-style conv net (conv-BN-GELU blocks with pooling): the CPU and smoke-test victim",
    )
    register(
        "resnet18",
        "ueb_victims.resnet:ResNet18",
        summary="ResNet-18 (He et al. 2016), CIFAR stem at 32x32, torchvision layout at 224; the paper's main victim",
    )
    register(
        "resnet50",
        "ueb_victims.resnet:ResNet50",
        summary="ResNet-50 (He et al. 2016), CIFAR stem at 32x32, torchvision layout at 224",
    )
    register(
        "vgg19",
        "ueb_victims.vgg:VGG19",
        summary="VGG-19 with batch norm (Simonyan & Zisserman 2015), linear classifier on 512 features at 32x32",
    )
    register(
        "densenet121",
        "ueb_victims.densenet:DenseNet121",
        summary="DenseNet-121 (Huang et al. 2017), growth 32, CIFAR stem at 32x32",
    )
    register(
        "vit",
        "ueb_victims.vit:ViT",
        summary="Vision Transformer (Dosovitskiy et al. 2021) for 32x32: patch 4, depth 6, width 512, 8 heads",
    )
    register(
        "mobilenetv2",
        "ueb_victims.mobilenetv2:MobileNetV2",
        summary="MobileNetV2 (Sandler et al. 2018), kuangliu/APBench CIFAR layout: stride-1 stem and second stage",
    )
    register(
        "senet18",
        "ueb_victims.senet:SENet18",
        summary="SENet-18 (Hu et al. 2018): SE pre-activation ResNet-18 blocks, CIFAR stem (kuangliu/APBench)",
    )
    register(
        "wrn-34-10",
        "ueb_victims.wideresnet:WideResNet",
        summary="WideResNet-34-10 (Zagoruyko & Komodakis 2016), the adversarial-training standard (TRADES layout)",
    )
    register(
        "cait-small",
        "ueb_victims.cait:CaiT",
        summary="CaiT (Touvron et al. 2021), APBench's cait_small: patch 4, width 512, 6 + 2 class-attention layers",
    )
    register(
        "timm",
        "ueb_victims.timm_adapter:TimmVictim",
        summary="Any timm architecture (--param timm.arch=NAME), pretrained=False; needs pip install 'ueb[timm]'",
        hidden_from_all=True,  # an adapter, not one architecture; and timm is optional
    )
