"""Networks for small images, registered with timm so that they are timm architectures
like any other: a model stores the name, and ``timm.create_model`` builds it again
(weights.check_arch accepts only names timm registers).

ImageNet's ResNets shrink an image 4x before the first block (a 7x7 stride-2 convolution,
then a max-pool): a 16-pixel digit is 4x4 pixels when the network starts to look at it,
and 11 million weights learn from what is left. The small ResNet keeps the whole image
(a 3x3 stride-1 stem, no pool; as the SimCLR paper's CIFAR-10 ResNets do), with one block
per stage at half ResNet-18's widths: on scikit-learn's 8x8 digits at input_size=16 its
SimCLR embeddings rank held-out digits better in 15 epochs than ResNet-18's do in 12
at 32 pixels, in a third of the time (bench/simclr_recipe.py).

This module is pure Python until ``register`` runs (the families' specs name the
networks); the families' model modules call it when they are imported.
"""

from __future__ import annotations

from typing import Any

SMALL_RESNET = "thanosql_small_resnet"
__all__ = [SMALL_RESNET]  # timm's register_model lists what a module registers here


def _small_resnet(pretrained: bool = False, **kwargs: Any) -> Any:
    """ResNet-10 with a 3x3 stride-1 stem (64 wide) and no max-pool; stages 32, 64, 128, 256 wide."""
    from timm.models.resnet import BasicBlock, ResNet
    from torch import nn

    if pretrained:  # no published weights: timm_network's pretrained path refuses it before this
        raise ValueError(f"{SMALL_RESNET} has no pretrained weights")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # create_model's, for its builder
        kwargs.pop(key, None)
    channels = (32, 64, 128, 256)
    net = ResNet(BasicBlock, (1, 1, 1, 1), channels=channels, **kwargs)
    stem = net.conv1  # the same width, at stride 1
    net.conv1 = nn.Conv2d(stem.in_channels, stem.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def register() -> None:
    """Register the small networks with timm (once; a second call changes nothing)."""
    import timm
    from timm.models import register_model

    if not timm.models.is_model(SMALL_RESNET):
        _small_resnet.__name__ = SMALL_RESNET
        register_model(_small_resnet)
