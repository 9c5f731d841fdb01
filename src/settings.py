"""Operator settings: the only place that reads the environment (``ISOCHAT_*`` and ``.env``).

A process starts with ``src.setting_errors.load_settings()``, which tells a bad value in the
operator's terms.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from src.runs.domain import Multitask
from src.services.mcp.config import McpServer, parse_servers

# Known to everybody who can read this file: fine on a laptop, refused in production.
DEVELOPMENT_AUTH_SECRET = "isochat-development-secret-change-me"
ENV_PREFIX = "ISOCHAT_"

# The URL schemes ISOCHAT_DATABASE_URL takes, and the driver each one runs on. People write
# postgresql:// (libpq's form); SQLAlchemy would pick psycopg for it, which is not installed,
# so it is mapped to the async driver isochat ships with.
DATABASE_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
# Never echoed in an error: a typo in a secret is still mostly the secret.
# What ISOCHAT_DRILL_SECRET plugs in: the drill's faults, a plug-in container like a team's.
DRILL_PLUGIN = "src.drill.faults:DrillFaults"
SECRET_FIELDS = frozenset({"auth_secret", "llm_api_key", "drill_secret"})
URL_FIELDS = frozenset({"database_url", "broker_url", "llm_base_url"})
SHOWN_INPUT_CHARS = 60
# The password of scheme://user:password@host... (SQLAlchemy's own rule: no "@" in it).
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^:/@]*:)[^@]*@")
_LIBPQ_SSLMODE = re.compile(r"([?&])sslmode=")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ISOCHAT_", env_file=".env", extra="ignore", frozen=True
    )

    env: Literal["development", "production"] = "development"
    database_url: str = "sqlite+aiosqlite:///./var/isochat.db"
    broker_url: str = "memory://"
    # Where isochat's keys and channels live in that Redis: deployments that share one Redis
    # each take a prefix of their own.
    redis_prefix: str = Field(default="isochat:", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # How long one call to that Redis (a publish, a limit, a ticket) may take, connecting
    # included: past it the event is left to replay, the limit lets the request through and
    # the ticket is refused for now.
    redis_timeout_s: float = Field(default=1.0, gt=0)
    auth_secret: str = DEVELOPMENT_AUTH_SECRET
    token_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    # Set, drills are on: runs of users whose token carries a `drill` claim made with this
    # secret take fault markers (`isochat drill`, src/drill/faults.py). Unset (the default),
    # nothing can force a fault.
    drill_secret: str | None = Field(default=None, min_length=32)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"
    # prometheus-client's own variable: set (by `isochat serve` when WORKERS > 1) to a directory
    # where every worker writes its metrics, so that /metrics adds them all up.
    prometheus_multiproc_dir: str | None = Field(
        default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR"
    )

    # Teams' containers (module:Class, comma-separated) whose providers extend or override
    # isochat's request providers: their own agents, tools and routes (see src/plugins.py).
    plugins: str = Field(default="", pattern=r"^\s*([\w.]+:[\w.]+\s*(,\s*[\w.]+:[\w.]+\s*)*)?$")

    llm_provider: Literal["offline", "openai"] = "offline"
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = Field(default=30.0, gt=0)
    llm_max_retries: int = Field(default=2, ge=0, le=10)  # for 429 and 5xx only
    llm_max_connections: int = Field(default=100, ge=1)
    run_timeout_s: float = Field(default=120.0, gt=0)
    # A request scope open longer than the run timeout plus this is logged as a leak.
    leak_margin_s: float = Field(default=30.0, ge=0)

    max_message_chars: int = Field(default=8000, ge=1)
    # Origins (scheme://host[:port], comma-separated) whose pages may call the API from a
    # browser; none by default.
    cors_origins: str = ""
    # A server-sent-event stream that has sent nothing this long sends a comment (proxies cut
    # idle connections).
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)  # HTTP bodies and WebSocket frames
    ws_max_pending_frames: int = Field(default=256, ge=8)
    # Per user; one user reaching a limit never slows another.
    rate_limit_per_minute: int = Field(default=300, ge=1)
    rate_limit_burst: int = Field(default=60, ge=1)
    max_running_runs_per_user: int = Field(default=8, ge=1)
    # A message sent while its thread has a run going: reject (409), enqueue, interrupt or
    # rollback (docs/api.md, "Messages while a run is busy"), unless the message says.
    multitask_default: Multitask = "reject"
    # Runs that may wait their turn on one thread (beyond: 429).
    max_queued_runs: int = Field(default=10, ge=0)
    max_ws_connections_per_user: int = Field(default=8, ge=1)
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # Every database step a run cannot be interrupted in (a transaction, closing a session) and
    # every statement gives up after this long, so a hung database can never hang a run forever.
    db_timeout_s: float = Field(default=5.0, gt=0)
    # A serving process renews the lease of each of its running runs; a run whose lease is this
    # old (its process died or lost the database) is ended `interrupted` by any live process.
    run_lease_s: float = Field(default=15.0, ge=1)
    # Tools whose every call waits for a person's approval (names, comma-separated; `*`: all).
    approval_tools: str = ""
    # A run that waits for approval longer than this is ended `failed` / `approval_expired`.
    approval_timeout_s: float = Field(default=86400.0, gt=0)
    # Teams' MCP servers (JSON: name -> url or command, headers, routes; see docs/api.md).
    mcp_servers: Annotated[dict[str, McpServer], NoDecode] = {}
    # How long one request to an MCP server (opening a session, listing, a call) may take.
    mcp_timeout_s: float = Field(default=30.0, gt=0)
    # How long a server's tool list is used before it is asked again.
    mcp_tools_ttl_s: float = Field(default=60.0, ge=0)
    # On SIGTERM / Ctrl-C: how long runs in flight may go on before they are ended `cancelled`.
    shutdown_timeout_s: int = Field(default=10, ge=0)

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        """postgresql:// and postgres:// run on asyncpg, sqlite:// on aiosqlite; anything else
        is refused here rather than failing later in a driver import."""
        scheme, separator, rest = url.strip().partition("://")
        driver = DATABASE_DRIVERS.get(scheme.lower()) if separator else None
        if driver is None:
            raise ValueError(
                "expected a URL starting with postgresql://, postgres://, postgresql+asyncpg://, "
                f"sqlite:// or sqlite+aiosqlite://, got {shown_value(url, secret_url=True)}"
            )
        if driver == "postgresql+asyncpg":
            # libpq's sslmode=require is asyncpg's ssl=require (same values).
            rest = _LIBPQ_SSLMODE.sub(r"\1ssl=", rest)
        mapped = f"{driver}://{rest}"
        try:
            make_url(mapped)
        except (ArgumentError, ValueError):
            raise ValueError(
                "expected a URL like postgresql://user:password@host:5432/db or "
                f"sqlite:///./var/isochat.db, got {shown_value(url, secret_url=True)}"
            ) from None
        return mapped

    @model_validator(mode="after")
    def _production_needs_a_real_secret(self) -> Settings:
        if self.env == "production" and (
            self.auth_secret == DEVELOPMENT_AUTH_SECRET or len(self.auth_secret) < 32
        ):
            raise ValueError(
                "ISOCHAT_AUTH_SECRET must be set to a private value of at least 32 characters "
                "when ISOCHAT_ENV=production"
            )
        return self

    @model_validator(mode="after")
    def _openai_needs_a_server(self) -> Settings:
        if self.llm_provider == "openai":
            if not self.llm_base_url:
                raise ValueError(
                    "ISOCHAT_LLM_BASE_URL must be set when ISOCHAT_LLM_PROVIDER=openai "
                    "(for example http://127.0.0.1:11434/v1)"
                )
            if not self.llm_base_url.startswith(("http://", "https://")):
                raise ValueError("ISOCHAT_LLM_BASE_URL must start with http:// or https://")
        return self

    @model_validator(mode="after")
    def _known_broker(self) -> Settings:
        if not self.broker_url.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError(
                "ISOCHAT_BROKER_URL must be memory:// (one process) or redis://host:port/db"
            )
        return self

    @model_validator(mode="after")
    def _workers_need_a_shared_broker(self) -> Settings:
        if self.workers > 1 and self.broker_kind == "memory":
            raise ValueError(
                f"ISOCHAT_WORKERS={self.workers} needs ISOCHAT_BROKER_URL=redis://host:port/db: "
                "with memory:// events and cancels never reach the other workers"
            )
        return self

    @field_validator("approval_tools")
    @classmethod
    def _tool_names(cls, value: str) -> str:
        for name in (n.strip() for n in value.split(",") if n.strip()):
            if name != "*" and not re.fullmatch(r"[\w.-]{1,200}", name):
                raise ValueError(
                    "expected tool names (letters, digits, _ . -) separated by commas, or *; "
                    f"got {name[:SHOWN_INPUT_CHARS]!r}"
                )
        return value

    @field_validator("mcp_servers", mode="before")
    @classmethod
    def _mcp_servers(cls, value: Any) -> Any:
        return parse_servers(value) if isinstance(value, str) else value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",") if o.strip()):
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"expected origins like https://app.example.com, got {origin!r}")
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def plugin_paths(self) -> list[str]:
        """The plug-ins to plug in (``module:Class``): the drill's faults first when
        ``DRILL_SECRET`` turns drills on, then ``PLUGINS``."""
        drill = [DRILL_PLUGIN] if self.drill_secret is not None else []
        return drill + [path.strip() for path in self.plugins.split(",") if path.strip()]

    @property
    def broker_kind(self) -> Literal["memory", "redis"]:
        return "memory" if self.broker_url.startswith("memory://") else "redis"

    @property
    def is_development(self) -> bool:
        return self.env == "development"


def redact_url(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``: fit for a log line or an error."""
    return _URL_PASSWORD.sub(r"\g<head>***@", url)


def shown_value(value: object, *, secret_url: bool = False) -> str:
    """``value`` quoted for an error line: shortened, and a URL without its password."""
    if not isinstance(value, str):
        return repr(value)
    text = redact_url(value) if secret_url else value
    if len(text) > SHOWN_INPUT_CHARS:
        text = text[:SHOWN_INPUT_CHARS] + "..."
    return repr(text)
