"""Benchmarks 1 and 2: full decisions per second in process, and the floor the trees themselves set.

1. `Engine.decide_json` (what `/v1/decide` runs, without HTTP: the answer built and encoded) on requests of 1,
   100 and 10,000 recipients drawn at random from the customers that may be emailed: a promotional campaign
   with a topic, a 24-hour window from where the world's data ends, every eligible offer ranked (`k_offers` at
   the API's most) and the modules chosen. The request is built before the clock starts; everything
   `decide_json` does (online features, scoring, assignment, offers, modules, reasons, the decision log, the
   JSON) is timed. Each size's median call is reported.
2. The floor: one LightGBM `predict` per champion over the rows a plain design needs for the largest batch,
   24 send hours and every eligible offer per recipient, from real online feature rows. Only `predict` is
   timed, on the matrices LightGBM itself would convert the design frames to, so the floor is the trees' cost
   and nothing else. The ratio of (1) to (2) is what the rest of the service costs on top of the trees; a
   design that scores fewer rows (precomputed hourly curves, say) can go below 1.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime

import lightgbm as lgb
import numpy as np
import orjson
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.plan import Plan
from bench.report import Row, Target, rate, seconds
from bench.world import BenchHome, clear_decision_log, eligible_offers
from features.store import open_store
from features.transform import OfferMatrix, customer_matrix, offer_design, open_design
from sendwise.raw import load_table
from sendwise.registry import MODEL_NAMES, champion, connect
from sendwise.settings import Settings
from serving.schemas import MAX_RECIPIENTS, Campaign, DecideRequest, Recipient

SECTION = "1-2 in process"
WINDOW_HOURS = 24
TOPIC = "outdoor"
K_OFFERS = 50
"""The API's most: larger than any catalog here, so every eligible offer is ranked in every decision."""
WARM_UP = 100
TARGET_RATE = Target("at least", 20_000, "≥ 20,000/s")
TARGET_OVERHEAD = Target("at most", 1.5, "≤ 1.5×")
BULK_RUNS = 3
"""Times the bulk path decides its file (the median is reported)."""
ONLINE_CHUNK = 1000


def progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def decide_request(ids: list[str], window_start: datetime) -> DecideRequest:
    """The request every in-process and HTTP benchmark sends: a full decision for each of `ids`."""
    return DecideRequest(
        recipients=[Recipient(customer_id=c) for c in ids],
        campaign=Campaign(kind="promotional", topic=TOPIC),
        window_start=window_start,
        window_hours=WINDOW_HOURS,
        k_offers=K_OFFERS,
    )


@dataclass(frozen=True)
class BatchTiming:
    """The timed calls of one batch size, with what their answers held."""

    size: int
    seconds: list[float]
    offers_ranked: int
    sent_share: float

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.size / self.median_s


def time_decide(home: BenchHome, plan: Plan, console: Console) -> list[BatchTiming]:
    """Median `Engine.decide_json` time per batch size, on recipients drawn afresh for every call."""
    from serving.engine import Engine

    settings = home.settings
    settings.activate()
    clear_decision_log(settings)
    with console.status("loading the engine (champions, Feast, send history)"):
        engine = Engine.load(settings)
    rng = np.random.default_rng(plan.seed)
    pool = np.array(home.recipients)
    if max(plan.batch_sizes) > min(len(pool), MAX_RECIPIENTS):
        raise RuntimeError(
            f"a batch of {max(plan.batch_sizes):,} needs as many emailable customers (the home has {len(pool):,}) "
            f"and the API takes at most {MAX_RECIPIENTS:,}"
        )

    def draw(n: int) -> DecideRequest:
        return decide_request(rng.choice(pool, size=n, replace=False).tolist(), home.window_start)

    engine.decide_json(draw(WARM_UP))  # the first call opens files and fills caches: not timed
    timings = []
    with progress(console) as bar:
        for size in plan.batch_sizes:
            task = bar.add_task(f"decide, batch of {size:,}", total=plan.repeats_for(size))
            spent, offers, sent, total = [], 0, 0, 0
            for _ in range(plan.repeats_for(size)):
                request = draw(size)
                began = time.perf_counter()
                encoded = engine.decide_json(request)
                spent.append(time.perf_counter() - began)
                decisions = orjson.loads(encoded)["decisions"]
                if len(decisions) != size:
                    raise RuntimeError(f"decide answered {len(decisions)} decisions for {size} recipients")
                offers = max([offers, *(len(d["offers"]) for d in decisions if d["send"])])
                sent += sum(d["send"] for d in decisions)
                total += size
                bar.advance(task)
            timings.append(BatchTiming(size, spent, offers, sent / total))
    clear_decision_log(settings)
    return timings


