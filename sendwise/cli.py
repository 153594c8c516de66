"""The `sendwise` command: simulate, ingest, train, pipeline, decide, serve, report, evaluate, realdata, feast, ui.

A thin shell: each command parses its options, calls a job (`training.jobs`, or the module named) and prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from sendwise.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

    from sendwise.ingest import IngestReport
    from training.jobs import IngestOptions
    from training.lift import Comparison
    from training.train import TrainResult

app = typer.Typer(help="sendwise: open propensity, send time and next best offer for every email recipient.")
console = Console(stderr=False)
REPO_ROOT = Path(__file__).resolve().parents[1]
FEAST_MAIN = "import sys; from feast.cli.cli import cli; sys.exit(cli(prog_name='sendwise feast'))"
"""Feast's own command line, run by the interpreter sendwise runs in (the `feast` script may not be on PATH)."""


class ModelOption(StrEnum):
    open = "open"
    send_time = "send-time"
    offer = "offer"
    all = "all"


class Consent(StrEnum):
    granted = "granted"
    denied = "denied"


MODELS: dict[ModelOption, Literal["open", "send-time", "offer", "all"]] = {
    ModelOption.open: "open",
    ModelOption.send_time: "send-time",
    ModelOption.offer: "offer",
    ModelOption.all: "all",
}
CONSENT: dict[Consent, Literal["granted", "denied"]] = {Consent.granted: "granted", Consent.denied: "denied"}


def _settings() -> Settings:
    # Library deprecation notices (ibis, SQLAlchemy) say nothing a user of sendwise can act on.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as error:
        wrong = "; ".join(
            f"SENDWISE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise _fail(f"the settings are not valid: {wrong}") from None
    settings.activate()
    return settings


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Argument(help="where to write the world (data contract + truth/)")],
    customers: Annotated[int, typer.Option(min=10, help="number of customers")] = 10_000,
    days: Annotated[int, typer.Option(min=7, help="days of history")] = 90,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    realistic: Annotated[
        bool,
        typer.Option(
            help="inboxes as real mail behaves: Apple's proxy opens every email of its recipients at any delay "
            "and carries their own opens, scanners open and click, daily rhythms from the held-out families"
        ),
    ] = False,
    mpp_share: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="share of recipients behind Apple's privacy proxy")
    ] = None,
    esp_flag_share: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="share of the proxy's opens the ESP flags as machine opens")
    ] = None,
    prefetch_fast_share: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="share of proxy fetches within minutes of delivery")
    ] = None,
    prefetch_median_hours: Annotated[
        float | None, typer.Option(min=0.01, help="median delay of the later proxy fetches, in hours")
    ] = None,
    scanner_share: Annotated[
        float | None, typer.Option(min=0.0, max=0.08, help="share of recipients behind a security scanner")
    ] = None,
    rhythms: Annotated[str | None, typer.Option(help="daily-rhythm families: classic, development or heldout")] = None,
    recent_activity: Annotated[
        bool,
        typer.Option(help="recent site visits, views and purchases move opens and conversions (off: older worlds)"),
    ] = True,
) -> None:
    """Write a synthetic world in the data contract, with its ground truth in OUT_DIR/truth/.

    The classic world is the default; --realistic and the options after it move it toward real inboxes
    (docs/simulator.md).
    """
    from sendwise.simulator import simulate as run
    from sendwise.simulator import simulation_options

    try:
        rates, realism = simulation_options(
            realistic=realistic,
            mpp_share=mpp_share,
            esp_flag_share=esp_flag_share,
            prefetch_fast_share=prefetch_fast_share,
            prefetch_median_hours=prefetch_median_hours,
            scanner_share=scanner_share,
            rhythms=rhythms,
            recent_activity=recent_activity,
        )
    except ValueError as error:
        raise _fail(str(error)) from error
    started = time.perf_counter()
    summary = run(out_dir, customers=customers, days=days, seed=seed, rates=rates, realism=realism)
    console.print(f"world written to {out_dir} in {time.perf_counter() - started:.1f} s")
    console.print(summary)


