"""Operator settings: the only place that reads the environment (``ISOCHAT_*`` and ``.env``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Known to everybody who can read this file: fine on a laptop, refused in production.
DEVELOPMENT_AUTH_SECRET = "isochat-development-secret-change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ISOCHAT_", env_file=".env", extra="ignore", frozen=True
    )

    env: Literal["development", "production"] = "development"
    database_url: str = "sqlite+aiosqlite:///./var/isochat.db"
    broker_url: str = "memory://"
    auth_secret: str = DEVELOPMENT_AUTH_SECRET
    token_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)

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
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)  # HTTP bodies and WebSocket frames
    ws_max_pending_frames: int = Field(default=256, ge=8)
    # Per user; one user reaching a limit never slows another.
    rate_limit_per_minute: int = Field(default=300, ge=1)
    rate_limit_burst: int = Field(default=60, ge=1)
    max_running_runs_per_user: int = Field(default=8, ge=1)
    max_ws_connections_per_user: int = Field(default=8, ge=1)
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # Every database step a run cannot be interrupted in (a transaction, closing a session) and
    # every statement gives up after this long, so a hung database can never hang a run forever.
    db_timeout_s: float = Field(default=5.0, gt=0)
    # A serving process renews the lease of each of its running runs; a run whose lease is this
    # old (its process died or lost the database) is ended `interrupted` by any live process.
    run_lease_s: float = Field(default=15.0, ge=1)
    # On SIGTERM / Ctrl-C: how long runs in flight may go on before they are ended `cancelled`.
    shutdown_timeout_s: int = Field(default=10, ge=0)

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

    @property
    def broker_kind(self) -> Literal["memory", "redis"]:
        return "memory" if self.broker_url.startswith("memory://") else "redis"

    @property
    def is_development(self) -> bool:
        return self.env == "development"
