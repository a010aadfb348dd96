"""`trainwise export RUN_ID`: a run's tested network (its best.ckpt) as an ONNX or TorchScript file.

The network is rebuilt from what the checkpoint records (model config, input shape, classes), exported with
PyTorch's own exporters, and checked: the exported file is run on a batch of the run's input shape (ONNX through
onnxruntime) and must give PyTorch's scores within TOLERANCE.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from trainwise.errors import UserError

TOLERANCE = 1e-4
FORMATS = ("onnx", "torchscript")
EXTRA = "pip install 'trainwise[export]' (make install does)"


def export(run_id: str, uri: str, fmt: str = "onnx", out: Path | None = None) -> Path:
    """Write the run's best network to `out` (default ./<run_id>.onnx or .pt) and check it. Returns the path."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose {' or '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
        except ImportError as err:
            raise UserError(f"--format onnx needs the export extra ({err.name} is missing): {EXTRA}") from None
    net, input_shape, classes = _load(run_id, uri)
    out = Path(out) if out else Path(f"{run_id}.{'onnx' if fmt == 'onnx' else 'pt'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    difference = _onnx(net, input_shape, out) if fmt == "onnx" else _torchscript(net, input_shape, out)
    if difference > TOLERANCE:
        raise UserError(f"the exported {fmt} model differs from PyTorch by {difference:.2e} (> {TOLERANCE}); {out}")
    channels, size = input_shape
    print(
        f"Exported run {run_id} to {out} ({fmt}; input N x {channels} x {size} x {size} floats in [0, 1], output "
        f"N x {len(classes)} class scores). Checked against PyTorch on a batch of 4: max difference {difference:.1e}.",
        flush=True,
    )
    return out


def _load(run_id: str, uri: str):
    """The run's network with its best.ckpt weights, in eval mode, and its input shape and class names."""
    import torch
    from mlflow.artifacts import download_artifacts
    from omegaconf import OmegaConf

    from trainwise.models import build_model
    from trainwise.models.preprocess import Preprocess
    from trainwise.tracking import open_store

    store = open_store(uri)
    try:
        store.client.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise UserError(f"no run {run_id!r} in {store.uri}") from None
    with tempfile.TemporaryDirectory(prefix="trainwise-export-") as folder:
        try:
            path = download_artifacts(f"runs:/{run_id}/checkpoints/best.ckpt", dst_path=folder, tracking_uri=store.uri)
        except Exception:  # noqa: BLE001
            raise UserError(f"run {run_id} has no checkpoints/best.ckpt to export (did it finish training?)") from None
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    meta = checkpoint.get("trainwise") or {}
    if "model" not in meta or "input_shape" not in meta:
        raise UserError(f"run {run_id}'s best.ckpt does not say which network it holds (a checkpoint from elsewhere)")
    channels, size = (int(v) for v in meta["input_shape"])
    classes = list(meta.get("class_names") or [])
    preprocess = Preprocess.from_meta(meta.get("preprocess") or {})  # the normalization is part of the model
    net = build_model(OmegaConf.create(meta["model"]), len(classes), channels, size, preprocess)
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    return net.eval(), (channels, size), classes


def _batch(input_shape: tuple[int, int]):
    import torch

    channels, size = input_shape
    return torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(0))


def _onnx(net, input_shape: tuple[int, int], out: Path) -> float:
    import numpy as np
    import onnxruntime
    import torch

    batch = _batch(input_shape)
    with torch.no_grad():
        expected = net(batch).numpy()
        program = torch.onnx.export(
            net, (batch,), dynamo=True, input_names=["images"], output_names=["scores"], verbose=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},  # any batch size
        )  # fmt: skip
    program.save(str(out))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": batch.numpy()})
    return float(np.abs(got - expected).max())


def _torchscript(net, input_shape: tuple[int, int], out: Path) -> float:
    import torch

    batch = _batch(input_shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is in maintenance; still what C++ loads
        warnings.simplefilter("ignore", FutureWarning)
        expected = net(batch)
        torch.jit.save(torch.jit.trace(net, batch), str(out))
        got = torch.jit.load(str(out))(batch)
    return float((got - expected).abs().max())
