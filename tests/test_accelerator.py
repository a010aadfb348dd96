"""The accelerator group's speed switches: channels_last and torch.compile change how the network runs, never
what it computes or what its checkpoints hold."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_config, run_job
from trainwise.config import validate
from trainwise.errors import UserError


def _checkpoint_keys(result_dir) -> set[str]:
    checkpoint = torch.load(result_dir / "job" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    return set(checkpoint["state_dict"])


def test_channels_last_trains_and_checkpoints_keep_their_keys(tmp_path, store_uri):
    plain = run_job(tmp_path / "plain", store_uri, "accelerator=cpu", "accelerator.channels_last=false")
    nhwc = run_job(tmp_path / "nhwc", store_uri, "accelerator=cpu", "accelerator.channels_last=true")
    assert _checkpoint_keys(tmp_path / "nhwc") == _checkpoint_keys(tmp_path / "plain")
    # Same seed, same data order, same maths in another memory layout.
    assert nhwc.metrics["test/acc"] == pytest.approx(plain.metrics["test/acc"], abs=0.02)


@pytest.mark.slow
def test_compiled_network_trains_and_checkpoints_keep_their_keys(tmp_path, store_uri):
    run_job(tmp_path / "plain", store_uri, "accelerator=cpu")
    compiled = run_job(tmp_path / "compiled", store_uri, "accelerator=cpu", "accelerator.compile=true")
    assert compiled.metrics["test/acc"] > 0
    assert _checkpoint_keys(tmp_path / "compiled") == _checkpoint_keys(tmp_path / "plain")  # no _orig_mod. prefix


@pytest.mark.parametrize(
    "override, says",
    [("accelerator.channels_last=sometimes", "channels_last"), ("accelerator.compile=fast", "accelerator.compile")],
)
def test_bad_speed_switches_are_named(override, says):
    with pytest.raises(UserError, match=says):
        validate(compose_config(override))