IngestTz = Annotated[str | None, typer.Option("--assume-tz", help="zone of timestamps that carry none")]
IngestConsent = Annotated[
    Consent | None, typer.Option("--profiling-consent", help="consent_profiling where the column is absent")
]
IngestDelimiter = Annotated[str | None, typer.Option("--csv-delimiter", help="CSV delimiter (default: detected)")]
IngestDecimal = Annotated[bool, typer.Option("--decimal-comma", help="numbers in CSV use a decimal comma")]
TuneTrials = Annotated[
    int, typer.Option(min=0, help="Optuna trials per model (0: fixed parameters; 40 suits 10,000 customers)")
]
TuneTimeout = Annotated[float, typer.Option(min=1, help="seconds all the studies of one run may take together")]
AsOfOption = Annotated[
    str | None,
    typer.Option(
        "--as-of",
        help="when the export was taken, with Z or an offset (e.g. 2026-11-20T08:00:00Z); label windows close "
        "relative to it [default: the latest as-of an ingest recorded, else the data's end]",
    ),
]


def _as_of(text: str | None) -> pd.Timestamp | None:
    """`--as-of` as a UTC timestamp (None when not given); a time without a zone is an error."""
    from sendwise.asof import AsOfError, parse_as_of

    if text is None:
        return None
    try:
        return parse_as_of(text)
    except AsOfError as error:
        raise _fail(str(error)) from error


def _ingest_options(
    assume_tz: str | None, profiling_consent: Consent | None, csv_delimiter: str | None, decimal_comma: bool
) -> IngestOptions:
    from training.jobs import IngestOptions

    consent = CONSENT[profiling_consent] if profiling_consent else None
    return IngestOptions(assume_tz, consent, csv_delimiter, decimal_comma)


def _print_ingest(report: IngestReport) -> None:
    console.print(report.to_text(), markup=False, highlight=False)


@app.command()
def ingest(
    data_dir: Annotated[Path, typer.Argument(help="a directory laid out as the data contract says")],
    assume_tz: IngestTz = None,
    profiling_consent: IngestConsent = None,
    csv_delimiter: IngestDelimiter = None,
    decimal_comma: IngestDecimal = False,
    as_of: AsOfOption = None,
) -> None:
    """Validate and load event files into the home's raw store, record when the export was taken, and print the
    ingest report."""
    from training import jobs

    given = _as_of(as_of)
    options = _ingest_options(assume_tz, profiling_consent, csv_delimiter, decimal_comma)
    try:
        report = jobs.ingest(_settings(), data_dir, options, as_of=given)
    except jobs.JOB_ERRORS as error:
        raise _fail(str(error)) from error
    _print_ingest(report)


def _print_training(result: TrainResult) -> None:
    for line in [*result.tuning_lines(), *result.sampled.values()]:
        console.print(line)
    table = Table(title=f"models (as of {result.as_of_text()})")
    for column in ("model", "valid AUC", "calibration", "promotion"):
        table.add_column(column)
    for promotion in result.promotions:
        metrics = result.metrics.get(promotion.name) or result.metrics.get("open_propensity", {})
        table.add_row(
            f"{promotion.name} v{promotion.version}",
            f"{metrics.get('valid_auc', float('nan')):.4f}",
            f"{metrics.get('valid_calibration', float('nan')):.3f}",
            ("champion: " if promotion.promoted else "kept champion: ") + promotion.reason,
        )
    for name, why in result.skipped.items():
        table.add_row(name, "-", "-", f"not trained: {why}")
    console.print(table)


@app.command()
def train(
    model: Annotated[ModelOption, typer.Option(help="which model to train")] = ModelOption.all,
    tune: TuneTrials = 0,
    tune_timeout: TuneTimeout = 540.0,
    as_of: AsOfOption = None,
) -> None:
    """Build features, train (and tune), log to MLflow, register and promote the winners."""
    from training import jobs

    given = _as_of(as_of)
    options = jobs.TrainOptions(model=MODELS[model], tune=tune, tune_timeout_s=tune_timeout)
    try:
        result = jobs.train(_settings(), options, as_of=given, console=console)
    except jobs.JOB_ERRORS as error:
        raise _fail(str(error)) from error
    _print_training(result.training)


@app.command()
def pipeline(
    data: Annotated[Path, typer.Option("--data", help="a directory laid out as the data contract says")],
    assume_tz: IngestTz = None,
    profiling_consent: IngestConsent = None,
    csv_delimiter: IngestDelimiter = None,
    decimal_comma: IngestDecimal = False,
    tune: TuneTrials = 0,
    tune_timeout: TuneTimeout = 540.0,
    as_of: AsOfOption = None,
) -> None:
    """Ingest, build features, train (and tune), promote and materialize the online store."""
    from training import jobs

    given = _as_of(as_of)
    settings = _settings()
    started = time.perf_counter()
    try:
        result = jobs.pipeline(
            settings,
            data,
            _ingest_options(assume_tz, profiling_consent, csv_delimiter, decimal_comma),
            jobs.TrainOptions(tune=tune, tune_timeout_s=tune_timeout),
            as_of=given,
            console=console,
            ingested=_print_ingest,
        )
    except jobs.JOB_ERRORS as error:
        raise _fail(str(error)) from error
    _print_training(result.training)
    console.print(f"pipeline finished in {time.perf_counter() - started:.0f} s; home: {settings.home}")


