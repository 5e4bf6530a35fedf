"""What a run needs in disk, RAM and device memory, fitted to a limit, and a refusal before it cannot fit.

The per-process figure is **measured**, not derived from layer sizes: with the session prepared,
one training step of full fine-tuning (the dearest case: every block trains, gradients of every
weight) and one evaluation pass run at two small batch sizes, and the process's peak (resident
memory via ``VmHWM``, reset through ``/proc/self/clear_refs``; on CUDA ``max_memory_allocated``)
gives what a step costs per image and in fixed overhead (:func:`profile_memory`); when a limit
needs gradient checkpointing, the checkpointed step is measured again at doubling batches up to the
run's (:func:`refine_checkpointed`: on a CPU it grows less than linearly). A run's peak is then

    now (the process as prepared: runtime, model, its pristine copy, the mapped data)
    + Adam's two moments and the best epoch's weights (3 × the weights)
    + the larger of a training step at the batch size and an evaluation pass at the evaluation batch
    + the frozen-prefix cache, up to its budget.

Where the peak cannot be reset (not Linux), the activations are estimated from every layer's
output size instead (an upper bound: in-place layers are counted twice).

**A limit** (``--memory-limit``; default what the machine has free when the run starts, shared by
every process that holds a session on it; the plan fills 85 % of it) is met by, in this order: a smaller evaluation batch
(results do not change), timm's gradient checkpointing (activations recomputed in the backward
pass: ~20–30 % more compute on a GPU, measured 1.9× the time per epoch on a 2-core CPU), a
smaller prefix cache. When even all three cannot fit, the run is refused, naming the smallest
limit that would do and what lowers it.

- **store on disk**: the dataset's uint8 images (:mod:`biotune.data.store`), once for all
  processes and later runs; the operating system caches what it reads of them (page cache:
  shared and reclaimable, not counted as needed).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..config import RuntimeConfig
from ..errors import BioTuneError
from .peak import device_peak, ram_peak, reset_peaks, resident

__all__ = ["MemoryNeeds", "MemoryProfile", "MemoryFit", "apply_fit", "memory_needs", "profile_memory",
           "refine_checkpointed", "fit_memory", "format_bytes"]

RUNTIME_BYTES = 600 * 2**20  # Python with torch, timm and the libraries loaded (measured: 0.5-0.6 GB RSS)
OPTIMIZER_COPIES = 3  # Adam's two moments and the best epoch's weights, each the size of the weights
PROBE_BATCHES = (2, 8)  # the batches a profile measures: small, so that profiling itself fits anywhere
MARGIN = 0.85  # share of a limit the plan fills: measured, the plan was from 13 % under to 17 % over a run's peak


def format_bytes(n: float) -> str:
    """``512 MB``, ``3.2 GB``."""
    if n < 2**30:
        return f"{n / 2**20:.0f} MB"
    return f"{n / 2**30:.1f} GB"


@dataclass(frozen=True)
class MemoryProfile:
    """What one training process holds and what a step adds, measured on it (bytes).

    Attributes:
        base: the process now (RAM, or allocated device memory on CUDA), session prepared.
        weights: the model's parameters and buffers.
        step_fixed, step_per_image: a training step's peak above ``base``: fixed part and per image.
        ckpt_fixed, ckpt_per_image: the same with gradient checkpointing (None: not measured, or
            the model has none).
        eval_per_image: an evaluation pass's peak per image.
        measured: ``False`` when the figures are estimated from layer output sizes.
        ckpt_probe: the largest batch the checkpointed step was measured at (0: not measured).
    """

    base: int
    weights: int
    step_fixed: int
    step_per_image: int
    ckpt_fixed: int | None
    ckpt_per_image: int | None
    eval_per_image: int
    measured: bool = True
    ckpt_probe: int = 0

    def peak(self, batch: int, eval_batch: int, checkpointing: bool = False, cache: int = 0) -> int:
        """A run's planned peak in this process at these settings."""
        fixed, per_image = self.step_fixed, self.step_per_image
        if checkpointing and self.ckpt_per_image is not None:
            fixed, per_image = self.ckpt_fixed or 0, self.ckpt_per_image
        step = fixed + per_image * batch
        return int(self.base + OPTIMIZER_COPIES * self.weights + max(step, self.eval_per_image * eval_batch) + cache)


