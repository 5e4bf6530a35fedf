"""Export a saved model: ONNX (checked against onnxruntime), TorchScript, or the Hugging Face Hub.

ONNX needs the ``export`` extra (``pip install 'biotune[export]'``: onnx, onnxscript,
onnxruntime); the export is verified on a few inputs — same top-1 and probabilities within
``1e-3`` of PyTorch — before the file is kept.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import BioTuneError
from .artifact import load_model

__all__ = ["FORMATS", "ExportCheck", "export_model", "push_to_hub"]

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExportCheck:
    """How the exported model compares with PyTorch on ``images`` check inputs."""

    path: Path
    images: int
    same_top1: bool
    max_probability_difference: float


def _check_inputs(loaded, n: int = 8) -> torch.Tensor:
    rng = np.random.default_rng(0)  # random uint8 images through the real preprocessing
    side = loaded.read_size
    return loaded.preprocess(rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)).contiguous()


def _compare(path: Path, reference: torch.Tensor, exported: np.ndarray) -> ExportCheck:
    ref = reference.softmax(-1).numpy()
    got = torch.from_numpy(np.asarray(exported)).float().softmax(-1).numpy()
    return ExportCheck(path, len(ref), bool((ref.argmax(-1) == got.argmax(-1)).all()), float(np.abs(ref - got).max()))


def export_model(model_dir: str | Path, fmt: str, out: str | Path | None = None) -> ExportCheck:
    """Export a model folder (or a run directory's ``model/``) to ``fmt`` and verify it.

    Args:
        fmt: ``"onnx"`` or ``"torchscript"``.
        out: the file to write (default ``<model folder>/model.onnx`` or ``model.pt``); written
            only once the check passed.

    Raises:
        BioTuneError: unknown format, a missing optional dependency (naming the extra), an
            export that fails or does not match PyTorch.
    """
    if fmt not in FORMATS:
        raise BioTuneError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    loaded = load_model(model_dir)
    out = Path(out) if out is not None else loaded.folder / ("model.onnx" if fmt == "onnx" else "model.pt")
    if out.parent and not out.parent.is_dir():
        raise BioTuneError(f"--out {out}: folder {out.parent} does not exist")
    model = loaded.model.float().eval()
    x = _check_inputs(loaded)
    with torch.inference_mode():
        reference = model(x).float()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        check = (_onnx if fmt == "onnx" else _torchscript)(model, x, Path(tmp), reference, out)
        if not check.same_top1 or check.max_probability_difference > TOLERANCE:
            raise BioTuneError(f"the {fmt} export does not match PyTorch on {check.images} images (same top-1: "
                               f"{check.same_top1}, largest probability difference {check.max_probability_difference:.2e})")
        os.replace(tmp, out)
        return check
    finally:
        Path(tmp).unlink(missing_ok=True)


def _onnx(model, x, tmp: Path, reference, out: Path) -> ExportCheck:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as err:
        raise BioTuneError(f"ONNX export needs the export extra: pip install 'biotune[export]' ({err})") from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        torch.onnx.export(model, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), external_data=False, dynamo=True, verbose=False)
    except Exception as err:  # the exporter raises many types
        raise BioTuneError(f"ONNX export failed ({type(err).__name__}: {str(err).splitlines()[0][:300]})") from None
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    return _compare(out, reference, logits)


def _torchscript(model, x, tmp: Path, reference, out: Path) -> ExportCheck:
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the TorchScript path
            traced = torch.jit.trace(model, (x,), check_trace=False)
            traced.save(str(tmp))
            reloaded = torch.jit.load(str(tmp))
        with torch.inference_mode():
            logits = reloaded(x).float().numpy()
    except Exception as err:
        raise BioTuneError(f"TorchScript export failed ({type(err).__name__}: {str(err).splitlines()[0][:300]})") from None
    return _compare(out, reference, logits)


def push_to_hub(model_dir: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload a model folder to the Hugging Face Hub with ``timm.models.push_to_hf_hub``.

    Returns the URL of the commit. Needs the network and a token (``huggingface-cli login``
    or ``token``).

    Raises:
        BioTuneError: the upload failed (offline, no token, no permission).
    """
    import json

    from timm.models import push_to_hf_hub

    loaded = load_model(model_dir)
    config = json.loads((loaded.folder / "config.json").read_text())
    try:
        return str(push_to_hf_hub(
            loaded.model, repo_id, commit_message="Add BioTune fine-tuned model", token=token, private=private,
            model_config={"label_names": list(loaded.classes), "biotune": config.get("biotune", {})},
            data_config={k: config["pretrained_cfg"][k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")
                         if k in config["pretrained_cfg"]},
        ))
    except Exception as err:  # network, auth and hub errors are many types
        raise BioTuneError(f"--push-to-hub {repo_id}: upload failed ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:300] if str(err) else 'no detail'})") from None
