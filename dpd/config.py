"""dpd.toml: tables, keys, defaults and environment overrides (DESIGN §2).

Precedence, lowest first: the embedded default (works with no file at all, suits a laptop),
the TOML file, the API document's environment variables (``API_PORT``...), then
``DPD_<TABLE>_<KEY>``. Anything wrong — an unknown table or key, a wrong type, a bad value —
raises ``ConfigError`` with one line that names the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpd.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/dpd/dpd.toml")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
RATE_RE = re.compile(r"^(?P<count>\d+)\s*/\s*(?P<unit>second|minute|hour|day)$")
RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _state_home() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    return Path(xdg) if xdg else Path.home() / ".local" / "state"


@dataclass(frozen=True)
class RateLimit:
    """``count`` requests per ``window`` seconds; ``count == 0`` means unlimited."""

    count: int
    window: int

    @property
    def unlimited(self) -> bool:
        return self.count == 0

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        text = text.strip()
        if text == "0":
            return cls(0, 0)
        match = RATE_RE.match(text)
        if not match or int(match["count"]) == 0:
            raise ValueError('expected "0" or "<N>/second|minute|hour|day", e.g. "10/hour"')
        return cls(int(match["count"]), RATE_UNITS[match["unit"]])


@dataclass(frozen=True)
class StaticGpu:
    name: str = "Simulated GPU"
    memory_mb: int = 24576


@dataclass(frozen=True)
class DaemonConfig:
    node: str = field(default_factory=socket.gethostname)
    spool_dir: Path = field(default_factory=lambda: _state_home() / "dpd" / "spool")
    state_dir: Path = field(default_factory=lambda: _state_home() / "dpd" / "state")
    storage_root: Path = field(default_factory=lambda: _state_home() / "dpd" / "data")
    output_root: Path = field(
        default_factory=lambda: _state_home() / "dpd" / "data" / "training_runs"
    )
    models_root: Path = field(default_factory=lambda: _state_home() / "dpd" / "data" / "models")
    preprocessed_root: Path = field(
        default_factory=lambda: _state_home() / "dpd" / "data" / "preprocessed"
    )
    data_roots: list[Path] = field(default_factory=lambda: [_state_home() / "dpd" / "data"])
    log_level: str = "INFO"
    log_file: str = ""
    stop_jobs_on_shutdown: bool = False


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 5000
    max_upload_mb: int = 4096
    max_body_kb: int = 1024
    session_hours: float = 12.0  # lifetime of a dashboard login (issue 16)


@dataclass(frozen=True)
class AuthConfig:
    enabled: bool = True
    bootstrap_key: str = ""
    key_expire_days: int = 0


@dataclass(frozen=True)
class RateLimitConfig:
    auth: RateLimit = RateLimit(60, 60)
    training: RateLimit = RateLimit(10, 3600)
    preprocess: RateLimit = RateLimit(20, 3600)
    logs: RateLimit = RateLimit(100, 60)
    gpu: RateLimit = RateLimit(0, 0)


@dataclass(frozen=True)
class NatsConfig:
    url: str = ""
    subject_prefix: str = "dpd"
    jetstream: bool = False
    user: str = ""
    password: str = ""
    token: str = ""
    creds_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    stream_max_age: int = 604800  # seconds an event stays in stream DPD; 0 = forever
    stream_max_bytes: int = 0  # 0 = unlimited


@dataclass(frozen=True)
class GpusConfig:
    backend: str = "auto"
    monitor_interval: float = 5.0
    static: list[StaticGpu] = field(default_factory=list)


@dataclass(frozen=True)
class TrainerConfig:
    diffusion_pipe_dir: Path = Path("/opt/diffusion-pipe")
    deepspeed: str = "deepspeed"
    env: dict[str, str] = field(
        default_factory=lambda: {"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"}
    )
    master_port_range: list[int] = field(default_factory=lambda: [29500, 29999])
    stop_timeout: float = 60.0
    # fleet requeue mode: the launcher's SIGTERM -> SIGKILL wait and its kill wait (§9.4)
    term_timeout: float = 35.0
    kill_timeout: float = 10.0
    inactivity_timeout: float = 1800.0
    # in training: hung when no new step for max(inactivity_timeout, factor x slowest step)
    step_timeout_factor: float = 10.0


@dataclass(frozen=True)
class PreprocessConfig:
    max_concurrent: int = 0  # 0 = half the CPU cores, at least 1
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"


@dataclass(frozen=True)
class ModelsConfig:
    catalog: str = ""  # an operator's catalog file replacing the shipped one
    hf_endpoint: str = ""  # a mirror of the hub
    hf_token: str = ""  # for gated repositories; never shown


# --- fleet mode (FLEET.md §11): several hosts share one queue on NATS JetStream -------------
FLEET_NODE_LOSS = ("hold", "requeue")


@dataclass(frozen=True)
class FleetConfig:
    """Off by default: a single host behaves exactly as without this table."""

    enabled: bool = False
    filesystem_domain: str = ""  # "" = this node only (private)
    labels: dict[str, str] = field(default_factory=dict)
    public_url: str = ""
    node_ttl: float = 15.0  # what `dpd fleet init` creates dpd_alive with; the bucket's counts
    heartbeat_interval: float = 3.0
    node_loss: str = "hold"
    fence_after: float = 300.0
    fence_check: float = 1.0
    lost_after: float = 600.0
    requeue_on_reboot: bool = True
    max_attempts: int = 3
    fence_margin: float = 60.0
    claim_stagger: float = 0.05
    rpc_timeout: float = 2.0
    monitor_url: str = ""  # NATS monitoring URL(s), comma-separated: /varz shows sync_always
    require_sync_always: bool = False  # refuse to start unless every /varz says sync_always
    replicas: int = 3
    keep_terminal_days: int = 30
    publish_artifacts: bool = False
    artifact_max_mb: int = 2048


def _fleet_value_problem(key: str, value: Any) -> str | None:
    positive = ("node_ttl", "heartbeat_interval", "fence_after", "fence_check", "rpc_timeout")
    not_negative = ("lost_after", "max_attempts", "fence_margin", "claim_stagger")
    if key in positive and value <= 0:
        return "expected a positive number"
    if key in not_negative and value < 0:
        return "expected 0 or more"
    if key == "node_loss" and value not in FLEET_NODE_LOSS:
        return f"expected one of {FLEET_NODE_LOSS}"
    if key == "replicas" and value not in (1, 3, 5):
        return "expected 1, 3 or 5"
    if key in ("keep_terminal_days", "artifact_max_mb") and value <= 0:
        return "expected a positive integer"
    if key == "public_url" and value and not re.match(r"^https?://", value):
        return "expected empty or an http(s):// URL"
    if (
        key == "monitor_url"
        and value
        and not all(re.match(r"^https?://", u.strip()) for u in value.split(","))
    ):
        return "expected empty or comma-separated http(s):// URLs"
    return None


def fence_deadline(config: Config) -> float:
    """The longest a trainer outlives its node's last lease renewal in requeue mode:
    ``fence_after + fence_check + stop_timeout + kill_grace`` (FLEET.md §9.4), where
    kill_grace is the launcher's SIGTERM->SIGKILL wait plus its kill wait."""
    trainer = config.trainer
    kill_grace = trainer.term_timeout + trainer.kill_timeout
    return config.fleet.fence_after + config.fleet.fence_check + trainer.stop_timeout + kill_grace


