"""A fine-tune from timm's pretrained weights (`strategy.pretrained=timm`) runs and reproduces offline: the
weights sit in a Hugging Face hub cache laid out as the hub writes it, so timm's real download path
(timm -> huggingface_hub, HF_HUB_OFFLINE=1) finds them without a network."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch

from helpers import cli_env, mlflow_client

MODEL = "test_resnet"  # timm's tiny test architecture (~0.2M parameters), with pretrained weights on the hub


def _hub_cache(root) -> dict[str, str]:
    """A hub cache holding `model.safetensors` for MODEL's default pretrained tag; the environment that uses it."""
    from safetensors.torch import save_file

    repo_id = timm.models.get_pretrained_cfg(MODEL).hf_hub_id  # timm/test_resnet.r160_in1k
    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40  # a commit hash, as the hub names snapshots
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    torch.manual_seed(0)
    state = timm.create_model(MODEL).state_dict()  # what the hub serves: a state dict of the full model
    save_file({k: v.contiguous() for k, v in state.items()}, str(repo / "snapshots" / revision / "model.safetensors"))
    env = cli_env("HF_TOKEN")
    env.update(HF_HOME=str(root / "hf"), HF_HUB_CACHE=str(root / "hub"), HF_HUB_OFFLINE="1",
               TORCH_HOME=str(root / "torch"))  # fmt: skip
    return env


def _cli(cwd, env, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "trainwise", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two CLI processes, each a timm fine-tune: ~40 s on 2 busy cores
def test_a_finetune_from_timm_weights_reproduces_offline(tmp_path, store_uri):
    env = _hub_cache(tmp_path)
    overrides = ["model=timm", f"model.name={MODEL}", "strategy=finetune", "strategy.pretrained=timm"]
    train = _cli(tmp_path, env, "train", "profile=smoke", f"tracking.uri={store_uri}", *overrides, "deterministic=true")
    assert train.returncode == 0, train.stderr[-3000:]
    client = mlflow_client(store_uri)
    (original,) = client.search_runs(["1"])
    assert original.info.status == "FINISHED"
    assert original.data.tags["trainwise.foundation_run"] == f"timm:{MODEL}"

    again = _cli(tmp_path, env, "reproduce", original.info.run_id, "--tracking-uri", store_uri)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Metrics match." in again.stdout
    (reproduced,) = client.search_runs(["1"], f"tags.`trainwise.reproduced_from` = '{original.info.run_id}'")
    assert reproduced.data.tags["trainwise.foundation_run"] == f"timm:{MODEL}"
    for key in ("test/acc", "test/loss", "val/acc_best"):  # deterministic on CPU: exactly the same
        assert reproduced.data.metrics[key] == original.data.metrics[key], key
