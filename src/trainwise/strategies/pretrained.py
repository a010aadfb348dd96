"""Where a fine-tune's weights come from (`strategy.pretrained`) and how they are loaded.

`auto`: the newest finished `full` run with the same foundation settings, trained first if there is none
(under a file lock, so parallel jobs train it once). A local file: a trainwise/Lightning `.ckpt` or a
`.pt`/`.pth` state dict. `runs:/<run_id>/<path>`: an artifact of a logged run.
"""

from __future__ import annotations

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
    """(backbone state dict, trainwise metadata) from a checkpoint or state-dict file."""
    import torch

    if not path.is_file():
        raise UserError(
            f"strategy.pretrained={str(path)!r}: no such file; give a .ckpt/.pt/.pth file, runs:/... or auto"
        )
    try:
        # weights_only: a checkpoint from elsewhere must not be able to run code when loaded.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any load failure means "not a usable checkpoint"
        raise UserError(
            f"strategy.pretrained={str(path)!r} is not a readable checkpoint: {err}".splitlines()[0]
        ) from None
    if not isinstance(payload, dict):
        raise UserError(f"strategy.pretrained={str(path)!r} does not hold a state dict")
    meta = payload.get("trainwise", {}) if isinstance(payload.get("trainwise"), dict) else {}
    state = payload.get("state_dict", payload)
    # A trainwise checkpoint stores the LightningModule's `net.backbone.*`; a saved Net stores `backbone.*`.
    for prefix in ("net.backbone.", "backbone."):
        picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked, meta
    return dict(state), meta


def load_into(net, foundation: Foundation) -> None:
    """Copy the foundation's backbone weights into `net.backbone`; a true architecture mismatch is an error."""
    state = dict(foundation.backbone_state)
    own = net.backbone.state_dict()
    for key, value in list(state.items()):
        # A grayscale foundation feeding colour input (or the reverse): adapt the first convolution the way
        # timm does for `in_chans`.
        if key in own and value.ndim == 4 and own[key].ndim == 4 and value.shape[1] != own[key].shape[1]:
            from timm.models import adapt_input_conv

            state[key] = adapt_input_conv(own[key].shape[1], value)
    try:
        net.backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise UserError(
            f"strategy.pretrained={foundation.source}: its weights do not fit model.name's architecture ({detail})"
        ) from None


def resolve(spec: str, store, find_or_train_foundation: Callable[[], str]) -> Foundation:
    """Turn `strategy.pretrained` into loaded weights. `find_or_train_foundation` returns a full run's id."""
    spec = str(spec)
    if spec == "auto":
        run_id = find_or_train_foundation()
        return _from_run_artifact(f"runs:/{run_id}/checkpoints/best.ckpt", store)
    if spec.startswith("runs:/"):
        return _from_run_artifact(spec, store)
    backbone, meta = load_weights_file(Path(spec).expanduser())
    return Foundation(backbone, source=spec, meta=meta)


def _from_run_artifact(uri: str, store) -> Foundation:
    from mlflow.artifacts import download_artifacts

    run_id = uri[len("runs:/") :].split("/", 1)[0]
    try:
        store.client.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise UserError(f"strategy.pretrained={uri}: there is no run {run_id!r} in {store.uri}") from None
    try:
        local = download_artifacts(artifact_uri=uri, tracking_uri=store.uri)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"strategy.pretrained={uri}: cannot download it ({str(err).splitlines()[0]})") from None
    backbone, meta = load_weights_file(Path(local))
    return Foundation(backbone, source=uri, run_id=run_id, meta=meta)
