"""Settings refuse a bad value in one line that names the variable and says what it takes, and
take database URLs in the forms people write."""

from __future__ import annotations

import os

import pytest

from src.setting_errors import BadSettings, load_settings
from src.settings import Settings, redact_url


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: nothing from the shell that runs the tests."""
    for name in list(os.environ):
        if name.startswith("ISOCHAT_") or name == "PROMETHEUS_MULTIPROC_DIR":
            monkeypatch.delenv(name)


def problems(monkeypatch: pytest.MonkeyPatch, **variables: str) -> list[str]:
    """What start-up says about the environment ``variables`` (names without the prefix)."""
    for name, value in variables.items():
        monkeypatch.setenv(f"ISOCHAT_{name}", value)
    with pytest.raises(BadSettings) as refused:
        load_settings(_env_file=None)
    return refused.value.problems


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        (
            {"PORT": "abc"},
            "ISOCHAT_PORT: expected a whole number from 0 to 65535, got 'abc'",
        ),
        (
            {"PORT": "70000"},
            "ISOCHAT_PORT: expected a whole number from 0 to 65535, got '70000'",
        ),
        (
            {"WORKERS": "0"},
            "ISOCHAT_WORKERS: expected a whole number of at least 1, got '0'",
        ),
        (
            {"TOKEN_TTL_S": "-5"},
            "ISOCHAT_TOKEN_TTL_S: expected a whole number greater than 0, got '-5'",
        ),
        (
            {"RUN_TIMEOUT_S": "soon"},
            "ISOCHAT_RUN_TIMEOUT_S: expected a number greater than 0, got 'soon'",
        ),
        (
            {"REDIS_TIMEOUT_S": "0"},
            "ISOCHAT_REDIS_TIMEOUT_S: expected a number greater than 0, got '0'",
        ),
        (
            {"LEAK_MARGIN_S": "-1"},
            "ISOCHAT_LEAK_MARGIN_S: expected a number of at least 0, got '-1'",
        ),
        (
            {"ENV": "prod"},
            "ISOCHAT_ENV: expected development or production, got 'prod'",
        ),
        (
            {"LOG_LEVEL": "verbose"},
            "ISOCHAT_LOG_LEVEL: expected debug, info, warning or error, got 'verbose'",
        ),
        (
            {"LOG_FORMAT": "xml"},
            "ISOCHAT_LOG_FORMAT: expected console or json, got 'xml'",
        ),
        (
            {"LLM_PROVIDER": "anthropic"},
            "ISOCHAT_LLM_PROVIDER: expected offline or openai, got 'anthropic'",
        ),
        (
            {"APPROVAL_TOOLS": "calculator, send mail"},
            "ISOCHAT_APPROVAL_TOOLS: expected tool names (letters, digits, _ . -) separated "
            "by commas, or *; got 'send mail'",
        ),
        (
            {"APPROVAL_TIMEOUT_S": "0"},
            "ISOCHAT_APPROVAL_TIMEOUT_S: expected a number greater than 0, got '0'",
        ),
        (
            {"MAX_MESSAGE_CHARS": "x" * 100},
            "ISOCHAT_MAX_MESSAGE_CHARS: expected a whole number of at least 1, "
            f"got '{'x' * 60}...'",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_and_what_it_takes(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], line: str
) -> None:
    """pydantic's "Input should be a valid integer" becomes the variable, what it takes and
    what it got (a long value shortened)."""
    assert problems(monkeypatch, **variables) == [line]


@pytest.mark.parametrize(
    ("url", "line"),
    [
        (
            "mysql://app:s3cret@db.example/app",
            "ISOCHAT_DATABASE_URL: expected a URL starting with postgresql://, postgres://, "
            "postgresql+asyncpg://, sqlite:// or sqlite+aiosqlite://, "
            "got 'mysql://app:***@db.example/app'",
        ),
        (
            "postgresql+psycopg://app:s3cret@db.example/app",
            "ISOCHAT_DATABASE_URL: expected a URL starting with postgresql://, postgres://, "
            "postgresql+asyncpg://, sqlite:// or sqlite+aiosqlite://, "
            "got 'postgresql+psycopg://app:***@db.example/app'",
        ),
        (
            "./var/isochat.db",
            "ISOCHAT_DATABASE_URL: expected a URL starting with postgresql://, postgres://, "
            "postgresql+asyncpg://, sqlite:// or sqlite+aiosqlite://, got './var/isochat.db'",
        ),
        (
            "postgresql://app:s3cret@db.example:five/app",
            "ISOCHAT_DATABASE_URL: expected a URL like postgresql://user:password@host:5432/db "
            "or sqlite:///./var/isochat.db, got 'postgresql://app:***@db.example:five/app'",
        ),
    ],
)
def test_an_unknown_database_url_is_refused_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str, line: str
) -> None:
    """An unknown scheme or a broken URL is refused at start naming the variable, not in a
    driver import later; the password is never repeated."""
    assert problems(monkeypatch, DATABASE_URL=url) == [line]


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql+asyncpg://app:s3cret@db:5432/app"),
        ("postgres://app@db/app", "postgresql+asyncpg://app@db/app"),
        ("PostgreSQL://app@db/app", "postgresql+asyncpg://app@db/app"),
        ("postgresql+asyncpg://app@db/app", "postgresql+asyncpg://app@db/app"),
        (
            "postgresql://app@db/app?sslmode=require&application_name=x",
            "postgresql+asyncpg://app@db/app?ssl=require&application_name=x",
        ),
        ("sqlite:///./var/isochat.db", "sqlite+aiosqlite:///./var/isochat.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+aiosqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
        (" postgres://app@db/app\n", "postgresql+asyncpg://app@db/app"),
    ],
)
def test_database_urls_in_the_usual_forms_run_on_the_async_drivers(
    monkeypatch: pytest.MonkeyPatch, given: str, used: str
) -> None:
    """postgresql:// and postgres:// (libpq's forms, sslmode included) run on asyncpg,
    sqlite:// on aiosqlite: the drivers isochat ships with."""
    monkeypatch.setenv("ISOCHAT_DATABASE_URL", given)
    assert load_settings(_env_file=None).database_url == used


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        (
            {"ENV": "production"},
            "ISOCHAT_AUTH_SECRET must be set to a private value of at least 32 characters "
            "when ISOCHAT_ENV=production",
        ),
        (
            {"WORKERS": "2"},
            "ISOCHAT_WORKERS=2 needs ISOCHAT_BROKER_URL=redis://host:port/db: "
            "with memory:// events and cancels never reach the other workers",
        ),
        (
            {"BROKER_URL": "amqp://rabbit"},
            "ISOCHAT_BROKER_URL must be memory:// (one process) or redis://host:port/db",
        ),
        (
            {"LLM_PROVIDER": "openai"},
            "ISOCHAT_LLM_BASE_URL must be set when ISOCHAT_LLM_PROVIDER=openai "
            "(for example http://127.0.0.1:11434/v1)",
        ),
        (
            {"LLM_PROVIDER": "openai", "LLM_BASE_URL": "localhost:11434"},
            "ISOCHAT_LLM_BASE_URL must start with http:// or https://",
        ),
    ],
)
def test_rules_across_settings_keep_their_own_one_line_message(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], line: str
) -> None:
    """A rule about several settings already names them: its message is the line."""
    assert problems(monkeypatch, **variables) == [line]


