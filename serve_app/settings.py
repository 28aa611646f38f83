"""Process-wide settings read from the environment (no ray import).

Everything a deployment needs to find its resources: where the store is, where models live.
Credentials only ever come from the environment (or a Kubernetes Secret mapped into it).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULT_TIMEFRAME = "1h"
HOME_ENV = "SIGNALGEN_HOME"

# The market data source: the exchange (a ccxt id) and the quote currency every stored candle and news item
# belongs to. The store reads and writes only its own source's rows, so two sources never mix.
DEFAULT_EXCHANGE = "binance"
DEFAULT_QUOTE = "USDT"
EXCHANGE_PATTERN = r"^[a-z0-9_]{1,32}$"
QUOTE_PATTERN = r"^[A-Z0-9]{1,16}$"


def check_exchange(exchange: str) -> str:
    """`exchange` when it is an exchange id (lowercase letters, digits, _), else ValueError."""
    if not isinstance(exchange, str) or not re.match(EXCHANGE_PATTERN, exchange):
        raise ValueError(f"exchange {exchange!r} is not an exchange id (lowercase letters, digits and _, "
                         "like binance or kraken)")
    return exchange


def check_quote(quote: str) -> str:
    """`quote` when it is a currency code (uppercase letters and digits), else ValueError."""
    if not isinstance(quote, str) or not re.match(QUOTE_PATTERN, quote):
        raise ValueError(f"quote {quote!r} is not a quote currency (uppercase letters and digits, like USDT)")
    return quote


def check_source(exchange: str, quote: str) -> tuple[str, str]:
    """(exchange, quote) when both are well-formed, else ValueError naming the bad one."""
    return check_exchange(exchange), check_quote(quote)


def _source_checkout() -> Path | None:
    """The checkout this package runs from (an editable install, `make run`), else None (an installed copy:
    the package directory is then inside site-packages, no place for data)."""
    root = Path(__file__).resolve().parent.parent
    marker = root / "pyproject.toml"
    try:
        if marker.is_file() and 'name = "signalgen"' in marker.read_text(encoding="utf-8"):
            return root
    except OSError:
        pass
    return None


def project_home(env: dict[str, str] | None = None) -> Path:
    """Where the defaults live (data/, models/artifacts/, configs/): $SIGNALGEN_HOME, else the source checkout
    the package runs from, else the current directory - never the installed package's own directory."""
    env = os.environ if env is None else env
    if env.get(HOME_ENV):
        return Path(env[HOME_ENV])
    return _source_checkout() or Path.cwd()


# the checkout's (or $SIGNALGEN_HOME's, or the working directory's) place for each, at import time
PROJECT_ROOT = project_home()
DEFAULT_SQLITE_PATH = PROJECT_ROOT / "data" / "crypto_prices.sqlite"
DEFAULT_MODEL_DIR = PROJECT_ROOT / "models" / "artifacts"
DEFAULT_SPILL_DIR = PROJECT_ROOT / "data" / "spill"
SERVE_CONFIG = PROJECT_ROOT / "configs" / "serve_config.yaml"


@dataclass(frozen=True)
class StoreSettings:
    """Which backend to use: MySQL when MYSQL_HOST is set, else the embedded SQLite file; and which market
    data source (`exchange`, `quote`) the store reads and writes: every candle and news query is limited to
    it (SIGNAL_EXCHANGE, SIGNAL_QUOTE)."""

    mysql_host: str | None
    mysql_port: int
    mysql_user: str
    mysql_password: str
    mysql_database: str
    sqlite_path: Path
    exchange: str = DEFAULT_EXCHANGE
    quote: str = DEFAULT_QUOTE

    def __post_init__(self) -> None:
        check_source(self.exchange, self.quote)

    @property
    def source(self) -> str:
        return f"{self.exchange}/{self.quote}"

    def with_source(self, exchange: str, quote: str) -> "StoreSettings":
        """The same database, another market data source."""
        return replace(self, exchange=exchange, quote=quote)

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
            exchange=env.get("SIGNAL_EXCHANGE") or DEFAULT_EXCHANGE,
            quote=env.get("SIGNAL_QUOTE") or DEFAULT_QUOTE,
        )


def model_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("MODEL_DIR", str(DEFAULT_MODEL_DIR)))


def spill_dir(env: dict[str, str] | None = None) -> Path:
    """Where Analytics journals the signals the store could not take (fsync'ed before they are answered,
    replayed into the store once it is reachable)."""
    env = os.environ if env is None else env
    return Path(env.get("SIGNAL_SPILL_DIR", str(DEFAULT_SPILL_DIR)))