@dataclass(frozen=True)
class MemoryFit:
    """The settings a limit leaves a run: evaluation batch, checkpointing, prefix cache; and why."""

    eval_batch: int
    grad_checkpointing: bool
    cache_bytes: int
    peak: int
    changes: tuple[str, ...] = ()


def fit_memory(profile: MemoryProfile, limit: int, *, batch: int, eval_batch: int, cache: int,
               checkpointing: bool = False, can_checkpoint: bool = True) -> MemoryFit | None:
    """The least costly settings under ``limit`` bytes per process, or ``None`` when nothing fits.

    Tried in order: the evaluation batch halved down to 1 (free: results do not change), then
    gradient checkpointing (more compute), then the prefix cache shrunk to what is left (slower
    frozen prefixes). The settings asked for are kept whenever they fit.
    """
    ev, ckpt = eval_batch, checkpointing

    def shrink_eval(ev: int) -> int:  # only while the evaluation pass is what sets the peak
        while ev > 1 and profile.peak(batch, ev, ckpt, cache) > limit and \
                profile.peak(batch, ev, ckpt, cache) > profile.peak(batch, 0, ckpt, cache):
            ev = max(1, ev // 2)
        return ev

    if profile.peak(batch, ev, ckpt, cache) <= limit:
        return MemoryFit(ev, ckpt, cache, profile.peak(batch, ev, ckpt, cache))
    ev = shrink_eval(ev)
    if profile.peak(batch, ev, ckpt, cache) > limit and not ckpt and can_checkpoint \
            and profile.ckpt_per_image is not None:
        ckpt = True
        ev = shrink_eval(ev)
    new_cache = cache
    if profile.peak(batch, ev, ckpt, cache) > limit and cache > 0:
        new_cache = max(0, int(limit - profile.peak(batch, ev, ckpt, 0)))
    peak = profile.peak(batch, ev, ckpt, new_cache)
    if peak > limit:
        return None
    changes = []
    if ev != eval_batch:
        changes.append(f"evaluation batch {eval_batch} -> {ev} (same results)")
    if ckpt != checkpointing:
        changes.append("gradient checkpointing on (activations recomputed: ~20-30% more compute on a GPU, "
                       "about 1.9x the time per epoch on a CPU)")
    if new_cache != cache:
        changes.append(f"prefix cache {format_bytes(cache)} -> {format_bytes(new_cache)}")
    return MemoryFit(ev, ckpt, new_cache, peak, tuple(changes))


@dataclass(frozen=True)
class MemoryNeeds:
    """A run's memory figures (bytes).

    Attributes:
        store: the uint8 images on disk (all splits).
        ram_per_process: resident memory one training process needs at its peak (planned).
        device_per_process: device memory one process needs (0 on the CPU: it is RAM there).
        processes: processes that hold a session on this machine (the main one and local workers).
        ram_available, device_available: what this machine has free now (None: unknown).
        float_copy: what the float32 copy of the dataset held per process before the store (for
            comparison; no longer allocated).
        device: the training device.
        limit: the limit the plan was fitted to (all processes together; None: what is available).
        fit: the settings the limit leaves (None: nothing fits).
        minimum: the smallest limit that would fit (all processes), with every saving applied.
        measured: whether the per-process figure comes from a measured step.
        batch_that_fits: when nothing fits at this batch size, the largest power-of-two batch
            size that would, with every saving applied (None: none, or not needed).
    """

    store: int
    ram_per_process: int
    device_per_process: int
    processes: int
    ram_available: int | None
    device_available: int | None
    float_copy: int
    device: str
    limit: int | None = None
    fit: MemoryFit | None = None
    minimum: int | None = None
    measured: bool = False
    batch_that_fits: int | None = None

    @property
    def ram_needed(self) -> int:
        return self.ram_per_process * self.processes

    @property
    def budget(self) -> int | None:
        """What the run must stay within, all processes together: the limit, else what is free now."""
        if self.limit is not None:
            return self.limit
        return self.device_available if self.device_per_process else self.ram_available

    def lines(self) -> list[str]:
        where = "RAM" if not self.device_per_process else f"RAM, plus {format_bytes(self.device_per_process)} " \
                                                            f"of {self.device} memory"
        how = "measured step" if self.measured else "estimated from layer sizes"
        out = [
            f"memory: dataset store {format_bytes(self.store)} on disk (uint8, shared by every process); "
            f"{format_bytes(self.ram_per_process)} {where} per process x {self.processes} at the peak ({how}: "
            f"model, optimiser, a training step, evaluation, prefix cache)",
        ]
        if self.fit is not None and self.fit.changes:
            budget = self.budget
            out.append(f"memory limit {format_bytes(budget or 0)}: " + "; ".join(self.fit.changes))
        return out

    def problem(self) -> str | None:
        """Why the run would not fit, naming the smallest limit that would and what cuts it; None if it fits."""
        budget = self.budget
        if budget is None or self.fit is not None:
            return None
        cuts = "a smaller --image-size or --batch-size, fewer --workers-per-device or --workers"
        if self.batch_that_fits:
            cuts = f"--batch-size {self.batch_that_fits} (it fits this limit), a smaller --image-size, fewer workers"
        what = "RAM" if not self.device_per_process else f"{self.device} memory"
        limit = "--memory-limit" if self.limit is not None else "available"
        minimum = f"at least {format_bytes(self.minimum)}" if self.minimum else "more"
        return (f"the run needs {minimum} of {what} ({self.processes} process(es), with a smaller evaluation batch, "
                f"gradient checkpointing and no prefix cache) but {format_bytes(budget)} is {limit}; "
                f"to cut it: {cuts}, or a GPU")

    @property
    def needed(self) -> int:
        return (self.device_per_process if self.device_per_process else self.ram_per_process) * self.processes

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


def _trim() -> None:
    """Hand the C heap's free memory back to the system (glibc's ``malloc_trim``), so that the next
    measurement starts from what is really in use, not from memory the allocator kept."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is then an underestimate at worst
        pass


def _measure(fn, device: torch.device) -> int | None:
    """Peak bytes ``fn()`` adds to this process (device memory on CUDA); None when it cannot be reset."""
    _trim()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        reset_peaks(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, device_peak(device) - before)
    before = resident()
    if not before or not reset_peaks(device):
        return None
    fn()
    return max(0, ram_peak() - before)


def _linear(small: int, large: int, b1: int, b2: int) -> tuple[int, int]:
    """Fixed part and per-image slope through two (batch, bytes) measurements."""
    per_image = max(0, (large - small) // max(1, b2 - b1))
    return max(0, small - per_image * b1), per_image


@contextmanager
def _probing(tuner, sample: torch.Tensor, rows: int):
    """Within: ``step(b, checkpointing)`` and ``evaluate(b)`` run on ``b`` of ``rows`` rows built from
    ``sample`` (repeated when short: only the shapes matter), every weight trainable (full fine-tuning,
    the dearest case). After: the model's weights, buffers (BatchNorm statistics), trainable flags,
    mode and checkpointing as they were."""
    model, device = tuner.model, tuner.device
    x = sample[:rows]
    if len(x) < rows:
        x = torch.cat([x] * (rows // max(1, len(x)) + 1))[:rows]
    y = torch.zeros(rows, dtype=torch.long, device=device)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    training = model.training
    can = hasattr(model, "set_grad_checkpointing")
    on = bool(tuner.options.grad_checkpointing)

    def step(b: int, checkpointing: bool = False) -> None:
        if can:
            model.set_grad_checkpointing(checkpointing)
        model.train()
        with tuner._autocast():
            loss = torch.nn.functional.cross_entropy(model(x[:b]), y[:b])
        loss.backward()
        model.zero_grad(set_to_none=True)

    def evaluate(b: int) -> None:
        model.eval()
        with torch.inference_mode(), tuner._autocast():
            model(x[:b])

    gc.collect()
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        yield step, evaluate
    finally:
        model.load_state_dict(state)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(training)
        if can:
            model.set_grad_checkpointing(on)


def profile_memory(tuner, sample: torch.Tensor, *, checkpointing: bool | None = None) -> MemoryProfile:
    """Measure a training step and an evaluation pass of ``tuner``'s model on rows of ``sample``.

    The model is left as it was (:func:`_probing`). ``checkpointing``: also measure with gradient
    checkpointing (default: when the model has it; :func:`memory_needs` asks only when a limit may
    need it, and then refines it with :func:`refine_checkpointed`).
    """
    model, device = tuner.model, tuner.device
    weights = _model_bytes(model)
    can = hasattr(model, "set_grad_checkpointing")
    checkpointing = can if checkpointing is None else (checkpointing and can)
    b1, b2 = PROBE_BATCHES[0], max(PROBE_BATCHES[0] + 1, min(len(sample), PROBE_BATCHES[1]))
    with _probing(tuner, sample, b2) as (step, evaluate):
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else resident()
        step(b1)  # warm-up: lazily allocated state is not a step's cost
        s1, s2 = _measure(lambda: step(b1), device), _measure(lambda: step(b2), device)
        if s1 is None or s2 is None:
            activations, largest = _activation_bytes(model, sample[:2])
            per_image = activations + 3 * sample[0].numel() * 4
            return MemoryProfile(RUNTIME_BYTES + 2 * weights if device.type != "cuda" else 2 * weights, weights,
                                 weights, per_image, None, None, 2 * largest, measured=False)
        ckpt = (None, None)
        if checkpointing:
            ckpt = _linear(_measure(lambda: step(b1, True), device), _measure(lambda: step(b2, True), device), b1, b2)
        e1, e2 = _measure(lambda: evaluate(b1), device), _measure(lambda: evaluate(b2), device)
    fixed, per_image = _linear(s1, s2, b1, b2)
    _, eval_per_image = _linear(e1, e2, b1, b2)
    eval_per_image = max(eval_per_image, e2 // b2)
    return MemoryProfile(int(base), weights, fixed, per_image, ckpt[0], ckpt[1], eval_per_image,
                         ckpt_probe=b2 if checkpointing else 0)


def refine_checkpointed(tuner, sample: torch.Tensor, profile: MemoryProfile, batch: int,
                        room: int) -> MemoryProfile:
    """The checkpointed step re-measured at larger batches, doubling up to ``batch`` as far as the
    current line says a probe fits in ``room`` bytes (the whole process).

    Why: on a CPU the checkpointed step's peak grows less than linearly with the batch (small
    tensors come from the C heap, which keeps what it freed; large ones are mapped and handed back
    at once). Measured with EfficientNet-Lite0 at 224 px: the line through batches 2 and 8 put batch
    64 at 3.7 GB, 1.8x what it took (2.1 GB), and refused a 4 GB limit that the run keeps. The line
    through two batches overestimates every batch beyond them (the growth is concave), so each
    probe's own peak stays under what the previous line promised, and the last line passes through
    the batch itself.
    """
    if profile.ckpt_per_image is None or not profile.measured or not profile.ckpt_probe:
        return profile
    high = profile.ckpt_probe
    fixed, per_image = profile.ckpt_fixed or 0, profile.ckpt_per_image
    at_high = None
    while high < batch:
        # the next probe: double, or the largest batch that the current line says fits (a quarter up at least)
        fits = (room - profile.base - fixed) // max(1, per_image)
        nxt = min(2 * high, batch, fits)
        if nxt < high + max(1, high // 4):
            break
        with _probing(tuner, sample, nxt) as (step, _):
            at_high = at_high if at_high is not None else _measure(lambda: step(high, True), tuner.device)
            at_next = _measure(lambda: step(nxt, True), tuner.device)
        if at_high is None or at_next is None:
            break
        (fixed, per_image), high, at_high = _linear(at_high, at_next, high, nxt), nxt, at_next
    if high == profile.ckpt_probe:
        return profile
    return dataclasses.replace(profile, ckpt_fixed=fixed, ckpt_per_image=per_image, ckpt_probe=high)


def memory_needs(session, runtime: RuntimeConfig, processes: int, *, limit: int | None = None,
                 cache_bytes: int | None = None, profile: MemoryProfile | None = None) -> MemoryNeeds:
    """The memory figures of training on ``session`` with ``processes`` sessions on this machine,
    fitted to ``limit`` bytes (all processes together; default: what is free now). ``cache_bytes``: the
    frozen-prefix cache to count (default: the runtime's budget; 0 for a job that freezes no leading
    block, such as full fine-tuning, which never fills it)."""
    import psutil

    tuner = session.finetuner
    t = session.splits
    device = tuner.device
    images = [t.x_train, t.x_val, t.x_test]
    store = sum(getattr(x, "uint8_bytes", 0) for x in images)
    size = session.image_size
    per_image_float = 3 * size * size * 4
    float_copy = sum(len(x) for x in images) * per_image_float
    cache = min(runtime.cache_bytes if cache_bytes is None else cache_bytes, 3 * float_copy)
    sample = t.x_val[:8]
    given = profile is not None
    asked_ckpt = bool(tuner.options.grad_checkpointing)
    profile = profile or profile_memory(tuner, sample, checkpointing=asked_ckpt)
    ram_available = int(psutil.virtual_memory().available)
    device_available = int(torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else None
    available = device_available if device.type == "cuda" else ram_available
    if device.type != "cuda":  # RAM not yet taken by this process counts as free for it
        available = available + resident()
    budget = limit if limit is not None else available
    # a share of the budget kept for what the plan does not see (MARGIN)
    per_process = None if budget is None else int(MARGIN * budget) // max(1, processes)
    batch = tuner.batch_size
    asked = dict(batch=batch, eval_batch=tuner.eval_batch_size, cache=cache, checkpointing=asked_ckpt)
    fit = None if per_process is None else fit_memory(profile, per_process, **asked)
    if not given and per_process is not None and (fit is None or fit.changes) and profile.ckpt_per_image is None:
        # the limit binds: measure the checkpointed step too, which a fit may then choose
        profile = profile_memory(tuner, sample, checkpointing=True)
        fit = fit_memory(profile, per_process, **asked)
    if not given and (asked_ckpt or (per_process is not None and (fit is None or fit.grad_checkpointing))):
        # the run checkpoints, or may have to: the line through small batches overstates it, measure closer
        profile = refine_checkpointed(tuner, sample, profile, batch, budget)
        fit = None if per_process is None else fit_memory(profile, per_process, **asked)
    can_ckpt = profile.ckpt_per_image is not None
    least = int(profile.peak(batch, 1, can_ckpt, 0) * processes / MARGIN)
    smaller = None
    if fit is None and per_process is not None:
        smaller = next((b for b in (2 ** k for k in range(int(batch).bit_length(), -1, -1))
                        if b < batch and profile.peak(b, 1, can_ckpt, 0) <= per_process), None)
    peak = fit.peak if fit is not None else profile.peak(batch, tuner.eval_batch_size, asked["checkpointing"], cache)
    host = resident() if device.type == "cuda" else peak
    return MemoryNeeds(store, int(host), int(peak) if device.type == "cuda" else 0, processes, ram_available,
                       device_available, float_copy, str(device), limit, fit, int(least), profile.measured, smaller)


def apply_fit(runtime: RuntimeConfig, fit: MemoryFit | None) -> RuntimeConfig:
    """The runtime with the settings a fitted limit chose (unchanged when nothing had to change)."""
    if fit is None or not fit.changes:
        return runtime
    return dataclasses.replace(runtime, eval_batch_size=fit.eval_batch, grad_checkpointing=fit.grad_checkpointing,
                               cache_memory=str(fit.cache_bytes))
