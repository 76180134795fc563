"""Settings: the only module that reads the environment and `.env`.

Precedence, highest first: command-line options (passed in as overrides), environment variables,
a `.env` file in the working directory, defaults. The seed's variable names are honoured as they
are (CLOUD_PROVIDER, AWS_S3_BUCKET, GCP_BUCKET, AZURE_CONTAINER, ...). Secret values are kept out
of `repr` so they are never printed or logged.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from casstore.errors import ConfigError

_PROVIDERS = {"local", "aws", "gcp", "azure"}
DEFAULT_KEEP_LAST = 30


def _secret() -> Any:
    return field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    source: str = "./data"
    repository: str = "./.casstore"
    cache_dir: str = ""
    host: str = ""
    remote: str | None = None          # resolved remote URL, None when CLOUD_PROVIDER=local
    prefix: str = "casstore/"
    exclude: tuple[str, ...] = ()
    schedule: str | None = None
    keep_last: int | None = 30          # scheduled runs' retention; CASSTORE_KEEP_LAST=0 turns it off
    allow_empty: bool = False           # snapshot a missing-but-empty source (never a missing one)
    grace_seconds: float = 24 * 3600
    compression_level: int | None = None
    upload_concurrency: int = 4
    s3_sse: str = "auto"
    s3_kms_key_id: str | None = None
    storage_class: str | None = None
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
    aws_access_key_id: str | None = _secret()
    aws_secret_access_key: str | None = _secret()
    gcp_project: str | None = None
    gcp_credentials: str | None = None
    storage_emulator_host: str | None = None
    azure_connection_string: str | None = _secret()
    api_token: str | None = _secret()
    notify_cmd: str | None = None
    cache_max_bytes: int | None = None     # local cache size limit; None: unbounded
    read_attempts: int = 5                 # reads of an object that fails verification (DESIGN.md "Verified reads")
    connect_timeout: float = 5.0           # seconds to open a connection
    read_timeout: float = 15.0             # seconds a small (metadata) answer may stall
    min_read_rate: int = 256 * 1024        # bytes/s a large read may fall to before it is cut
    request_deadline: float = 120.0        # one request's total time, retries and backoff included
    # an encrypted repository's password: given, in a file, or printed by a command (never stored)
    password: str | None = _secret()
    password_file: str | None = None
    password_command: str | None = None
    new_password: str | None = _secret()    # `key add` / `key passwd`: the new key's password
    new_password_file: str | None = None

    def with_overrides(self, **overrides: Any) -> Settings:
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known and v is not None})

    def remote_options(self) -> dict:
        """Options for `open_remote`, per URL scheme (credentials only when given explicitly in .env;
        otherwise each SDK's own chain: environment, profiles, IAM roles, application default)."""
        by_scheme = {
            "s3": {"region": self.aws_region, "endpoint_url": self.aws_endpoint_url, "sse": self.s3_sse,
                   "kms_key_id": self.s3_kms_key_id, "storage_class": self.storage_class,
                   "access_key_id": self.aws_access_key_id, "secret_access_key": self.aws_secret_access_key},
            "gs": {"project": self.gcp_project, "credentials_file": self.gcp_credentials,
                   "endpoint": self.storage_emulator_host},
            "az": {"connection_string": self.azure_connection_string},
        }
        # plain numbers: the registry turns them into remotes.timeouts.Timeouts (settings sits below remotes)
        timeouts = {"connect": self.connect_timeout, "read": self.read_timeout, "min_rate": self.min_read_rate}
        return {scheme: {**{k: v for k, v in options.items() if v is not None}, "timeouts": timeouts}
                for scheme, options in by_scheme.items()}


def load_settings(overrides: dict | None = None, environ: dict | None = None, dotenv_path: str = ".env") -> Settings:
    """Read settings from the environment and `.env`; `overrides` (CLI options) win."""
    env = _merged_environment(environ, dotenv_path)
    settings = Settings(
        source=env.get("CASSTORE_SOURCE", "./data"),
        repository=env.get("CASSTORE_REPOSITORY", "./.casstore"),
        cache_dir=env.get("CASSTORE_CACHE_DIR") or _default_cache_dir(env),
        host=env.get("CASSTORE_HOST") or os.uname().nodename,
        remote=_remote_url(env),
        prefix=env.get("CASSTORE_PREFIX", "casstore/"),
        exclude=tuple(p for p in re.split(r"[,\n]", env.get("CASSTORE_EXCLUDE", "")) if p.strip()),
        schedule=env.get("CASSTORE_SCHEDULE") or None,
        keep_last=_keep_last(env),
        allow_empty=env.get("CASSTORE_ALLOW_EMPTY", "").strip().lower() in ("1", "true", "yes"),
        grace_seconds=parse_duration(env.get("CASSTORE_GRACE", "24h")),
        compression_level=_int(env, "CASSTORE_COMPRESSION_LEVEL"),
        upload_concurrency=_int(env, "CASSTORE_UPLOAD_CONCURRENCY") or 4,
        s3_sse=env.get("CASSTORE_S3_SSE", "auto"),
        s3_kms_key_id=env.get("CASSTORE_S3_KMS_KEY_ID"),
        storage_class=env.get("CASSTORE_STORAGE_CLASS"),
        aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        aws_endpoint_url=env.get("AWS_ENDPOINT_URL"),
        aws_access_key_id=_only_from_dotenv(env, environ, "AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=_only_from_dotenv(env, environ, "AWS_SECRET_ACCESS_KEY"),
        gcp_project=env.get("GCP_PROJECT_ID"),
        gcp_credentials=env.get("GOOGLE_APPLICATION_CREDENTIALS"),
        storage_emulator_host=env.get("STORAGE_EMULATOR_HOST"),
        azure_connection_string=env.get("AZURE_STORAGE_CONNECTION_STRING"),
        api_token=env.get("CASSTORE_API_TOKEN"),
        notify_cmd=env.get("CASSTORE_NOTIFY_CMD"),
        cache_max_bytes=parse_size(env["CASSTORE_CACHE_MAX"]) if env.get("CASSTORE_CACHE_MAX") else None,
        read_attempts=_int(env, "CASSTORE_READ_ATTEMPTS") or 5,
        connect_timeout=parse_duration(env.get("CASSTORE_CONNECT_TIMEOUT", "5s")),
        read_timeout=parse_duration(env.get("CASSTORE_READ_TIMEOUT", "15s")),
        min_read_rate=parse_size(env.get("CASSTORE_MIN_READ_RATE", "256K")),
        request_deadline=parse_duration(env.get("CASSTORE_REQUEST_DEADLINE", "120s")),
        password=env.get("CASSTORE_PASSWORD") or None,
        password_file=env.get("CASSTORE_PASSWORD_FILE") or None,
        password_command=env.get("CASSTORE_PASSWORD_COMMAND") or None,
        new_password=env.get("CASSTORE_NEW_PASSWORD") or None,
        new_password_file=env.get("CASSTORE_NEW_PASSWORD_FILE") or None,
    )
    return settings.with_overrides(**(overrides or {}))


def _merged_environment(environ: dict | None, dotenv_path: str) -> dict:
    file_values = {}
    if os.path.isfile(dotenv_path):
        from dotenv import dotenv_values  # lazy: only when there is a .env to read

        file_values = dotenv_values(dotenv_path)
    process = dict(os.environ if environ is None else environ)
    return {**{k: v for k, v in file_values.items() if v is not None}, **process}


def _only_from_dotenv(env: dict, environ: dict | None, name: str) -> str | None:
    """Credentials in the process environment reach boto3 through its own chain; pass only .env ones."""
    process = os.environ if environ is None else environ
    return None if name in process else env.get(name)


def _default_cache_dir(env: dict) -> str:
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "casstore")


def _int(env: dict, name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {value!r}") from None


def _keep_last(env: dict) -> int | None:
    """The seed kept the last 30 backups: that is the default; 0 turns retention off."""
    value = _int(env, "CASSTORE_KEEP_LAST")
    if value is None:
        return DEFAULT_KEEP_LAST
    if value < 0:
        raise ConfigError(f"CASSTORE_KEEP_LAST must be 0 (off) or more, not {value}")
    return value or None


def _remote_url(env: dict) -> str | None:
    """CASSTORE_REMOTE wins over CLOUD_PROVIDER; CLOUD_PROVIDER=local means no off-site copy."""
    if env.get("CASSTORE_REMOTE"):
        return env["CASSTORE_REMOTE"]
    provider = env.get("CLOUD_PROVIDER", "local").strip().lower() or "local"
    if provider not in _PROVIDERS:
        raise ConfigError(f"CLOUD_PROVIDER must be one of local, aws, gcp, azure (not {provider!r})")
    prefix = env.get("CASSTORE_PREFIX", "casstore/").strip("/")
    needed = {"aws": ("AWS_S3_BUCKET", "s3"), "gcp": ("GCP_BUCKET", "gs"), "azure": ("AZURE_CONTAINER", "az")}
    if provider == "local":
        return None
    variable, scheme = needed[provider]
    if not env.get(variable):
        raise ConfigError(f"CLOUD_PROVIDER={provider} needs {variable} (set it in .env or the environment)")
    if provider == "azure" and not env.get("AZURE_STORAGE_CONNECTION_STRING"):
        raise ConfigError("CLOUD_PROVIDER=azure needs AZURE_STORAGE_CONNECTION_STRING")
    return f"{scheme}://{env[variable]}/{prefix}"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, what: str | None = None) -> float:
    """'90s', '15m', '24h', '30d', '2w' -> seconds. With `what` (the option's name), a bare number
    other than 0 is refused: `--every 24` meant 24h far more often than 24 seconds."""
    match = _DURATION.match(str(text).lower())
    if not match:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 30s, 15m, 24h, 7d)")
    if what and not match.group(2) and float(match.group(1)) != 0:
        number = match.group(1)
        raise ConfigError(f"{what} {number} has no unit: did you mean {number}h? "
                          f"(write {number}h, {number}m or {number}s; units s, m, h, d, w)")
    return float(match.group(1)) * _UNITS[match.group(2)]


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_size(text: str) -> int:
    """'500M', '2G', '2GiB', '1048576' -> bytes (binary units)."""
    match = _SIZE.match(str(text).lower())
    if not match:
        raise ConfigError(f"not a size: {text!r} (use e.g. 500M, 2G)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
