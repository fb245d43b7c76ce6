from __future__ import annotations

from pathlib import Path

import pytest

from dpd.config import Config, RateLimit, load_config
from dpd.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dpd.toml"
    path.write_text(text)
    return path


def test_embedded_default_needs_no_file(dpd_env: Path) -> None:
    config = load_config(environ={"XDG_STATE_HOME": str(dpd_env)})
    assert config.source == "embedded default"
    assert config.http.host == "127.0.0.1" and config.http.port == 5000
    assert config.nats.url == ""
    assert config.daemon.spool_dir == dpd_env / "dpd" / "spool"
    assert config.daemon.data_roots == [dpd_env / "dpd" / "data"]
    assert config.ratelimit.training == RateLimit(10, 3600)
    assert config.trainer.master_port_range == [29500, 29999]


def test_file_values_override_defaults(tmp_path: Path, dpd_env: Path) -> None:
    path = write(
        tmp_path,
        """
[daemon]
node = "gpu-box-1"
spool_dir = "/var/spool/dpd"
data_roots = ["/data", "/mnt/disk0"]
[http]
port = 5001
[ratelimit]
training = "3/minute"
gpu = "0"
[nats]
url = "nats://127.0.0.1:4222"
jetstream = true
[[gpus.static]]
name = "Simulated RTX 4090"
memory_mb = 24576
[[gpus.static]]
name = "Simulated A100"
memory_mb = 81920
[trainer]
env = { NCCL_P2P_DISABLE = "1" }
stop_timeout = 5
""",
    )
    config = load_config(path, environ={})
    assert config.source == str(path)
    assert config.daemon.node == "gpu-box-1"
    assert config.daemon.data_roots == [Path("/data"), Path("/mnt/disk0")]
    assert config.http.port == 5001
    assert config.ratelimit.training == RateLimit(3, 60)
    assert config.ratelimit.gpu.unlimited
    assert config.nats.jetstream is True
    assert [g.memory_mb for g in config.gpus.static] == [24576, 81920]
    assert config.trainer.env == {"NCCL_P2P_DISABLE": "1"}
    assert config.trainer.stop_timeout == 5.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[bogus]\nx = 1\n", "unknown table [bogus]"),
        ("[http]\nprot = 1\n", "[http] unknown key 'prot'"),
        ('[http]\nport = "abc"\n', "[http] port: expected an integer"),
        ("[http]\nport = 70000\n", "[http] port: expected an integer from 0 to 65535"),
        ('[daemon]\nlog_level = "LOUD"\n', "[daemon] log_level: expected one of"),
        ('[daemon]\nspool_dir = "relative/dir"\n', "[daemon] spool_dir: expected an absolute"),
        ('[ratelimit]\nlogs = "lots"\n', "[ratelimit] logs: expected"),
        ('[gpus]\nbackend = "cuda"\n', "[gpus] backend: expected nvml, static or auto"),
        ("[trainer]\nmaster_port_range = [30000, 29000]\n", "[trainer] master_port_range"),
        ("[auth]\nenabled = 1\n", "[auth] enabled: expected true or false"),
        ('[nats]\nurl = "http://x"\n', "[nats] url: expected empty or a nats:// URL"),
        ("[[gpus.static]]\nname = 'x'\nmemory = 1\n", "unknown key(s) memory"),
        ("[http\n", "not valid TOML"),
        ("[http]\nport = 29600\n", "lies inside [trainer] master_port_range"),
    ],
)
def test_bad_configuration_stops_with_one_clear_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_api_document_environment_variables(dpd_env: Path) -> None:
    config = load_config(
        environ={
            "API_HOST": "0.0.0.0",
            "API_PORT": "5050",
            "API_SECRET_KEY": "sk_boot",
            "API_KEY_EXPIRE_DAYS": "30",
            "STORAGE_ROOT": "/data",
            "MODELS_ROOT": "/data/models",
            "TRAINING_OUTPUT_ROOT": "/data/training_runs",
            "PREPROCESSED_DATA_ROOT": "/data/preprocessed",
            "LOG_LEVEL": "DEBUG",
            "GPU_MONITOR_INTERVAL": "2.5",
        }
    )
    assert config.http.host == "0.0.0.0" and config.http.port == 5050
    assert config.auth.bootstrap_key == "sk_boot" and config.auth.key_expire_days == 30
    assert config.daemon.storage_root == Path("/data")
    assert config.daemon.models_root == Path("/data/models")
    assert config.daemon.output_root == Path("/data/training_runs")
    assert config.daemon.preprocessed_root == Path("/data/preprocessed")
    assert config.daemon.log_level == "DEBUG"
    assert config.gpus.monitor_interval == 2.5


def test_dpd_table_key_variables_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 5001\n[nats]\njetstream = false\n")
    config = load_config(
        path,
        environ={
            "DPD_HTTP_PORT": "5002",
            "DPD_NATS_JETSTREAM": "true",
            "DPD_NATS_URL": "nats://127.0.0.1:4333",
            "DPD_DAEMON_DATA_ROOTS": '["/a", "/b"]',
            "DPD_TRAINER_MASTER_PORT_RANGE": "[31000, 31010]",
            "DPD_URL": "http://127.0.0.1:5002",  # a CLI variable, not a key
        },
    )
    assert config.http.port == 5002
    assert config.nats.jetstream is True
    assert config.nats.url == "nats://127.0.0.1:4333"
    assert config.daemon.data_roots == [Path("/a"), Path("/b")]
    assert config.trainer.master_port_range == [31000, 31010]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"DPD_HTTP_PROT": "1"}, "DPD_HTTP_PROT: [http] has no key 'prot'"),
        ({"API_PORT": "five"}, "(from $API_PORT): expected an integer"),
        ({"DPD_NATS_JETSTREAM": "maybe"}, "expected true or false"),
    ],
)
def test_bad_environment_names_the_variable(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ)
    assert expected in str(caught.value)


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.http.port = 1  # type: ignore[misc]