def test_every_bad_variable_gets_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """All that is wrong at once, so that fixing one does not reveal the next."""
    assert problems(monkeypatch, PORT="abc", LOG_FORMAT="xml") == [
        "ISOCHAT_PORT: expected a whole number from 0 to 65535, got 'abc'",
        "ISOCHAT_LOG_FORMAT: expected console or json, got 'xml'",
    ]


def test_settings_given_in_code_are_described_the_same_way() -> None:
    """Values passed to ``load_settings`` are checked and described like the environment's."""
    with pytest.raises(BadSettings) as refused:
        load_settings(_env_file=None, port=-1)
    assert refused.value.problems == [
        "ISOCHAT_PORT: expected a whole number from 0 to 65535, got -1"
    ]
    assert str(refused.value) == refused.value.problems[0]


def test_good_settings_load() -> None:
    """Nothing set: the documented defaults."""
    settings = load_settings(_env_file=None)
    assert isinstance(settings, Settings)
    assert settings.database_url == "sqlite+aiosqlite:///./var/isochat.db"
    assert settings.port == 8000
    assert settings.redis_timeout_s == 1.0


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+asyncpg://user:pw@host:5432/db", "postgresql+asyncpg://user:***@host:5432/db"),
        ("postgresql://user:p%40ss/w@host/db", "postgresql://user:***@host/db"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql+asyncpg://user@host/db", "postgresql+asyncpg://user@host/db"),
        ("sqlite+aiosqlite:///./var/isochat.db", "sqlite+aiosqlite:///./var/isochat.db"),
    ],
)
def test_redacted_urls_keep_everything_but_the_password(url: str, shown: str) -> None:
    """What error lines show of a URL: where it points, never the password."""
    assert redact_url(url) == shown