def _check_fleet(config: Config) -> None:
    """What fleet mode needs from the rest of the configuration (FLEET.md §9.4, §11)."""
    fleet = config.fleet
    if not fleet.enabled:
        return
    if not config.nats.url or not config.nats.jetstream:
        raise ConfigError("[fleet] enabled needs [nats] url and jetstream = true")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", config.daemon.node):
        raise ConfigError(
            f"[fleet] enabled needs [daemon] node to match ^[A-Za-z0-9][A-Za-z0-9_-]{{0,62}}$, "
            f"got {config.daemon.node!r}"
        )
    if fleet.heartbeat_interval > fleet.node_ttl / 4:
        raise ConfigError(
            f"[fleet] heartbeat_interval {fleet.heartbeat_interval} must be at most "
            f"node_ttl / 4 = {fleet.node_ttl / 4}"
        )
    if fleet.require_sync_always and not fleet.monitor_url:
        raise ConfigError("[fleet] require_sync_always needs monitor_url to read /varz")
    if fleet.node_loss == "requeue":
        fenced = fence_deadline(config) + fleet.fence_margin
        if fenced >= fleet.node_ttl + fleet.lost_after:
            raise ConfigError(
                f"[fleet] node_loss = requeue needs fence_after + fence_check + "
                f"trainer.stop_timeout + trainer.term_timeout + trainer.kill_timeout + "
                f"fence_margin ({fenced:g}) < node_ttl + lost_after "
                f"({fleet.node_ttl + fleet.lost_after:g})"
            )


# --- end of fleet mode ------------------------------------------------------------------


