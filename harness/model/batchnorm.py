"""BatchNorm freezing: keep the early backbone's statistics and affine at their pretrained values.

"Freeze the first third of the backbone's layers" is taken as: the first third of the
backbone's BatchNorm modules in forward order, stem included. For timm's MobileNet
family registration order is forward order (a test checks it), so module order is used.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from harness.errors import ConfigError

__all__ = ["batchnorm_names", "freeze_batchnorm", "keep_frozen_bn_eval"]


def batchnorm_names(module: nn.Module) -> list[str]:
    """Names of all BatchNorm modules (timm's BatchNormAct2d included) in registration order."""
    return [name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(backbone: nn.Module, fraction: float) -> list[str]:
    """Freeze round(fraction * n_bn) leading BatchNorms: no grad on affine, eval-mode statistics.

    Returns their names. Eval mode is lost on the next `model.train()`, so whoever calls
    train() must call `keep_frozen_bn_eval` with these names afterwards (Detector does).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"model.freeze_bn_fraction must be in [0, 1], but got {fraction}")
    names = batchnorm_names(backbone)
    frozen = names[: round(fraction * len(names))]
    for name in frozen:
        bn = backbone.get_submodule(name)
        for p in bn.parameters():
            p.requires_grad_(False)
    keep_frozen_bn_eval(backbone, frozen)
    return frozen


def keep_frozen_bn_eval(module: nn.Module, names: Iterable[str]) -> None:
    """Put the named BatchNorms back in eval mode so they neither update nor use batch statistics."""
    for name in names:
        module.get_submodule(name).eval()
