"""Where a fine-tune's weights come from (`strategy.pretrained`) and how they are loaded.

`auto`: the newest finished `full` run with the same foundation settings, trained first if there is none
(under a file lock, so parallel jobs train it once). A local file: a trainwise/Lightning `.ckpt` or a
`.pt`/`.pth` state dict. `runs:/<run_id>/<path>`: an artifact of a logged run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainwise.errors import UserError


@dataclass
class Foundation:
    """Pretrained backbone weights and what is known about them."""

    backbone_state: dict
    source: str  # what the user asked for, resolved (a path or a runs:/ URI)
    run_id: str | None = None  # the MLflow run the weights came from
    meta: dict = field(default_factory=dict)  # trainwise checkpoints: model config, input shape, classes

    @property
    def input_shape(self) -> tuple[int, int] | None:
        shape = self.meta.get("input_shape")
        return (int(shape[0]), int(shape[1])) if shape else None


def load_weights_file(path: Path) -> tuple[dict, dict]:
    """(backbone state dict, trainwise metadata) from a trainwise/Lightning `.ckpt`, a timm checkpoint, a
    `.pt`/`.pth` state dict or a `.safetensors` file."""
    import torch

    if not path.is_file():
        raise UserError(
            f"strategy.pretrained={str(path)!r}: no such file; give a .ckpt/.pt/.pth/.safetensors file, runs:/... "
            "models:/..., timm or auto"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload = load_file(str(path))
        else:
            # weights_only: a checkpoint from elsewhere must not be able to run code when loaded.
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any load failure means "not a usable checkpoint"
        raise UserError(
            f"strategy.pretrained={str(path)!r} is not a readable checkpoint: {err}".splitlines()[0]
        ) from None
    if not isinstance(payload, dict):
        raise UserError(f"strategy.pretrained={str(path)!r} does not hold a state dict")
    meta = payload.get("trainwise", {}) if isinstance(payload.get("trainwise"), dict) else {}
    # Lightning keeps weights under state_dict; timm's training script under state_dict(_ema) or model.
    state = next(
        (payload[k] for k in ("state_dict", "state_dict_ema", "model") if isinstance(payload.get(k), dict)), payload
    )
    state = {k.removeprefix("module."): v for k, v in state.items() if hasattr(v, "shape")}
    # A trainwise checkpoint stores the LightningModule's `net.backbone.*`; a saved Net stores `backbone.*`.
    for prefix in ("net.backbone.", "backbone."):
        picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked, meta
    return state, meta


def load_into(net, foundation: Foundation) -> list[str]:
    """Copy the foundation's backbone weights into `net.backbone`; return the keys skipped (an old classifier
    head). Missing or misshapen backbone weights are a true architecture mismatch: an error."""
    own = net.backbone.state_dict()
    state, skipped = {}, []
    for key, value in foundation.backbone_state.items():
        if key not in own:
            skipped.append(key)
            continue
        if value.ndim == 4 and own[key].ndim == 4 and value.shape[1] != own[key].shape[1]:
            value = _adapt_input_channels(value, own[key].shape[1])
        state[key] = value
    try:
        net.backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise UserError(
            f"strategy.pretrained={foundation.source}: its weights do not fit model.name's architecture ({detail})"
        ) from None
    return skipped


def _adapt_input_channels(weight, in_chans: int):
    """A first convolution trained on other input channels: timm's `adapt_input_conv` (colour -> grayscale and
    other counts); from a single channel, which timm does not convert, each new channel gets weight/in_chans, so
    a grayscale image repeated over the channels gives the same output as before."""
    if weight.shape[1] == 1:
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight)


def resolve(spec: str, store, find_or_train_foundation: Callable[[], str], model_name: str = "") -> Foundation:
    """Turn `strategy.pretrained` into loaded weights. `find_or_train_foundation` returns a full run's id."""
    spec = str(spec)
    if spec == "auto":
        run_id = find_or_train_foundation()
        return _from_run_artifact(f"runs:/{run_id}/checkpoints/best.ckpt", store)
    if spec == "timm":
        return _from_timm(model_name)
    if spec.startswith("runs:/"):
        return _from_run_artifact(spec, store)
    if spec.startswith("models:/"):
        return _from_registry(spec, store)
    backbone, meta = load_weights_file(Path(spec).expanduser())
    return Foundation(backbone, source=spec, meta=meta)


def _from_timm(model_name: str) -> Foundation:
    """timm's own pretrained weights for model.name (timm downloads them; needs a network the first time)."""
    import timm

    try:
        model = timm.create_model(model_name, pretrained=True, num_classes=0)
    except Exception as err:  # noqa: BLE001 - no network, no weights for this architecture, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"strategy.pretrained=timm: cannot get timm's pretrained weights for {model_name!r} ({first}); "
            "give a local weights file instead"
        ) from None
    return Foundation(model.state_dict(), source=f"timm:{model_name}")


def _from_registry(uri: str, store) -> Foundation:
    """models:/<name>@<alias>, models:/<name>/<version> or models:/<name>/latest from the MLflow Model Registry."""
    name, _, ref = uri[len("models:/") :].partition("@")
    try:
        if ref:
            version = store.client.get_model_version_by_alias(name, ref)
        else:
            name, _, number = name.partition("/")
            if number == "latest":
                number = max(int(v.version) for v in store.client.search_model_versions(f"name = '{name}'"))
            version = store.client.get_model_version(name, str(number))
    except Exception:  # noqa: BLE001
        raise UserError(f"strategy.pretrained={uri}: no such registered model version in {store.uri}") from None
    foundation = _from_run_artifact(f"runs:/{version.run_id}/checkpoints/best.ckpt", store)
    foundation.source = uri
    return foundation


def _from_run_artifact(uri: str, store) -> Foundation:
    from mlflow.artifacts import download_artifacts

    run_id = uri[len("runs:/") :].split("/", 1)[0]
    try:
        store.client.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise UserError(f"strategy.pretrained={uri}: there is no run {run_id!r} in {store.uri}") from None
    # Into a folder removed once the weights are in memory: each fine-tune of a sweep used to leave its own copy
    # behind (about 0.5 GB for vgg16).
    with tempfile.TemporaryDirectory(prefix="trainwise-foundation-") as folder:
        try:
            local = download_artifacts(artifact_uri=uri, dst_path=folder, tracking_uri=store.uri)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"strategy.pretrained={uri}: cannot download it ({str(err).splitlines()[0]})") from None
        backbone, meta = load_weights_file(Path(local))
    return Foundation(backbone, source=uri, run_id=run_id, meta=meta)
