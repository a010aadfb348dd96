"""trainwise export: a run's best network as ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from helpers import run_job
from trainwise.errors import UserError
from trainwise.export import _load, export


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return run_job(tmp, uri, "strategy=scratch").run_id, uri, tmp


def test_onnx_export_gives_pytorchs_scores_at_any_batch_size(trained):
    import onnxruntime

    run_id, uri, tmp = trained
    path = export(run_id, uri, "onnx", tmp / "net.onnx")
    net, (channels, size), classes = _load(run_id, uri)
    images = torch.rand(7, channels, size, size)  # not the batch of 4 it was exported with
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = net(images).numpy()
    assert scores.shape == (7, len(classes)) == (7, 10)
    assert np.abs(scores - expected).max() < 1e-4


def test_torchscript_export_loads_without_trainwise_classes(trained):
    run_id, uri, tmp = trained
    path = export(run_id, uri, "torchscript", tmp / "net.pt")
    net, (channels, size), _ = _load(run_id, uri)
    images = torch.rand(3, channels, size, size)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(path))(images), net(images), atol=1e-5)


def test_without_the_export_extra_onnx_is_one_line_naming_it(trained, monkeypatch):
    run_id, uri, tmp = trained
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"--format onnx needs the export extra .*trainwise\[export\]"):
        export(run_id, uri, "onnx", tmp / "none.onnx")
    assert not (tmp / "none.onnx").exists()


def test_an_unknown_run_is_one_line(trained):
    _, uri, tmp = trained
    with pytest.raises(UserError, match="no run 'nope'"):
        export("nope", uri, "torchscript", tmp / "x.pt")
