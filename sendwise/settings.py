"""One settings model for the whole system, read once (by the CLI or the service) and passed in.

Everything sendwise writes lives under ``home`` (``SENDWISE_HOME``, default: the working directory at the
moment the settings are read). Nothing here touches the file system or the environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ONLINE_STORES = Literal["sqlite", "redis"]
TRACKING_SERVER_SCHEMES = ("http", "https")
TRACKING_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class Settings(BaseSettings):
    """Settings from ``SENDWISE_*`` environment variables (or keyword arguments in tests)."""

    model_config = SettingsConfigDict(env_prefix="SENDWISE_", extra="forbid", strict=False)

    home: Path = Field(default_factory=Path.cwd, description="where all state lives")
    api_token: str | None = Field(default=None, description="bearer token the HTTP API requires, if set")
    online_store: ONLINE_STORES = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow's tracking and registry: an MLflow server (http://host:5000, run with --serve-artifacts "
        "so that it stores the artifacts too) or a database URI; unset: the home's SQLite store, "
        "sqlite:///$SENDWISE_HOME/mlruns/mlflow.db",
    )
    explore_share: float = Field(default=0.0, ge=0.0, le=1.0, description="default exploration share")
    holdout_share: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="share of customers (stable by id) never sent promotional or newsletter email, so that "
        "realized lift can be measured; triggered and transactional email is not held out",
    )
    holdout_salt: str = Field(
        default="sendwise-global-holdout-v1",
        min_length=1,
        description="what the holdout is drawn with (a hash of it and the customer id): another value draws a new, "
        "independent holdout, to rotate it",
    )
    seed: int = 7
    label_window_hours: int = 72
    conversion_window_days: int = 7
    brand_file: Path | None = Field(
        default=None,
        description="YAML file of the brand emails are rendered for (name, logo, colours, postal address, "
        "unsubscribe URL template); without one, only transactional email can be rendered",
    )
    templates_dir: Path | None = Field(
        default=None, description="templates and modules that replace the built-in ones of the same name"
    )
    render_days: int = Field(
        default=14, ge=1, le=365, description="how long after it was made a decision can be rendered by its id"
    )
    champion_poll_seconds: float = Field(
        default=30.0,
        ge=0.0,
        description="how often the service looks at the registry's champion aliases: a newly promoted champion is "
        "loaded in the background and served without a restart (0: never; a restart serves it)",
    )
    history_days: int = Field(
        default=30,
        ge=1,
        le=365,
        description="days of the decision log the service reads at start for frequency caps and no-repeat rules "
        "(by the day a decision was made); a rule reaching further back reads the older days when first asked",
    )
    decision_log_max_bytes: int = Field(
        default=128 * 2**20,
        ge=1,
        description="the size at which the decision log starts a new part file of the day (a batch is never split "
        "across parts, so a part may pass it by one batch)",
    )
    train_max_rows: int = Field(
        default=500_000,
        ge=1_000,
        description="the most sends (and, apart, offer exposures) a model is trained on: past it training takes a "
        "seeded sample of them before Feast's point-in-time join (every example of the rarer label up to half of "
        "it, the rest uniformly), weights each sampled row by how many of its label it stands for, and says so "
        "in the run's MLflow parameters",
    )
    feature_batch_rows: int = Field(
        default=100_000,
        ge=1,
        description="engagement rows the feature build gathers before it writes them to the feature table as one "
        "Parquet row group: the build's memory for that table is bounded by it, not by the table's size",
    )
    ingest_chunk_rows: int = Field(
        default=500_000,
        ge=1,
        description="rows of an event file the ingest reads and checks at a time (CSV blocks and Parquet batches are "
        "cut to it): the reading's memory is bounded by it, not by the file's size",
    )
    ingest_bucket_rows: int = Field(
        default=4_000_000,
        ge=1,
        description="rows the ingest merges at a time when it merges an event table with the stored one: the rows "
        "go to buckets by a hash of their event id (duplicates always meet in one bucket), then are written in "
        "time order a time range at a time, each bucket and range holding about this many rows",
    )
    feature_share_customers: int = Field(
        default=50_000,
        ge=1,
        description="customers whose events the feature build holds at a time: past it the build splits the raw "
        "event tables by customer into shares of at most this many customers and builds `feature_workers` shares "
        "at a time, so its memory follows this number rather than the store's size",
    )
    feature_workers: int = Field(
        default=2,
        ge=1,
        description="processes that label and build shares of the customers at once when the feature build splits "
        "them (each holds one share's events); 1 builds every share in the build's own process",
    )
    materialize_batch_rows: int = Field(
        default=10_000,
        ge=1,
        description="rows Feast converts and writes to the online store at a time when it materializes (its "
        "materialization.online_write_batch_size): the materialization's memory beyond the latest rows "
        "themselves is bounded by it",
    )
    offline_memory_gb: float = Field(
        default=8.0,
        gt=0,
        description="memory DuckDB (Feast's offline store) may use before it spills to "
        "SENDWISE_HOME/.duckdb-spill: point-in-time joins for training and each view's latest rows for "
        "materializing, materialize's worker processes sharing it (its own default is 80% of the machine's memory)",
    )
    materialize_workers: int = Field(
        default=2,
        ge=1,
        description="processes that materialize the feature views into a Redis online store at once, each "
        "converting its view's rows for Feast (a SQLite online store, one file, is written by one process)",
    )
    compiled_trees: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="score with the champions' trees compiled to machine code (numba) rather than LightGBM's own "
        "predict: the same predictions, about a tenth faster where a batch scores every offer of every recipient "
        "(the in-memory snapshot), for about 130 MB of compiler in the process; `auto` compiles them unless the "
        "online store is Redis, whose replicas read each customer's offer scores kept in Redis and score only "
        "the first hour of each send-time curve",
    )
    trace_decide: bool = Field(
        default=False,
        description="trace and access-log every /v1/decide request as BentoML does other routes (off: at a "
        "thousand triggered emails a second the spans and log lines took a third of the service's CPU, and the "
        "decision log records every decision)",
    )

    dask_scheduler: str | None = Field(
        default=None,
        description="where training fits its LightGBM models through LightGBM's Dask estimators: a Dask scheduler's "
        "address (tcp://host:8786), or `local` for a cluster of this machine's cores started for the job "
        "(unset: train in this process)",
    )

    @field_validator("dask_scheduler")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if not value:
            return None  # SENDWISE_DASK_SCHEDULER= (empty) is unset
        if value == "local" or "://" in value:
            return value
        raise ValueError(f"expected a scheduler address such as tcp://host:8786, or local; got {value!r}")

    @field_validator("home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        scheme = value.partition(":")[0].partition("+")[0].lower()
        if ":" not in value or scheme not in TRACKING_SERVER_SCHEMES + TRACKING_DATABASE_SCHEMES:
            raise ValueError(
                f"expected an MLflow tracking server (http://host:port or https://...) or a database URI "
                f"({', '.join(TRACKING_DATABASE_SCHEMES)}), got {value!r}; unset, the home's own store is used"
            )
        return value.rstrip("/") if scheme in TRACKING_SERVER_SCHEMES else value

    # --- the layout of the home, in one place -------------------------------------------------------
    @property
    def raw_dir(self) -> Path:
        return self.home / "raw"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def feature_tables_dir(self) -> Path:
        return self.home / "feature_tables"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def training_sets_dir(self) -> Path:
        return self.home / "training_sets"

    @property
    def decisions_dir(self) -> Path:
        return self.home / "decisions"

    @property
    def mlruns_dir(self) -> Path:
        return self.home / "mlruns"

    @property
    def tracking_uri(self) -> str:
        """MLflow's tracking and registry URI: `SENDWISE_MLFLOW_TRACKING_URI`, else the home's SQLite store."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlruns_dir / 'mlflow.db'}"

    @property
    def uses_compiled_trees(self) -> bool:
        """Whether serving scores with compiled trees (`compiled_trees`, `auto` resolved by the online store)."""
        return self.compiled_trees == "on" or (self.compiled_trees == "auto" and self.online_store != "redis")

    @property
    def tracking_server(self) -> bool:
        """Whether MLflow is a tracking server reached over HTTP (which stores the artifacts it is sent and has
        a UI of its own) rather than a database this process opens."""
        return self.tracking_uri.partition(":")[0].lower() in TRACKING_SERVER_SCHEMES

    @property
    def artifacts_uri(self) -> str | None:
        """Where the experiment keeps its artifacts: the home's folder beside a database, or None with a
        tracking server, which chooses (its `--artifacts-destination`, reached as `mlflow-artifacts:` URIs)."""
        return None if self.tracking_server else (self.mlruns_dir / "artifacts").as_uri()

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    def library_environment(self) -> dict[str, str]:
        """Environment that points MLflow, BentoML, matplotlib, Jupyter and IPython into the home."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_REGISTRY_URI": self.tracking_uri,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "BENTOML_HOME": str(self.bentoml_home),
            "BENTOML_DO_NOT_TRACK": "true",
            "MPLCONFIGDIR": str(self.home / ".matplotlib"),
            "JUPYTER_CONFIG_DIR": str(self.home / ".jupyter" / "config"),
            "JUPYTER_DATA_DIR": str(self.home / ".jupyter" / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.home / ".jupyter" / "runtime"),
            "IPYTHONDIR": str(self.home / ".ipython"),
            "FEAST_USAGE": "False",
            "SENDWISE_HOME": str(self.home),
            **({"SENDWISE_MLFLOW_TRACKING_URI": self.mlflow_tracking_uri} if self.mlflow_tracking_uri else {}),
            **({"SENDWISE_BRAND_FILE": str(self.brand_file)} if self.brand_file else {}),
            **({"SENDWISE_TEMPLATES_DIR": str(self.templates_dir)} if self.templates_dir else {}),
        }

    def activate(self) -> None:
        """Create the home and point the libraries into it (called by entry points, never on import). `mlruns/`
        is made only where MLflow writes into the home (not with a tracking server)."""
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.tracking_server:
            self.mlruns_dir.mkdir(exist_ok=True)
        os.environ.update(self.library_environment())
