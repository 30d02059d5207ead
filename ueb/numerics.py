"""Numerics: everything about *how* a number is computed that can change it.

Two machines of one kind can print different numbers for one configuration when the
floating-point path differs: intra-op threads split reductions differently, oneDNN and ATen
pick kernels by instruction set, channels_last reorders convolution sums, bf16 rounds. So the
plan resolves these once, and the result enters every identity (cells, poisons, trainings,
artifacts): a number computed under other numerics is never reused as if it were this one.

`CORE_PROTOCOL` is the version of the core's own numerics (the Trainer, evaluation, the probe,
mixing a partial poison): bump it whenever one of them changes a number on purpose, as a
plugin bumps its `version`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from typing import Any

# 2: channels_last on CPUs, one intra-op thread per process by default, trainings shared
#    across cells by the bytes they train on.
CORE_PROTOCOL = "2"

# Environment variables that cap or choose the kernels (recorded and hashed as set).
KERNEL_ENV = (
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_DEFAULT_FPMATH_MODE",
)


@dataclass(frozen=True)
class Numerics:
    """The resolved numerics of a run: what is hashed into every identity."""

    device: str  # "cpu", "cuda", "mps"
    accelerator: str  # CUDA: the GPU's name; CPU: torch's vector ISA (e.g. "AVX512")
    kernel_env: tuple[tuple[str, str], ...]  # ISA caps and kernel choices from the environment
    threads: int  # intra-op threads per process
    precision: str  # "fp32" or "bf16"
    channels_last: bool
    deterministic: bool
    core: str = CORE_PROTOCOL

    def identity(self) -> dict[str, Any]:
        return {**asdict(self), "kernel_env": dict(self.kernel_env)}

    def short(self) -> str:
        """One short line for a run's introduction (the ISA caps only when set)."""
        layout = "channels_last" if self.channels_last else "contiguous"
        caps = "".join(f", {v}" for _k, v in self.kernel_env)
        return (
            f"{self.device} {self.accelerator}{caps}, {self.threads} thread"
            f"{'s' if self.threads != 1 else ''}, {self.precision}, {layout}, core {self.core}"
        )

    def describe(self) -> str:
        caps = ", ".join(f"{k}={v}" for k, v in self.kernel_env)
        layout = "channels_last" if self.channels_last else "contiguous"
        threads = f", {self.threads} thread{'s' if self.threads != 1 else ''}/process"
        return (
            f"{self.device} {self.accelerator}{threads}, {self.precision}, {layout}"
            + (", deterministic" if self.deterministic else "")
            + (f", {caps}" if caps else "")
            + f", core protocol {self.core}"
        )


def device_type(device: str) -> str:
    """The kind of processor `--device` resolves to on this machine ("cpu", "cuda", "mps")."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


def accelerator_of(kind: str, device: str) -> str:
    import torch

    if kind == "cuda":
        index = torch.device(device).index if ":" in device else None
        return str(torch.cuda.get_device_name(index))
    if kind == "cpu":
        return str(torch.backends.cpu.get_cpu_capability())
    return kind


def kernel_environment() -> tuple[tuple[str, str], ...]:
    return tuple((k, os.environ[k]) for k in KERNEL_ENV if os.environ.get(k))


def channels_last_safe(
    kind: str, accelerator: str, kernel_env: tuple[tuple[str, str], ...]
) -> bool:
    """Where channels_last is used when asked for. CUDA: always. CPU: with AVX-512 kernels only.
    Measured (2026-12-01, torch 2.14.1): with oneDNN capped to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2,
    as on an AVX2-only CPU) the backward pass of a channels_last ResNet-18 of width 2 or 4
    segfaults, while contiguous tensors and AVX-512 kernels are fine; so AVX2 machines train
    contiguous (and their ids say so)."""
    if kind == "cuda":
        return True
    if kind != "cpu" or not accelerator.upper().startswith("AVX512"):
        return False
    cap = dict(kernel_env).get("ONEDNN_MAX_CPU_ISA") or dict(kernel_env).get("DNNL_MAX_CPU_ISA")
    return cap is None or cap.upper().startswith("AVX512") or cap.upper() in ("ALL", "DEFAULT")


def resolve_numerics(
    device: str, precision: str, channels_last: bool, threads: int, deterministic: bool
) -> Numerics:
    """What the trainer and plugins will really do on `device`.

    precision "auto": bf16 autocast on CUDA, fp32 elsewhere. threads 0: one intra-op thread
    per process (a cell's numbers then never depend on how many workers share the machine or
    how many cores it has; more workers, not more threads, use more cores).
    """
    kind = device_type(device)
    if precision == "auto":
        precision = "bf16" if kind == "cuda" else "fp32"
    accelerator = accelerator_of(kind, device)
    env = kernel_environment()
    return Numerics(
        device=kind,
        accelerator=accelerator,
        kernel_env=env,
        threads=threads or 1,
        precision=precision,
        channels_last=bool(channels_last) and channels_last_safe(kind, accelerator, env),
        deterministic=deterministic,
    )


def apply_numerics(numerics: Numerics) -> None:
    """Make this process compute as `numerics` says (threads, deterministic algorithms)."""
    import torch

    if torch.get_num_threads() != numerics.threads:
        torch.set_num_threads(numerics.threads)
    if numerics.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)


def cpu_model() -> str:
    """The CPU's model name as the OS reports it (/proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record(device: str, threads: int | None = None) -> str:
    """What a record says about where it was computed: the processor and the threads its
    cells use (this process's own unless given)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(torch.device(device)))
    threads = torch.get_num_threads() if threads is None else threads
    return f"cpu ({cpu_model()}, {threads} thread{'s' if threads != 1 else ''})"
