"""Test "machines": each its own working folder (holding only the `.env` until it runs), its own home
(so its own cache), its own hostname, and every casstore call its own process.

The hostname is set with `unshare --uts` (root, as CI runs) so casstore finds it the way it does on
a real replacement machine (os.uname); where that is refused, CASSTORE_HOST sets it instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

SCRUBBED = ("AWS_", "CLOUD_", "CASSTORE_", "GCP_", "AZURE_", "GOOGLE_", "STORAGE_EMULATOR_HOST")


@cache
def can_set_hostname() -> bool:
    try:
        return subprocess.run(["unshare", "--uts", "sh", "-c", "hostname casstore-probe"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Machine:
    def __init__(self, root: Path, hostname: str, dotenv: str, **extra_env: str) -> None:
        self.hostname, self.dir = hostname, root
        self.dir.mkdir(parents=True)
        (self.dir / ".env").write_text(dotenv)
        home = root.parent / f"{root.name}-home"
        home.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}
        self.env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), **extra_env)
        if not can_set_hostname():
            self.env["CASSTORE_HOST"] = hostname

    def argv(self, *args: str) -> list[str]:
        command = [sys.executable, *args]
        if not can_set_hostname():
            return command
        return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname, *command]

    def casstore(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(self.argv("-m", "casstore.cli.main", *args), cwd=self.dir, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"[{self.hostname}] casstore {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return done

    def json(self, *args: str) -> object:
        return json.loads(self.casstore(*args, "--json").stdout)

    def python(self, code: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(self.argv("-c", code), cwd=self.dir, env=self.env, capture_output=True, text=True,
                              timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"[{self.hostname}] python exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv("-m", "casstore.cli.main", *args), cwd=self.dir, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def dotenv_for(provider: str, server: object, bucket: str, extra: str = "") -> str:
    """The seed's `.env` for a test server (plus STORAGE_EMULATOR_HOST for fake-gcs-server)."""
    if provider == "aws":
        text = (f"CLOUD_PROVIDER=aws\nAWS_S3_BUCKET={bucket}\nAWS_REGION={server.region}\n"
                f"AWS_ACCESS_KEY_ID={server.access_key}\nAWS_SECRET_ACCESS_KEY={server.secret_key}\n"
                f"AWS_ENDPOINT_URL={server.endpoint}\n")
    elif provider == "gcp":
        text = (f"CLOUD_PROVIDER=gcp\nGCP_BUCKET={bucket}\nGCP_PROJECT_ID={server.project}\n"
                f"STORAGE_EMULATOR_HOST={server.endpoint}\n")
    else:
        text = (f"CLOUD_PROVIDER=azure\nAZURE_CONTAINER={bucket}\n"
                f"AZURE_STORAGE_CONNECTION_STRING={server.connection_string}\n")
    return text + extra


SERVER_FIXTURE = {"aws": "seaweed_server", "gcp": "gcs_server", "azure": "azurite_server"}
URL_SCHEME = {"aws": "s3", "gcp": "gs", "azure": "az"}


def new_bucket(provider: str, server: object) -> str:
    return server.new_container() if provider == "azure" else server.new_bucket()


def write_day(data: Path, day: int) -> None:
    """A day of the seed's data: the IQ moves, a daily file is new, the rest stays."""
    hub = data / "ai_hub"
    hub.mkdir(parents=True, exist_ok=True)
    (hub / "collective_intelligence.json").write_text(json.dumps({"collective_iq": 100 + day, "accuracy": 0.5}))
    (hub / "shared_knowledge.json").write_text(json.dumps({"patterns": [f"p{i}" for i in range(200)]}))
    market = data / "total_market_intelligence"
    market.mkdir(exist_ok=True)
    for old in market.glob("complete_market_data_*.json"):
        old.unlink()
    (market / f"complete_market_data_{day:03d}.json").write_text(json.dumps({"day": day, "prices": [
        (day * 7919 + i * 104729) % 100003 / 7 for i in range(3000)]}))