@app.command()
def decide(
    recipients: Annotated[Path, typer.Argument(help="recipients: .csv, .jsonl or .parquet with a customer_id column")],
    out: Annotated[Path, typer.Option("--out", help="where to write the decisions, one JSON object per line")],
    settings_json: Annotated[
        Path | None,
        typer.Option(
            "--request",
            help="a JSON file with what /v1/decide takes besides recipients: campaign, window_start, window_hours, "
            "offer_ids, k_offers, explore_share, constraints",
        ),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="campaign kind (overrides --request)")] = None,
    topic: Annotated[str | None, typer.Option(help="campaign topic (overrides --request)")] = None,
    window_start: Annotated[str | None, typer.Option(help="a whole UTC hour, e.g. 2026-11-27T07:00:00Z")] = None,
    processes: Annotated[
        int | None,
        typer.Option(min=1, help="worker processes deciding batches side by side [default: one per core]"),
    ] = None,
) -> None:
    """Decide a whole campaign from a file, in batches, without an HTTP call held open (serving/bulk.py)."""
    import json

    from pydantic import ValidationError
    from rich.progress import Progress

    from serving.bulk import BulkError, BulkInputError, decide_all, read_recipients
    from serving.engine import Engine
    from serving.schemas import DecideRequest

    body: dict[str, object] = {}
    if settings_json is not None:
        try:
            body = json.loads(settings_json.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise _fail(f"--request {settings_json}: {error}") from error
        if not isinstance(body, dict) or "recipients" in body:
            raise _fail(f"--request {settings_json}: give a JSON object without recipients (they come from the file)")
    given = body.get("campaign") or {}
    if not isinstance(given, dict):
        raise _fail(f"--request {settings_json}: campaign must be a JSON object, not {given!r}")
    campaign: dict[str, object] = dict(given)
    if kind is not None:
        campaign["kind"] = kind
    if topic is not None:
        campaign["topic"] = topic
    body = {**body, "campaign": campaign, "recipients": [{"customer_id": "template"}]}
    if window_start is not None:
        body["window_start"] = window_start
    try:
        request = DecideRequest.model_validate(body)
        everyone = read_recipients(recipients)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise _fail(f"the request: {problems}") from error
    except BulkInputError as error:
        raise _fail(str(error)) from error
    engine = Engine.load(_settings())
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("deciding", total=len(everyone))
        try:
            summary = decide_all(
                engine, everyone, out, request, progress=lambda k: bar.advance(task, k), processes=processes
            )
        except BulkError as error:
            raise _fail(str(error)) from error
    rate = summary.recipients / max(summary.seconds, 1e-9)
    console.print(
        f"{summary.recipients:,} decisions ({summary.sent:,} sends) in {summary.batches} batches, "
        f"{summary.seconds:.1f} s ({rate:,.0f}/s): {summary.output}"
    )
    if summary.status.get("degraded"):
        console.print(
            f"[yellow]{summary.status['degraded']} batches were answered degraded: see `sendwise serve` /readyz"
        )


@app.command()
def render(
    customer: Annotated[str | None, typer.Option(help="decide for this customer and render the email")] = None,
    decision_id: Annotated[str | None, typer.Option("--decision-id", help="render this logged decision")] = None,
    out: Annotated[Path, typer.Option(help="folder for <decision_id>.html, .txt and .json")] = Path("emails"),
    template: Annotated[str | None, typer.Option(help="layout (default: the campaign's)")] = None,
    kind: Annotated[str, typer.Option(help="campaign kind, with --customer")] = "promotional",
    topic: Annotated[str | None, typer.Option(help="campaign topic, with --customer")] = None,
) -> None:
    """Render one email as `/v1/render` does and write it to files: the HTML to open in a browser, the plain
    text, and the rest (subject, preheader, headers, modules with their reasons) as JSON."""
    import json

    from pydantic import ValidationError

    from serving.engine import Engine
    from serving.errors import ServingError
    from serving.schemas import RenderRequest

    try:
        request = RenderRequest.model_validate(
            {"decision_id": decision_id, "template": template}
            if decision_id
            else {"customer_id": customer, "template": template, "campaign": {"kind": kind, "topic": topic}}
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in error.errors())
        raise _fail(f"give --customer or --decision-id: {problems}") from error
    engine = Engine.load(_settings())
    try:
        email = engine.render(request)
    except ServingError as error:
        raise _fail(error.message) from error
    if not email.send or email.html is None:
        raise _fail(f"no email for {email.customer_id}: " + "; ".join(email.reasons))
    out.mkdir(parents=True, exist_ok=True)
    html = out / f"{email.decision_id}.html"
    html.write_text(email.html, encoding="utf-8")
    (out / f"{email.decision_id}.txt").write_text(email.text or "", encoding="utf-8")
    details = email.model_dump(mode="json", exclude={"html", "text"})
    (out / f"{email.decision_id}.json").write_text(json.dumps(details, indent=2, ensure_ascii=False) + "\n")
    console.print(f"[bold]{email.subject}[/bold]  ({email.preheader})")
    for name, value in email.headers.items():
        console.print(f"  {name}: {value}")
    for module in email.modules:
        console.print(f"  - {module.name}: {module.reason}")
    for warning in email.warnings:
        console.print(f"[yellow]  ! {warning}")
    console.print(f"{len(email.html.encode()):,} bytes of HTML: {html.resolve()}")


@app.command()
def forget(
    customer_ids: Annotated[list[str] | None, typer.Argument(help="customer ids to erase")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="a file of customer ids, one a line")] = None,
) -> None:
    """Erase customers from the home: raw store, quarantine, feature tables, online store, decision log and the
    reports naming them; a tombstone (salted hash) keeps a re-ingested export from bringing them back. A
    running service sees the new features within seconds; POST /v1/forget also clears its memory at once."""
    from serving.forget import ForgetError, forget_customers

    ids = list(customer_ids or [])
    if file is not None:
        try:
            ids += [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise _fail(f"--file {file}: cannot read it as UTF-8 text ({error})") from error
    try:
        report = forget_customers(_settings(), ids)
    except ForgetError as error:
        raise _fail(f"{error} (give ids as arguments or --file F)") from error
    removed = sum(report.rows.values())
    console.print(
        f"forgot {report.customers:,} customers ({report.new_tombstones:,} new tombstones): {removed:,} rows of "
        f"data, {report.online_rows:,} online-store rows, {report.decisions:,} logged decisions, "
        f"{len(report.reports):,} report files"
    )
    for place, count in sorted(report.rows.items()):
        console.print(f"  {place}: {count:,} rows")
    console.print("models already trained keep what they learned until the next `sendwise pipeline` retrains them")


@app.command()
def materialize() -> None:
    """Refresh the online store from new events without retraining: the events appended since the last ingest
    (POST /v1/events, sendwise push) merged into the raw store, the feature tables built again, materialized."""
    from training import jobs

    settings = _settings()
    try:
        with console.status("merging appended events, building features, materializing the online store"):
            merged, features = jobs.refresh_features(settings, progress=False)
    except jobs.JOB_ERRORS as error:
        raise _fail(str(error)) from error
    rows = ", ".join(f"{n:,} {name}" for name, n in merged.items()) or "none"
    console.print(f"appended events merged into the raw store: {rows}")
    console.print(
        f"features built as of {features.tables.as_of.isoformat()} and materialized to the online store "
        f"({features.tables.engagement_rows:,} engagement rows); the models were not retrained"
    )


@app.command()
def push(
    file: Annotated[Path, typer.Argument(help="events in the data contract: TABLE.csv, TABLE.parquet or TABLE.jsonl")],
    url: Annotated[str, typer.Option(help="the running service")] = "http://127.0.0.1:3000",
) -> None:
    """Send a file of events to a running service, as POST /v1/events takes them (token: SENDWISE_API_TOKEN):
    each chunk appended durably, then pushed to the online store, so that the next decision sees it."""
    from rich.progress import Progress

    from sendwise.push import PushError, push_file, read_events

    settings = Settings()
    try:
        total = len(read_events(file, [])[1])
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"pushing {file.name}", total=total)
            result = push_file(file, url, settings.api_token, advance=lambda n: progress.advance(task, n))
    except PushError as error:
        raise _fail(str(error)) from error
    for warning in result.warnings:
        console.print(f"[yellow]  ! {warning}", highlight=False)
    console.print(
        f"{result.table}: {result.rows:,} rows sent, {result.appended:,} appended, {result.forgotten:,} of "
        f"erased customers refused; latest values of {result.pushed:,} customers pushed to the online store"
    )
    for reason in result.degraded:
        console.print(f"[yellow]  ! {reason}", highlight=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 3000,
) -> None:
    """Serve the champions over HTTP (BentoML). Any address but loopback needs SENDWISE_API_TOKEN."""
    settings = _settings()
    if not settings.api_token and not is_loopback(host):
        console.print(
            f"[red]refusing to serve on {host} without SENDWISE_API_TOKEN[/]: every other machine that reaches "
            "it could read and change decisions. Set SENDWISE_API_TOKEN (clients send `Authorization: Bearer "
            "<token>`), or serve on 127.0.0.1.",
            highlight=False,
        )
        raise typer.Exit(code=2)
    if not settings.api_token:
        console.print("[yellow]SENDWISE_API_TOKEN is not set: the API answers this machine without authentication[/]")
    env = {**os.environ, **settings.library_environment()}
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "serving.service:Sendwise",
        "--host",
        host,
        "--port",
        str(port),
    ]
    console.print(f"serving on http://{host}:{port} (home {settings.home})")
    raise typer.Exit(subprocess.call(command, cwd=REPO_ROOT, env=env))


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP (127.0.0.0/8, ::1): only this machine can reach a server bound there."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


