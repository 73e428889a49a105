"""Where computation runs: the one place that maps accelerator names and precisions to torch.

``auto`` picks a CUDA GPU when one is present, else the CPU. A GPU or MPS that was asked for
and is missing falls back to the CPU with a warning (never silently). ``precision="auto"``
is bf16-mixed where the device computes in bfloat16 natively (same quality, faster), else
32-true.
"""

from __future__ import annotations

import logging
import typing
from typing import Literal

import torch

from ptychopinn.errors import ConfigError

logger = logging.getLogger(__name__)

AcceleratorName = Literal["cpu", "gpu", "mps"]

#: What inference runs its network in.
InferencePrecision = Literal["32", "bf16"]


def resolve_accelerator(accelerator: str) -> AcceleratorName:
    """Lightning's accelerator name for a user's: ``auto``/``cpu``/``gpu``/``cuda``/``mps``."""
    name = str(accelerator).strip().lower()
    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if name in ("gpu", "cuda"):
        if torch.cuda.is_available():
            return "gpu"
        logger.warning("no CUDA GPU is available: running on the CPU")
        return "cpu"
    if name == "mps":
        if torch.backends.mps.is_available():
            return "mps"
        logger.warning("MPS is not available: running on the CPU")
        return "cpu"
    if name == "cpu":
        return "cpu"
    raise ConfigError(
        f"accelerator: expected one of auto, cpu, gpu, cuda, mps, got {accelerator!r}"
    )


def torch_device(accelerator: str) -> torch.device:
    """The torch device of an accelerator name (resolved first)."""
    resolved = resolve_accelerator(accelerator)
    return torch.device({"gpu": "cuda", "mps": "mps", "cpu": "cpu"}[resolved])


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bfloat16 natively (bf16 autocast is then faster).

    A CPU needs AVX512-BF16 or AMX (oneDNN emulates bfloat16 otherwise, slower than float32);
    a CUDA GPU needs compute capability 8 or newer.
    """
    kind = torch.device(device).type
    if kind == "cpu":
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch 2.x
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    if kind == "cuda":
        return bool(
            torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        )
    return False


def lightning_precisions() -> tuple[str, ...]:
    """The precision names Lightning's Trainer takes (from Lightning itself)."""
    from lightning.fabric import connector

    names = typing.get_args(connector._PRECISION_INPUT_STR)
    aliases = tuple(getattr(connector, "_PRECISION_INPUT_STR_ALIAS_CONVERSION", {}))
    return tuple(names) + tuple(a for a in aliases if a not in names)


def training_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision to train in; ``auto`` by the device's bfloat16 support."""
    if precision == "auto":
        return "bf16-mixed" if native_bf16(torch_device(accelerator)) else "32-true"
    choices = lightning_precisions()
    if precision not in choices:
        raise ConfigError(f"precision: expected auto or one of {list(choices)}, got {precision!r}")
    return precision


#: Spellings of the two precisions inference runs in.
_INFERENCE_PRECISIONS: dict[str, InferencePrecision] = {
    "32": "32",
    "32-true": "32",
    "bf16": "bf16",
    "bf16-mixed": "bf16",
}


def inference_precision(precision: str, device: torch.device | str) -> InferencePrecision:
    """``32`` or ``bf16`` (autocast) for the network at inference; ``auto`` stays in float32.

    Inference is cheap next to training, and float32 keeps the network's answer identical
    on every machine, so ``auto`` means 32 here.
    """
    if precision == "auto":
        return "32"
    if precision not in _INFERENCE_PRECISIONS:
        raise ConfigError(
            f"precision: inference runs in auto, 32-true or bf16-mixed (also 32, bf16), "
            f"got {precision!r}"
        )
    return _INFERENCE_PRECISIONS[precision]
