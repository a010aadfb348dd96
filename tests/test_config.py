"""Composition: every option of every group composes; bad overrides end in one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import compose_config
from trainwise.config import config_hash, flatten, validate
from trainwise.paths import conf_dir, experiments_dir

GROUPS = sorted(p.name for p in conf_dir().iterdir() if p.is_dir())


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in GROUPS for o in _options(g)] + [("experiment", p.stem) for p in experiments_dir().glob("*.yaml")],
)
def test_every_option_of_every_group_composes(group, option):
    cfg = compose_config(f"{group}={option}")
    validate(cfg)
    if group in ("model", "dataset", "source", "strategy", "accelerator", "scheduler"):
        assert cfg[group].name  # every option says what it is


def test_groups_named_in_the_design_exist():
    for group in (
        "model",
        "dataset",
        "source",
        "strategy",
        "accelerator",
        "optimizer",
        "scheduler",
        "tracking",
        "profile",
    ):
        assert group in GROUPS
    assert {"mlp", "small_cnn", "timm", "resnet18"} <= set(_options("model"))
    assert {"scratch", "full", "finetune"} <= set(_options("strategy"))
    assert set(_options("source")) == set(_options("dataset"))  # the two slots take the same options


def test_defaults_match_the_design():
    cfg = compose_config()
    assert (cfg.strategy.name, cfg.model.name, cfg.dataset.name, cfg.source.name) == (
        "scratch",
        "small_cnn",
        "digits",
        "glyphs",
    )
    assert cfg.seed == 0 and cfg.tracking.uri == "sqlite:///mlflow.db"


def test_params_are_flattened_with_dotted_keys():
    flat = flatten({"optimizer": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": 0})
    assert flat == {"optimizer.lr": 0.1, "optimizer.betas": [0.9, 0.99], "seed": 0}


def test_config_hash_ignores_data_loading_knobs_only():
    base = {"dataset": {"name": "digits", "num_workers": 0}, "seed": 0}
    assert config_hash(base) == config_hash({"dataset": {"name": "digits", "num_workers": 4}, "seed": 0})
    assert config_hash(base) != config_hash({"dataset": {"name": "digits", "num_workers": 0}, "seed": 1})


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainwise", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "model=smal_cnn"], "Did you mean small_cnn"),
        (["train", "-m", "strategy=scratch,fulll"], "Did you mean full"),
        (["train", "dataset.train_fraction=1.5"], "dataset.train_fraction"),
        (["train", "dataset.batch_size=0"], "dataset.batch_size"),
        (["train", "trainer.max_epochs=-1"], "trainer.max_epochs"),
        (["train", "optimizer.lr=fast"], "optimizer.lr"),
        (["train", "strategy=finetune", "strategy.freeze=head"], "strategy.freeze"),
        (["bogus"], "unknown command"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, expected):
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing was recorded


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom trainwise.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
        "print('torch' in sys.modules, 'mlflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "False False"


def test_cfg_job_and_the_config_check_do_not_import_torch():
    code = (
        "import sys\nfrom trainwise.overrides import check_overrides\n"
        "check_overrides(['strategy=finetune', 'strategy.freeze=stages:1'])\n"
        "print('torch' in sys.modules, 'pytorch_lightning' in sys.modules, 'mlflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "False False False", result.stderr[-2000:]


def test_report_reads_the_store_without_importing_torch(tmp_path):
    code = (
        "import sys\nfrom trainwise.cli import main\n"
        f"try: main(['report', '--tracking-uri', 'sqlite:///{tmp_path}/m.db'])\nexcept SystemExit: pass\n"
        "print('torch' in sys.modules, 'pytorch_lightning' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "False False", result.stderr[-2000:]
    assert "no sweep in" in result.stderr  # an empty store: one clear line


def test_everything_under_a_key_naming_a_secret_is_masked():
    from trainwise.config import MASK, mask_secrets

    tree = {
        "api_key": {"value": "abc", "nested": {"deeper": ["d1", {"x": 3}]}, "empty": None},
        "credentials_password": ["x", "y"],
        "extra": {"db": "postgresql://bob:pw@db/x", "lr": 0.1, "name": "digits"},
    }
    assert mask_secrets(tree) == {
        # The structure stays (a logged config is merged over today's defaults), every value goes.
        "api_key": {"value": MASK, "nested": {"deeper": [MASK, {"x": MASK}]}, "empty": None},
        "credentials_password": [MASK, MASK],
        "extra": {"db": f"postgresql://bob:{MASK}@db/x", "lr": 0.1, "name": "digits"},
    }


def test_mask_text_masks_secrets_inside_free_text_such_as_a_traceback(monkeypatch, tmp_path):
    from trainwise.config import mask_text

    monkeypatch.setenv("SSH_KEY_DIR", str(tmp_path))  # a path, not a secret: paths under it stay readable
    assert mask_text(f"dataset.root={tmp_path}/images") == f"dataset.root={tmp_path}/images"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cr3t-from-env")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-123456")
    monkeypatch.setenv("TRAINWISE_UNRELATED", "digits")
    text = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 3, in <module>\n'
        "    connect(api_key='abc-def', timeout=3)\n"
        "requests.exceptions.HTTPError: 401 for https://alice:p4ss@mlflow.example/api (token: tk_987; user=bob)\n"
        "RuntimeError: login failed with s3cr3t-from-env, AWS_SECRET_ACCESS_KEY=AKIAXYZ and {'password': \"p w\"}\n"
        "Authorization: Bearer eyJhbGciOi.payload.sig\n"
        "KeyError: 'digits' (uses tok-123456)\n"
    )
    masked = mask_text(text)
    for secret in ("abc-def", "p4ss", "tk_987", "s3cr3t-from-env", "AKIAXYZ", '"p w"', "eyJhbGciOi", "tok-123456"):
        assert secret not in masked, secret
    # What is not a secret stays readable: exception names, the user, other values.
    for kept in ("timeout=3", "https://alice:***@mlflow.example/api", "user=bob", "KeyError: 'digits'", "line 3"):
        assert kept in masked, kept
    assert mask_text("optimizer.lr=0.1") == "optimizer.lr=0.1"
    assert mask_text("+extra.db_password=hunter2") == "+extra.db_password=***"


def _cli_env(cwd, env_uri: str, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "MLFLOW_TRACKING_URI": env_uri}
    command = [sys.executable, "-m", "trainwise", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.slow  # a whole training run in a new process: ~20-30 s on 2 busy cores
def test_tracking_uri_typed_on_the_command_line_wins_over_the_environment(tmp_path):
    from mlflow import MlflowClient

    env_uri, cli_uri = f"sqlite:///{tmp_path / 'env.db'}", f"sqlite:///{tmp_path / 'cli.db'}"
    result = _cli_env(tmp_path, env_uri, "train", f"tracking.uri={cli_uri}", "profile=smoke")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "env.db").exists()
    client = MlflowClient(tracking_uri=cli_uri)
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1


def test_an_unreachable_server_typed_on_the_command_line_is_not_replaced_by_the_environment(tmp_path):
    env_uri = f"sqlite:///{tmp_path / 'env.db'}"
    down = _cli_env(tmp_path, env_uri, "train", "tracking.uri=http://127.0.0.1:9/", "profile=smoke")
    assert down.returncode == 2
    (line,) = down.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach the MLflow tracking store http://127.0.0.1:9/")
    assert not (tmp_path / "env.db").exists()


@pytest.mark.slow  # ~19 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_tracking_uri_option_wins_over_the_environment_and_the_environment_over_the_default(tmp_path):
    env_uri, cli_uri = f"sqlite:///{tmp_path / 'env.db'}", f"sqlite:///{tmp_path / 'cli.db'}"
    typed = _cli_env(tmp_path, env_uri, "report", "--tracking-uri", cli_uri)
    assert typed.returncode == 2 and f"no sweep in {cli_uri}" in typed.stderr, typed.stderr[-2000:]
    from_env = _cli_env(tmp_path, env_uri, "report")
    assert from_env.returncode == 2 and f"no sweep in {env_uri}" in from_env.stderr, from_env.stderr[-2000:]