@dataclass(frozen=True)
class Floor:
    """The floor's predict times per champion (medians) and the rows they scored."""

    recipients: int
    offers: int
    open_rows: int
    offer_rows: int
    open_s: float
    offer_s: float
    open_model: str
    offer_model: str

    @property
    def seconds(self) -> float:
        return self.open_s + self.offer_s


def _eligible_offer_ids(settings: Settings, at: datetime) -> list[str]:
    offers = load_table(settings, "offers")
    if offers is None or offers.empty:
        return []
    return offers.loc[eligible_offers(offers, at), "offer_id"].astype(str).tolist()


def _plain_designs(settings: Settings, ids: list[str], at: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(open design: a row per recipient and hour, offer design: a row per recipient and eligible offer).

    Built the plain way, from the online store through the feature service and the shared transforms, so the
    rows are what the trees would see for these customers whatever the engine does instead.
    """
    store = open_store(settings)
    service = store.get_feature_service("send_time_v1")
    parts = []
    for start in range(0, len(ids), ONLINE_CHUNK):
        entity_rows = [{"customer_id": c} for c in ids[start : start + ONLINE_CHUNK]]
        parts.append(pd.DataFrame(store.get_online_features(features=service, entity_rows=entity_rows).to_dict()))
    matrix = customer_matrix(pd.concat(parts, ignore_index=True))
    n = len(ids)
    rows = np.repeat(np.arange(n), WINDOW_HOURS)
    hours = pd.date_range(at, periods=WINDOW_HOURS, freq="h", tz=UTC).tz_convert(None).to_numpy()
    times = pd.Series(np.tile(hours, n)).dt.tz_localize("UTC")
    kinds, topics = np.full(len(rows), "promotional"), np.full(len(rows), TOPIC, dtype=object)
    opens = open_design(matrix, rows, times, kinds, topics)
    offer_ids = _eligible_offer_ids(settings, at)
    offer_view = store.get_feature_view("offer_fv")
    features = store.get_online_features(
        features=[f"offer_fv:{f.name}" for f in offer_view.features],
        entity_rows=[{"offer_id": o} for o in offer_ids],
    ).to_df()
    offers = OfferMatrix.from_rows(features)
    m = len(offers)
    return opens, offer_design(matrix, np.repeat(np.arange(n), m), offers, np.tile(np.arange(m), n))


def _as_lightgbm_matrix(booster: lgb.Booster, design: pd.DataFrame) -> np.ndarray:
    """The design as LightGBM converts a frame before predicting (categories coded as at training)."""
    frame = design[booster.feature_name()]
    matrix, *_ = lgb.basic._data_from_pandas(frame, "auto", "auto", booster.pandas_categorical)
    check = slice(0, min(len(frame), 1000))
    if not np.allclose(booster.predict(matrix[check]), booster.predict(frame.iloc[check]), equal_nan=True):
        raise RuntimeError("the converted design predicts differently from the frame: LightGBM changed its conversion")
    return matrix


def _median_predict_s(booster: lgb.Booster, matrix: np.ndarray, repeats: int) -> float:
    spent = []
    for _ in range(repeats):
        began = time.perf_counter()
        booster.predict(matrix)
        spent.append(time.perf_counter() - began)
    return statistics.median(spent)


def time_floor(home: BenchHome, plan: Plan, console: Console) -> Floor:
    """The median time of one predict per champion over the plain design of `plan.floor_recipients`."""
    settings = home.settings
    client = connect(settings)
    found = {name: champion(client, name) for name in MODEL_NAMES}
    curve_name = "send_time" if found["send_time"] is not None else "open_propensity"
    curves, offers = found[curve_name], found["next_best_offer"]
    if curves is None or offers is None:
        raise RuntimeError(f"the home {settings.home} has no send-time/open or next-best-offer champion")
    ids = np.random.default_rng(plan.seed + 1).choice(home.recipients, plan.floor_recipients, replace=False).tolist()
    with (
        console.status(f"building the plain design of {len(ids):,} recipients for the floor"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", DeprecationWarning)
        open_frame, offer_frame = _plain_designs(settings, ids, home.window_start)
        open_matrix = _as_lightgbm_matrix(curves[1], open_frame)
        offer_matrix = _as_lightgbm_matrix(offers[1], offer_frame)
    with console.status(f"timing the floor ({plan.floor_repeats} predicts per model)"):
        open_s = _median_predict_s(curves[1], open_matrix, plan.floor_repeats)
        offer_s = _median_predict_s(offers[1], offer_matrix, plan.floor_repeats)
    return Floor(
        recipients=len(ids),
        offers=len(offer_frame) // len(ids),
        open_rows=len(open_matrix),
        offer_rows=len(offer_matrix),
        open_s=open_s,
        offer_s=offer_s,
        open_model=f"{curve_name} v{curves[0]} ({curves[1].num_trees()} trees)",
        offer_model=f"next_best_offer v{offers[0]} ({offers[1].num_trees()} trees)",
    )


def rows(timings: list[BatchTiming], floor: Floor | None) -> list[Row]:
    """Benchmark 1 per batch size (the target applies to the batch sizes of a campaign), then the floor."""
    out = []
    largest = max(timings, key=lambda t: t.size)
    for timing in timings:
        out.append(
            Row(
                SECTION,
                f"decisions/s, batch of {timing.size:,}",
                timing.rate,
                rate(timing.rate),
                TARGET_RATE if timing is largest else None,
                f"median of {len(timing.seconds)} Engine.decide_json calls: {seconds(timing.median_s)} per call; "
                f"{timing.offers_ranked} offers ranked; {timing.sent_share:.0%} sent",
            )
        )
    if floor is None:
        return out
    per_recipient = floor.seconds / floor.recipients
    out.append(
        Row(
            SECTION,
            f"model floor, {floor.recipients:,} recipients",
            floor.seconds,
            seconds(floor.seconds),
            note=f"{floor.open_rows:,} rows ({WINDOW_HOURS} h) {seconds(floor.open_s)} on {floor.open_model}; "
            f"{floor.offer_rows:,} rows ({floor.offers} offers) {seconds(floor.offer_s)} on {floor.offer_model}; "
            f"= {rate(1 / per_recipient)} decisions at best",
        )
    )
    if largest.size == floor.recipients:
        ratio = (largest.median_s / largest.size) / per_recipient
        out.append(
            Row(
                SECTION,
                "overhead: decide / floor, per recipient",
                ratio,
                f"{ratio:,.1f}×",
                TARGET_OVERHEAD,
                f"{seconds(largest.median_s / largest.size)} per decision (batch of {largest.size:,}) vs "
                f"{seconds(per_recipient)} of predict",
            )
        )
    return out


def time_bulk(home: BenchHome, plan: Plan, console: Console) -> Row:
    """The bulk path (`sendwise decide`): every emailable customer of the home, from a file to a file."""
    import tempfile
    from pathlib import Path

    from serving.bulk import decide_file
    from serving.engine import Engine

    settings = home.settings
    settings.activate()
    clear_decision_log(settings)
    engine = Engine.load(settings)
    count = min(len(home.recipients), plan.bulk_recipients)
    with tempfile.TemporaryDirectory() as directory:
        source, out = Path(directory) / "campaign.csv", Path(directory) / "decisions.jsonl"
        pd.DataFrame({"customer_id": home.recipients[:count]}).to_csv(source, index=False)
        template = decide_request(home.recipients[:1], home.window_start)
        spent = []
        with progress(console) as bar:
            task = bar.add_task(f"sendwise decide, {count:,} recipients", total=count * BULK_RUNS)
            for _ in range(BULK_RUNS):
                began = time.perf_counter()  # reading the file included: what the job costs
                summary = decide_file(engine, source, out, template, progress=lambda k: bar.advance(task, k))
                spent.append(time.perf_counter() - began)
                written = out.stat().st_size
                out.unlink()  # the next run writes a new file, as a campaign's job does
                clear_decision_log(settings)
    median = statistics.median(spent)
    per_second = summary.recipients / median
    return Row(
        SECTION,
        f"bulk path, {summary.recipients:,} recipients file to file",
        per_second,
        rate(per_second),
        TARGET_RATE,
        f"`sendwise decide`, median of {BULK_RUNS} runs: read and check the CSV, {summary.batches} batches of "
        f"decide, {written / 1e6:,.0f} MB of JSON lines written, in {seconds(median)}",
    )


def run(home: BenchHome, plan: Plan, console: Console) -> list[Row]:
    timings = time_decide(home, plan, console)
    out = rows(timings, time_floor(home, plan, console))
    return [*out, time_bulk(home, plan, console)]
