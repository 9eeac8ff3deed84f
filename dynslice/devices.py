"""Devices named by users (`auto`, `cpu`, `cuda:1`, ...) and the machine a timing was taken on."""

from __future__ import annotations

import platform

import torch

from dynslice.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto` (or None): cuda when available, else cpu. A CUDA device on a machine without one is refused."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N ({exc})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this machine has no CUDA GPU (torch "
                          f"{torch.__version__}): use --device cpu or auto")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return resolved


def machine(device: torch.device) -> dict[str, str]:
    """What a speed measurement depends on: the exact device, the thread count and the software versions."""
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor()
                                                                           or platform.machine())
    return {"device": device.type, "name": name, "threads": str(torch.get_num_threads()), "torch": torch.__version__,
            "transformers": transformers.__version__}