@dataclass(frozen=True)
class AlertsConfig:
    """Training alerts (issue 16): NaN/Inf loss, loss explosion, stalled run."""

    webhook_url: str = ""  # POST every alert event here as JSON; empty: no webhook
    stall_seconds: float = 600.0  # no step for this long (after the first) -> "stalled"
    loss_explosion_factor: float = 10.0  # a loss above this times the recent median
    loss_window: int = 50  # finite step losses the median is taken over


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    gpus: GpusConfig = field(default_factory=GpusConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    source: str = "embedded default"


# The API document's environment variables, honoured by name (DESIGN §2).
LEGACY_ENV: Mapping[str, tuple[str, str]] = {
    "API_HOST": ("http", "host"),
    "API_PORT": ("http", "port"),
    "API_SECRET_KEY": ("auth", "bootstrap_key"),
    "API_KEY_EXPIRE_DAYS": ("auth", "key_expire_days"),
    "STORAGE_ROOT": ("daemon", "storage_root"),
    "MODELS_ROOT": ("daemon", "models_root"),
    "TRAINING_OUTPUT_ROOT": ("daemon", "output_root"),
    "PREPROCESSED_DATA_ROOT": ("daemon", "preprocessed_root"),
    "LOG_LEVEL": ("daemon", "log_level"),
    "LOG_FILE": ("daemon", "log_file"),
    "GPU_MONITOR_INTERVAL": ("gpus", "monitor_interval"),
}
# DPD_* variables that are not config keys (the CLI's and the config path).
NON_KEY_ENV = frozenset({"DPD_CONFIG", "DPD_URL", "DPD_API_KEY"})

_TABLES: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name != "source"
}


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Build the configuration; ``path=None`` means ``DPD_CONFIG`` or /etc/dpd/dpd.toml if
    it exists, else the embedded default. A path given explicitly must exist."""
    environ = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    source = "embedded default"
    config_path = _choose_path(path, environ)
    if config_path is not None:
        raw = _read_toml(config_path)
        source = str(config_path)
    for table, key, value in _environment_overrides(environ):
        raw.setdefault(table, {})[key] = value
    config = _build(raw, source)
    _check_consistency(config)
    return config


def _choose_path(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    if path is not None:
        return Path(path)
    if environ.get("DPD_CONFIG"):
        return Path(environ["DPD_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such configuration file") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    for table, value in data.items():
        if table not in _TABLES:
            raise ConfigError(f"{path}: unknown table [{table}]; known: {', '.join(_TABLES)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: [{table}] must be a table")
    return data


def _environment_overrides(environ: Mapping[str, str]) -> list[tuple[str, str, Any]]:
    overrides: list[tuple[str, str, Any]] = []
    for name, (table, key) in LEGACY_ENV.items():
        if name in environ:
            overrides.append((table, key, _EnvText(name, environ[name])))
    for name, text in environ.items():
        if not name.startswith("DPD_") or name in NON_KEY_ENV:
            continue
        found, key = _split_env_name(name)
        if found is None:
            continue
        overrides.append((found, key, _EnvText(name, text)))
    return overrides


def _split_env_name(name: str) -> tuple[str | None, str]:
    rest = name[len("DPD_") :].lower()
    for table in _TABLES:
        if rest.startswith(table + "_"):
            key = rest[len(table) + 1 :]
            known = {f.name for f in dataclasses.fields(_TABLES[table])}
            if key not in known:
                raise ConfigError(f"environment {name}: [{table}] has no key {key!r}")
            return table, key
    return None, ""


@dataclass(frozen=True)
class _EnvText:
    """A value from the environment: text, parsed according to the key's type."""

    variable: str
    text: str


def _build(raw: dict[str, dict[str, Any]], source: str) -> Config:
    tables: dict[str, Any] = {}
    for table, cls in _TABLES.items():
        tables[table] = _build_table(table, cls, raw.get(table, {}))
    return Config(**tables, source=source)


def _build_table(table: str, cls: type[Any], values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"[{table}] unknown key {key!r}; known: {', '.join(sorted(known))}")
        where = f"[{table}] {key}"
        if isinstance(value, _EnvText):
            where = f"{where} (from ${value.variable})"
            value = _parse_env_text(value.text, hints[key])
        try:
            kwargs[key] = _coerce(value, hints[key])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {err}, got {value!r}") from None
        _check_value(table, key, kwargs[key], where)
    return cls(**kwargs)


def _parse_env_text(text: str, hint: Any) -> Any:
    if hint in (str, Path):
        return text
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return text
    if hint is RateLimit:
        return text
    origin = typing.get_origin(hint)
    if origin is list and typing.get_args(hint)[0] is Path and not text.lstrip().startswith("["):
        return [p for p in text.split(os.pathsep if ":" in text else ",") if p]
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise TypeError("expected a path string")
        path = Path(value).expanduser()
        if not path.is_absolute():
            raise ValueError("expected an absolute path")
        return path
    if hint is RateLimit:
        if isinstance(value, int) and not isinstance(value, bool) and value == 0:
            return RateLimit(0, 0)
        if not isinstance(value, str):
            raise TypeError('expected a rate like "10/hour" or "0"')
        return RateLimit.parse(value)
    if hint is StaticGpu:
        return _coerce_static_gpu(value)
    if origin is list:
        if not isinstance(value, list):
            raise TypeError("expected an array")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError("expected a table")
        return {str(k): _coerce(v, str) for k, v in value.items()}
    raise TypeError(f"unsupported type {hint}")


