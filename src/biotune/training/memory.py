"""What a run needs in disk, RAM and device memory, and a refusal before it cannot fit.

The figures are estimated from the model and one measured forward pass, not from a run:

- **store on disk**: the dataset's uint8 images (:mod:`biotune.data.store`), once for all
  processes and later runs; the operating system caches what it reads of them in RAM,
  shared by every process (page cache: reclaimable, so it is not counted as needed).
- **per process** (the main one and each worker): Python, torch and timm; the weights, their
  pristine copy, gradients and Adam's two moments (full fine-tuning, the dearest case), the best
  epoch's weights of a final run; the activations of a training batch (every layer's output,
  kept for the backward pass) and of an evaluation batch; the batch itself; the frozen-prefix
  cache up to its budget (at most 3x the float size of the images: a prefix's output can be
  larger than its input). On CUDA the model's share is device memory and the rest RAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import RuntimeConfig
from ..errors import BioTuneError

__all__ = ["MemoryNeeds", "memory_needs", "format_bytes"]

RUNTIME_BYTES = 600 * 2**20  # Python with torch, timm and the libraries loaded (measured: 0.5-0.6 GB RSS)


def format_bytes(n: float) -> str:
    """``512 MB``, ``3.2 GB``."""
    if n < 2**30:
        return f"{n / 2**20:.0f} MB"
    return f"{n / 2**30:.1f} GB"


@dataclass(frozen=True)
class MemoryNeeds:
    """A run's memory figures (bytes).

    Attributes:
        store: the uint8 images on disk (all splits).
        ram_per_process: resident memory one training process needs (the store's pages excluded).
        device_per_process: device memory one process needs (0 on the CPU: it is RAM there).
        processes: processes that hold a session on this machine (the main one and local workers).
        ram_available, device_available: what this machine has free now (None: unknown).
        float_copy: what the float32 copy of the dataset held per process before the store (for
            comparison; no longer allocated).
        device: the training device.
    """

    store: int
    ram_per_process: int
    device_per_process: int
    processes: int
    ram_available: int | None
    device_available: int | None
    float_copy: int
    device: str

    @property
    def ram_needed(self) -> int:
        return self.ram_per_process * self.processes

    def lines(self) -> list[str]:
        where = "RAM" if not self.device_per_process else f"RAM, plus {format_bytes(self.device_per_process)} " \
                                                            f"of {self.device} memory"
        return [
            f"memory: dataset store {format_bytes(self.store)} on disk (uint8, mapped and shared by every process); "
            f"{format_bytes(self.ram_per_process)} {where} per process x {self.processes} "
            f"(model, optimiser, batch, activations, prefix cache; the float32 dataset copy of "
            f"{format_bytes(self.float_copy)} per process is gone)",
        ]

    def problem(self) -> str | None:
        """Why the run would not fit this machine, naming the figure and what cuts it; None if it fits."""
        cuts = "a smaller --image-size or --batch-size, fewer --workers-per-device or --workers, or a GPU"
        if self.ram_available is not None and self.ram_needed > 0.9 * self.ram_available:
            return (f"the run needs about {format_bytes(self.ram_needed)} of RAM ({self.processes} process(es) x "
                    f"{format_bytes(self.ram_per_process)}) but {format_bytes(self.ram_available)} is available; "
                    f"to cut it: {cuts}, or a lower --cache-memory")
        if self.device_available is not None and self.device_per_process > 0.9 * self.device_available:
            return (f"the run needs about {format_bytes(self.device_per_process)} of {self.device} memory per process "
                    f"but {format_bytes(self.device_available)} is free; to cut it: a smaller --image-size or "
                    "--batch-size, or fewer --workers-per-device")
        return None

    def check(self) -> None:
        """Raise :class:`BioTuneError` with :meth:`problem` when the run would not fit."""
        problem = self.problem()
        if problem:
            raise BioTuneError(f"not enough memory: {problem}")


def _model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@torch.no_grad()
def _activation_bytes(model: torch.nn.Module, sample: torch.Tensor) -> tuple[int, int]:
    """Bytes per image of every leaf module's output (all of them: kept for backward) and of the largest."""
    total, largest = [0], [0]

    def hook(_, __, out):
        if isinstance(out, torch.Tensor):
            n = out.numel() * out.element_size()
            total[0] += n
            largest[0] = max(largest[0], n)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    training = model.training
    try:
        model.eval()
        model(sample)
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    n = max(1, len(sample))
    return total[0] // n, largest[0] // n


def memory_needs(session, runtime: RuntimeConfig, processes: int, *, cache_bytes: int | None = None) -> MemoryNeeds:
    """The memory figures of training on ``session`` with ``processes`` sessions on this machine."""
    import psutil

    tuner = session.finetuner
    t = session.splits
    device = tuner.device
    images = [t.x_train, t.x_val, t.x_test]
    store = sum(getattr(x, "uint8_bytes", 0) for x in images)
    size = session.image_size
    per_image_float = 3 * size * size * 4
    float_copy = sum(len(x) for x in images) * per_image_float
    weights = _model_bytes(tuner.model)
    sample = t.x_val[:2]
    activations, largest = _activation_bytes(tuner.model, sample)
    batch = tuner.batch_size
    model_side = (6 * weights + activations * batch + 2 * largest * tuner.eval_batch_size
                  + per_image_float * (batch + tuner.eval_batch_size)
                  + min(runtime.cache_bytes if cache_bytes is None else cache_bytes, 3 * float_copy))
    host_side = RUNTIME_BYTES + batch * (store // max(1, sum(len(x) for x in images)))  # the uint8 batch on the host
    ram_available = int(psutil.virtual_memory().available)
    device_available = None
    if device.type == "cuda":
        device_available = int(torch.cuda.mem_get_info(device)[0])
        ram_per_process, device_per_process = host_side + weights, model_side  # the pristine copy lives with the model
    else:
        ram_per_process, device_per_process = host_side + model_side, 0
    return MemoryNeeds(store, int(ram_per_process), int(device_per_process), processes, ram_available, device_available,
                      float_copy, str(device))
