"""Process-wide settings read from the environment (no ray import).

Everything a deployment needs to find its resources: where the store is, where models live.
Credentials only ever come from the environment (or a Kubernetes Secret mapped into it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SQLITE_PATH = PROJECT_ROOT / "data" / "crypto_prices.sqlite"
DEFAULT_MODEL_DIR = PROJECT_ROOT / "models" / "artifacts"
DEFAULT_TIMEFRAME = "1h"


@dataclass(frozen=True)
class StoreSettings:
    """Which backend to use: MySQL when MYSQL_HOST is set, else the embedded SQLite file."""

    mysql_host: str | None
    mysql_port: int
    mysql_user: str
    mysql_password: str
    mysql_database: str
    sqlite_path: Path

    @property
    def backend(self) -> str:
        return "mysql" if self.mysql_host else "sqlite"

    def describe(self) -> str:
        if self.mysql_host:
            return f"mysql://{self.mysql_user}@{self.mysql_host}:{self.mysql_port}/{self.mysql_database}"
        return f"sqlite:///{self.sqlite_path}"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "StoreSettings":
        env = os.environ if env is None else env
        return cls(
            mysql_host=env.get("MYSQL_HOST") or None,
            mysql_port=int(env.get("MYSQL_PORT", "3306")),
            mysql_user=env.get("MYSQL_USER", "root"),
            mysql_password=env.get("MYSQL_PASSWORD", ""),
            mysql_database=env.get("MYSQL_DATABASE", "crypto_prices"),
            sqlite_path=Path(env.get("SIGNAL_DB_PATH", str(DEFAULT_SQLITE_PATH))),
        )


def model_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("MODEL_DIR", str(DEFAULT_MODEL_DIR)))


def spill_dir(env: dict[str, str] | None = None) -> Path:
    """Where Analytics journals signals the store could not take at shutdown (replayed on start)."""
    env = os.environ if env is None else env
    return Path(env.get("SIGNAL_SPILL_DIR", str(PROJECT_ROOT / "data" / "spill")))
