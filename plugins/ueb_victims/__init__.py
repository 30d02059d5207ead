"""Built-in victims: the paper's five architectures and a fast conv net for CPUs.

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