def _coerce_static_gpu(value: Any) -> StaticGpu:
    if not isinstance(value, dict):
        raise TypeError("expected a table with name and memory_mb")
    unknown = set(value) - {"name", "memory_mb"}
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))} in [[gpus.static]]")
    name = _coerce(value.get("name", "Simulated GPU"), str)
    memory = _coerce(value.get("memory_mb", 24576), int)
    if memory <= 0:
        raise ValueError("memory_mb must be positive")
    return StaticGpu(name=name, memory_mb=memory)


def _check_value(table: str, key: str, value: Any, where: str) -> None:
    problem = _value_problem(table, key, value)
    if problem:
        raise ConfigError(f"{where}: {problem}, got {value!r}")


def _value_problem(table: str, key: str, value: Any) -> str | None:
    checks: dict[tuple[str, str], tuple[Any, str]] = {
        ("daemon", "log_level"): (lambda v: v.upper() in LOG_LEVELS, f"one of {LOG_LEVELS}"),
        ("daemon", "data_roots"): (bool, "at least one absolute path"),
        ("daemon", "node"): (lambda v: re.fullmatch(r"[A-Za-z0-9_-]+", v), "a NATS-safe name"),
        ("http", "port"): (lambda v: 0 <= v <= 65535, "an integer from 0 to 65535"),
        ("http", "max_upload_mb"): (lambda v: v > 0, "a positive integer"),
        ("http", "max_body_kb"): (lambda v: v > 0, "a positive integer"),
        ("http", "session_hours"): (lambda v: v > 0, "a positive number of hours"),
        ("auth", "key_expire_days"): (lambda v: v >= 0, "0 (never) or a positive integer"),
        ("nats", "subject_prefix"): (
            lambda v: re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", v),
            "a subject token like 'dpd'",
        ),
        ("nats", "url"): (
            lambda v: v == "" or re.match(r"^(nats|tls|ws|wss)://", v),
            "empty or a nats:// URL",
        ),
        ("gpus", "backend"): (lambda v: v in ("nvml", "static", "auto"), "nvml, static or auto"),
        ("gpus", "monitor_interval"): (lambda v: v > 0, "a positive number of seconds"),
        ("trainer", "master_port_range"): (
            lambda v: len(v) == 2 and 1024 <= v[0] <= v[1] <= 65535,
            "[low, high] with 1024 <= low <= high <= 65535",
        ),
        ("trainer", "stop_timeout"): (lambda v: v > 0, "a positive number of seconds"),
        ("trainer", "term_timeout"): (lambda v: v > 0, "a positive number of seconds"),
        ("trainer", "kill_timeout"): (lambda v: v > 0, "a positive number of seconds"),
        ("trainer", "inactivity_timeout"): (lambda v: v > 0, "a positive number of seconds"),
        ("trainer", "step_timeout_factor"): (lambda v: v >= 1, "a number of at least 1"),
        ("trainer", "deepspeed"): (bool, "a command name or path"),
        ("preprocess", "max_concurrent"): (lambda v: v >= 0, "0 (automatic) or a positive integer"),
        ("alerts", "webhook_url"): (
            lambda v: v == "" or re.match(r"^https?://", v),
            "empty or an http:// or https:// URL",
        ),
        ("alerts", "stall_seconds"): (lambda v: v > 0, "a positive number of seconds"),
        ("alerts", "loss_explosion_factor"): (lambda v: v > 1, "a number above 1"),
        ("alerts", "loss_window"): (lambda v: v >= 10, "an integer of at least 10"),
    }
    if table == "fleet":
        return _fleet_value_problem(key, value)
    check = checks.get((table, key))
    if check and not check[0](value):
        return f"expected {check[1]}"
    return None


def _check_consistency(config: Config) -> None:
    _check_nats_credentials(config.nats)
    _check_fleet(config)
    lo, hi = config.trainer.master_port_range
    if config.http.port and lo <= config.http.port <= hi:
        raise ConfigError(
            f"[http] port {config.http.port} lies inside [trainer] master_port_range [{lo}, {hi}]"
        )


def _check_nats_credentials(nats: NatsConfig) -> None:
    """nats-py signs a .creds login with the nkeys package, imported only when it connects
    (in the background, for ever): without it, refuse now in one line instead."""
    if not nats.creds_file:
        return
    try:
        import nkeys  # noqa: F401
    except ImportError:
        raise ConfigError(
            "[nats] creds_file needs the Python package nkeys, which is not installed "
            "(pip install nkeys), or use [nats] user/password or token instead"
        ) from None