@app.command()
def report(
    model: Annotated[ModelOption, typer.Option(help="which model to explain")] = ModelOption.all,
) -> None:
    """Write the marketer report, an offline HTML site: what drives each champion's predictions in plain words,
    segments, send times, offers and model cards; logged to the champions' MLflow runs.

    Reads the champions, the training-set samples and the features the pipeline left in the home; builds nothing.
    """
    from training import jobs

    result = jobs.report(_settings(), MODELS[model], console=console)
    for why in result.missing.values():
        console.print(f"[yellow]no report:[/] {why}")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if result.index is None:
        raise typer.Exit(code=2)
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.seconds.items())
    console.print(f"report written in {result.total_seconds:.1f} s ({parts})", highlight=False)
    console.print(f"open {result.index}", highlight=False, soft_wrap=True)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def feast(ctx: typer.Context) -> None:
    """Run the Feast CLI on the home's Feast repository, e.g. `sendwise feast plan`, `sendwise feast ui`.

    Every argument goes to Feast (`sendwise feast --help` is Feast's help). The repository is SENDWISE_HOME/feast:
    the feature_store.yaml and definitions module the pipeline writes, and the registry and online store it
    applies and materializes.
    """
    from features.store import write_repository

    settings = _settings()
    repository = write_repository(settings)
    if not (repository / "registry.db").exists():
        console.print(f"[yellow]{repository} has no registry yet: `sendwise pipeline --data DATA_DIR` applies one[/]")
    command = [sys.executable, "-c", FEAST_MAIN, "--chdir", str(repository), *ctx.args]
    env = {**os.environ, **settings.library_environment()}
    raise typer.Exit(subprocess.call(command, cwd=repository, env=env))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ui(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="port")] = 5000,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
) -> None:
    """Open MLflow's UI on the home's runs and registry (SENDWISE_HOME/mlruns: mlflow.db and the artifacts).

    Any other option goes to `mlflow server`, e.g. `--allowed-hosts` to reach it from another machine. With
    SENDWISE_MLFLOW_TRACKING_URI set to a tracking server, the UI is that server's own: its URL is printed.
    """
    settings = _settings()
    if settings.tracking_server:
        console.print(f"MLflow's UI is the tracking server's own: {settings.tracking_uri}", highlight=False)
        return
    if settings.mlflow_tracking_uri is None and not (settings.mlruns_dir / "mlflow.db").exists():
        console.print(f"[yellow]{settings.home} has no runs yet: `sendwise pipeline --data DATA_DIR` makes some[/]")
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]MLflow's UI has no login: whoever reaches {host}:{port} can change the champions[/]")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.tracking_uri,
        *(["--default-artifact-root", settings.artifacts_uri] if settings.artifacts_uri else []),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        *ctx.args,
    ]
    # The server's job runner (GenAI jobs, several worker processes) has nothing to do for sendwise.
    env = {**os.environ, **settings.library_environment(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    console.print(f"MLflow's UI on http://{host}:{port} (the runs and registry of {settings.home}); Ctrl+C stops it")
    raise typer.Exit(subprocess.call(command, cwd=settings.home, env=env))


@app.command()
def evaluate(
    world: Annotated[
        Path | None, typer.Option("--world", help="a world written by `sendwise simulate`, run through the pipeline")
    ] = None,
    suite: Annotated[
        str | None,
        typer.Option(
            help="instead: simulate the suite's worlds (realistic: held-out rhythms at the corners and middle of "
            "the realistic ranges; classic: seeds 11 and 31), run the pipeline on each and print their targets"
        ),
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option("--work-dir", help="where a suite's or --lift's worlds and homes go (default: temporary)"),
    ] = None,
    customers: Annotated[int, typer.Option(min=10, help="customers of each suite world (and of --lift's)")] = 10_000,
    days: Annotated[int, typer.Option(min=7, help="days of each suite world (and of --lift's)")] = 90,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write every figure to this JSON file")] = None,
    lift: Annotated[
        bool,
        typer.Option(
            "--lift",
            help="instead: check `sendwise lift` against a simulated sending system whose true lift is known, over "
            "--seeds seeds (docs/lift.md)",
        ),
    ] = False,
    seeds: Annotated[int, typer.Option(min=1, help="seeds of --lift")] = 20,
) -> None:
    """Print model quality against the world's ground truth and the market's baselines, and the targets; with
    --lift, how often `sendwise lift`'s intervals hold the true lift of a simulated sending system.

    Send-time rows are efficiencies (true open probability at the chosen hours / at everyone's best hours),
    unconstrained and under a 10% per-hour cap (a cap is a share of one decide call's batch); the decide-time
    rows are wall-clock seconds of the same calls.
    """
    import json

    from training.evaluate import evaluate as run

    if (world is not None) + (suite is not None) + lift != 1:
        raise _fail(
            "give one of --world WORLD_DIR (a world the home's pipeline ran on), --suite realistic|classic or --lift"
        )
    if lift:
        _evaluate_lift(seeds, work_dir, customers, days, json_path)
        return
    if suite is not None:
        _evaluate_suite(suite, work_dir, customers, days, json_path)
        return
    if world is None:  # unreachable after the check above; says so to the type checker without an assert
        raise _fail("give --world WORLD_DIR")
    if not (world / "truth").is_dir():
        raise _fail(f"{world} has no truth/ folder: evaluate needs a world written by `sendwise simulate`")
    result = run(_settings(), world)
    if json_path is not None:
        json_path.write_text(json.dumps(result.as_dict(), indent=2, default=float))
    table = Table(
        title=f"{result.customers} customers, window from {result.window_start} (24 h)",
        caption="efficiency = true open probability at the chosen hours / at each customer's best hour; "
        "a per-hour cap is a share of one decide call (up to 10,000 recipients)",
    )
    for column in ("question", "policy / measure", "value"):
        table.add_column(column)
    for row in result.rows():
        table.add_row(*row)
    console.print(table)
    kind = "a realistic world" if result.realistic else "a classic world"
    bars = Table(title=f"targets of {kind}")
    for column in ("target", "value", "bar", "result"):
        bars.add_column(column)
    for target in result.target_rows():
        bars.add_row(*target)
    console.print(bars)
    if result.reliability_plot is not None:
        console.print(f"reliability curve: {result.reliability_plot}")


def _evaluate_lift(seeds: int, work_dir: Path | None, customers: int, days: int, json_path: Path | None) -> None:
    import json
    import tempfile

    from training.evaluate_lift import CHECKED, LiftEvaluation, evaluate_lift

    _settings()  # the libraries' environment; the world and every seed get homes of their own
    with tempfile.TemporaryDirectory(prefix="sendwise-lift-") as temporary:
        root = work_dir if work_dir is not None else Path(temporary)
        root.mkdir(parents=True, exist_ok=True)
        evaluation: LiftEvaluation = evaluate_lift(
            root, seeds=seeds, customers=customers, days=days, progress=lambda what: console.print(what)
        )
    table = Table(title=f"lift against the truth: {seeds} seeds of {evaluation.results[0].decisions:,} decisions")
    table.add_column("seed", justify="right")
    for comparison, metric in CHECKED:
        table.add_column(f"{comparison}\non {metric}: lift [95%] (true)")
    for result in evaluation.results:
        cells = []
        for comparison, metric in CHECKED:
            check = result.check(comparison, metric)
            cells.append(_lift_cell(check.comparison, check.truth, check.covered))
        table.add_row(str(result.seed), *cells)
    console.print(table)
    summary = Table(title="coverage (bar: the interval holds the truth and excludes 0 in at least 17 of 20 seeds)")
    for column in ("comparison", "metric", "true lift", "holds the truth", "excludes 0", "mean half-width"):
        summary.add_column(column)
    for row in evaluation.summary():
        summary.add_row(
            str(row["comparison"]),
            str(row["metric"]),
            f"{row['true_lift_min']:+.1%} to {row['true_lift_max']:+.1%}",
            f"{row['covered']} of {row['seeds']}",
            f"{row['excludes_zero']} of {row['seeds']}",
            f"{row['mean_half_width']:.1%}",
        )
    console.print(summary)
    if json_path is not None:
        json_path.write_text(json.dumps(evaluation.as_dict(), indent=2, default=str))


def _lift_cell(comparison: Comparison, truth: float | None = None, covered: bool | None = None) -> str:
    """`+41.0% [+22.1%, +62.9%]`, with the truth where one is known, or why the figure is not measurable."""
    if not comparison.measurable or comparison.lift is None or comparison.low is None or comparison.high is None:
        return f"not measurable: {comparison.why}"
    cell = f"{comparison.lift:+.1%} [{comparison.low:+.1%}, {comparison.high:+.1%}]"
    if truth is not None:
        cell += f" (true {truth:+.1%}{'' if covered else ', MISSED'})"
    return cell


def _evaluate_suite(name: str, work_dir: Path | None, customers: int, days: int, json_path: Path | None) -> None:
    import json
    import tempfile

    from training.evaluate import SuiteError, run_suite

    _settings()  # the libraries' environment; every world gets a home of its own
    with tempfile.TemporaryDirectory(prefix="sendwise-suite-") as temporary:
        root = work_dir if work_dir is not None else Path(temporary)
        try:
            results = run_suite(name, root, customers, days, progress=lambda what: console.print(f"world: {what}"))
        except SuiteError as error:
            raise _fail(str(error)) from error
    names = [t["name"] for t in results[0].targets]
    table = Table(title=f"targets of the {name} suite ({customers:,} customers × {days} days each)")
    table.add_column("world (sendwise simulate flags)")
    for target, bar in zip(names, (t["bar"] for t in results[0].targets), strict=True):
        table.add_column(f"{target} ({bar})", justify="right")
    for result in results:
        cells = [f"{t['value']:.3f}" + ("" if t["met"] else " MISSED") for t in result.targets]
        table.add_row(f"{result.scenario.name}\n{result.scenario.flags()}", *cells)
    console.print(table)
    missed = sum(not r.met for r in results)
    console.print(f"{len(results) - missed} of {len(results)} worlds meet every target")
    if json_path is not None:
        figures = [
            {"world": r.scenario.name, "flags": r.scenario.flags(), **r.evaluation, "seconds": r.seconds}
            for r in results
        ]
        json_path.write_text(json.dumps(figures, indent=2, default=float))


LIFT_FORMATS = {"opens": "{:.1%}", "clicks": "{:.2%}", "conversions": "{:.3f}", "site sessions": "{:.3f}"}
LIFT_FORMATS |= {"purchases": "{:.3f}", "revenue": "{:,.2f}"}
"""How a figure per decision reads: opens and clicks are shares of sends, the rest counts (or money) per decision."""
LIFT_CAPTIONS = {
    "send time: chosen hours vs exploration hours": "per send, at sendwise's hours and at a random allowed hour "
    "(inverse propensity); decisions: sends measured (at an exploration hour)",
    "sent vs holdout": "per decision, not held out and held out, in the conversion window from the decision's window "
    "start; decisions: all measured (held out)",
}


@app.command()
def lift(
    since: Annotated[
        str | None, typer.Option(help="only decisions from this date or time on (UTC unless it names a zone)")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write every figure to this JSON file")] = None,
) -> None:
    """Measure realized lift per campaign from the decision log and the events that came back: sendwise's send
    hours against random exploration hours (by inverse propensity), and sent against the holdout, with 95%
    intervals (docs/lift.md)."""
    import json

    from training.lift import measure_lift, parse_since

    try:
        parse_since(since)
    except ValueError as error:
        raise _fail(str(error)) from error
    settings = _settings()
    report = measure_lift(settings, since, progress=True)
    for note in report.notes:
        console.print(f"[yellow]{note}[/]")
    if report.first is not None and report.as_of is not None:
        console.print(
            f"{report.decisions:,} decisions from {report.first:%Y-%m-%d %H:%M} to {report.last:%Y-%m-%d %H:%M} UTC; "
            f"windows closed by the data's end, {report.as_of:%Y-%m-%d %H:%M} UTC"
        )
    for campaign in report.campaigns():
        console.print(f"[bold]campaign {campaign}[/]")
        for comparison in dict.fromkeys(c.comparison for c in report.comparisons if c.campaign_id == campaign):
            rows = [c for c in report.comparisons if (c.campaign_id, c.comparison) == (campaign, comparison)]
            whys = {c.why for c in rows}
            if not any(c.measurable for c in rows) and len(whys) == 1:
                console.print(f"  {comparison}: not measurable: {whys.pop()}")
                continue
            table = Table(title=f"{comparison}", title_justify="left", caption=LIFT_CAPTIONS.get(comparison))
            for column in ("metric", "sendwise", "baseline", "lift", "95% interval", "decisions"):
                table.add_column(column, justify="left" if column == "metric" else "right")
            for c in rows:
                shape = LIFT_FORMATS.get(c.metric, "{:.3f}")
                measured = c.measurable and c.low is not None and c.high is not None and c.lift is not None
                table.add_row(
                    c.metric,
                    "-" if c.treated is None else shape.format(c.treated),
                    "-" if c.baseline is None else shape.format(c.baseline),
                    f"{c.lift:+.1%}" if measured and c.lift is not None else "-",
                    f"[{c.low:+.1%}, {c.high:+.1%}]" if measured else f"not measurable: {c.why}",
                    f"{c.decisions:,} ({c.baseline_decisions:,})" if measured else f"{c.decisions:,}",
                )
            console.print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(report.as_dict(), indent=2, default=str))
        console.print(f"figures written to {json_path}")


@app.command()
def realdata(
    hillstrom: Annotated[
        Path | None, typer.Option("--hillstrom", help="the Hillstrom CSV (docs/real-data.md says where to get it)")
    ] = None,
    starbucks: Annotated[
        Path | None,
        typer.Option("--starbucks", help="the Starbucks folder: portfolio, profile, transcript (docs/real-data.md)"),
    ] = None,
    only: Annotated[str | None, typer.Option("--only", help="run one dataset: hillstrom or starbucks")] = None,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="where the contract files and homes go (default: temporary)")
    ] = None,
    seed: Annotated[int, typer.Option(help="the split's (and the models') seed")] = 42,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write every figure to this JSON file")] = None,
    plain_customers: Annotated[
        int | None,
        typer.Option(
            "--plain-customers",
            min=100,
            help="Hillstrom as a plain export on a seeded sample of this many customers [default: all 64,000]",
        ),
    ] = None,
) -> None:
    """Real data through the real pipeline: Hillstrom and Starbucks policies, evaluated off-policy with 95% CIs.

    Hillstrom also runs as a plain export: half of it through `sendwise pipeline --as-of`, the other half
    decided through /v1/decide's engine as customers the home does not know.
    """
    import json
    import tempfile

    from training.realdata.hillstrom import hillstrom_report, hillstrom_tables
    from training.realdata.plain_export import plain_export_report, plain_export_tables
    from training.realdata.starbucks import starbucks_report, starbucks_tables

    if only not in (None, "hillstrom", "starbucks"):
        raise _fail(f"--only must be hillstrom or starbucks, not {only!r}")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    wanted: dict[str, Path] = {}
    for name, path in (("hillstrom", hillstrom), ("starbucks", starbucks)):
        if only not in (None, name):
            continue
        if path is None:
            raise _fail(f"pass --{name} PATH (docs/real-data.md says where to get it), or --only the other dataset")
        if not path.exists():
            raise _fail(f"{path} does not exist: pass --{name} PATH (the {name} data is read, never copied)")
        wanted[name] = path
    reports: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sendwise-realdata-") as temporary:
        root = work_dir if work_dir is not None else Path(temporary)
        if "hillstrom" in wanted:
            reports["hillstrom"] = hillstrom_report(wanted["hillstrom"], root, seed=seed)
            for table in hillstrom_tables(reports["hillstrom"]):
                console.print(table)
            plain = plain_export_report(wanted["hillstrom"], root, seed=seed, customers=plain_customers)
            reports["hillstrom"]["plain_export"] = plain
            for table in plain_export_tables(plain):
                console.print(table)
        if "starbucks" in wanted:
            reports["starbucks"] = starbucks_report(wanted["starbucks"], root, seed=seed)
            for table in starbucks_tables(reports["starbucks"]):
                console.print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(reports, indent=2, default=str))
        console.print(f"figures written to {json_path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
