"""Frozen teacher T: a torchvision ResNet cut after layer3 (Sec. 3.2, Fig. 3)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from utils.errors import InputError

# The backbones of Table 8. Each maps to its torchvision builder and the ImageNet
# weights the paper used (torchvision's IMAGENET1K_V1 for every backbone).
BACKBONES = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
    "wide_resnet50_2": (models.wide_resnet50_2, models.Wide_ResNet50_2_Weights.IMAGENET1K_V1),
}
KEPT_MODULES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")


def check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise InputError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """Load torchvision's ImageNet weights, or explain how to get them offline."""
    url = BACKBONES[backbone][1].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    was_cached = cached.is_file()  # then torch.hub only loads it: any error means it is damaged
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True)
    except Exception as error:  # URLError, OSError, RuntimeError (hash) when downloading
        if was_cached:
            raise InputError(
                f"The cached ImageNet weights file {cached} is damaged ({type(error).__name__}); "
                f"delete it so that the next run downloads it again, or replace it with {url}."
            ) from None
        raise InputError(
            f"Could not load the ImageNet weights for {backbone} ({type(error).__name__}: {error}); "
            f"download {url} and put the file {cached.name} in {cached.parent}, "
            f"or pass --weights=path/to/state_dict.pth, or run without them with --weights=none."
        ) from None


def file_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict saved with torch.save(model.state_dict(), path)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:  # missing, a folder, no permission
        raise InputError(
            f"Could not read the backbone weights file {path} ({error}); check the path given to --weights."
        ) from None
    except Exception as error:  # torch.load raises many types for a file it cannot parse
        raise InputError(
            f"Could not read the backbone weights file {path} as a state dict ({type(error).__name__}); "
            "save the weights with torch.save(model.state_dict(), path), not the whole model."
        ) from None
    if not isinstance(state, dict):
        raise InputError(
            f"The backbone weights file {path} holds a {type(state).__name__}, not a state dict; "
            "save the weights with torch.save(model.state_dict(), path)."
        )
    return state


def load_kept_modules(network: nn.Module, state: dict[str, torch.Tensor], misfit: str) -> None:
    """Load the stem and layer1-3 from a full-network state dict; layer4 and fc may be absent."""
    kept = {key: value for key, value in state.items() if key.split(".")[0] in KEPT_MODULES}
    try:
        missing = network.load_state_dict(kept, strict=False).missing_keys
    except RuntimeError as error:  # a shape mismatch
        raise InputError(f"{misfit}: {str(error).splitlines()[1].strip()}") from None
    missing = [key for key in missing if key.split(".")[0] in KEPT_MODULES]
    if missing:
        raise InputError(f"{misfit}: {len(missing)} keys are missing, e.g. {missing[0]}.")


class Teacher(nn.Module):
    """ResNet stem and layer1-3 of a torchvision backbone; layer4 and fc are dropped, never run.

    Frozen: no parameter requires grad, the module stays in eval mode whatever
    `.train()` is called with, and the forward pass records no autograd graph.
    """

    def __init__(self, backbone: str = "wide_resnet50_2", weights: str | None = "imagenet"):
        super().__init__()
        check_backbone(backbone)
        network = BACKBONES[backbone][0](weights=None)
        if weights is not None:
            state = imagenet_state_dict(backbone) if weights == "imagenet" else file_state_dict(weights)
            load_kept_modules(network, state, f"The weights file {weights} does not fit {backbone}")
        for name in KEPT_MODULES:
            self.add_module(name, getattr(network, name))
        # What the bottleneck and the student mirror: the block type, its group
        # width, and the channels of the three levels (planes 64, 128, 256 x expansion).
        self.block = type(network.layer1[0])
        self.width_per_group = network.base_width
        self.channels = tuple(64 * 2**i * self.block.expansion for i in range(3))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # BN statistics stay ImageNet's

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, 3, H, W) -> [layer1 (B, C1, H/4, W/4), layer2 (B, C2, H/8, W/8), layer3 (B, C3, H/16, W/16)]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]
