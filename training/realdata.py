"""Real data through the real pipeline: the Hillstrom email experiment and the Starbucks offer data.

Each report writes its dataset in the data contract (`sendwise.adapters`), ingests it with the real ingest,
builds the real feature tables, registers them with Feast and takes the offer model's training set through
the `next_best_offer_v1` FeatureService (`offer_training_set`), exactly as `sendwise train` does. Then, on a
random half of the customers, it fits the offer model with `fit_binary`; on the other half it scores every
offer for every logged decision (Feast rows at the decision time, `customer_matrix` and `offer_design`, as the
engine does) and evaluates policies off-policy from the logged propensities (`training.offpolicy`).

What the pipeline cannot express is trained here, on the same design matrices, and said so:
- Hillstrom has two outcomes, visit (the contract's conversion) and spend (its value). Expected spend is the
  offer model's visit probability × the arm's mean spend per visit on the training half: the engine's expected
  value (probability × margin, the contract's margin rule). Spend itself has about 290 purchases in a training
  half, too few for a model of its own; the visit model is the one learned.
- Starbucks' views (`clicked`) have no model in the pipeline; the view model is `fit_binary` on the same design
  with the view as label.
- Hillstrom's exposures all share one send time, so the pipeline's split by time (for early stopping) cannot
  apply; a seeded random 20% of the training half is held out instead.

Policies rank offers as the engine does: by expected value (probability × margin), over
the control arm's where the data has one, so the control arm ("send nothing") wins when nothing adds value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from feast import FeatureStore
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sklearn.model_selection import train_test_split

from features.build import FeatureTables, build_feature_tables
from features.store import apply_definitions, open_store
from features.transform import OfferMatrix, customer_matrix, offer_design
from sendwise.adapters import hillstrom, starbucks
from sendwise.ingest import IngestReport, ingest
from sendwise.raw import load_table
from sendwise.settings import Settings
from training import offpolicy
from training.datasets import VALID_SHARE, TrainingSet, closed_exposures, historical_features, offer_training_set
from training.models import auc, fit_binary

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
HILLSTROM_CSV = DATASETS / "hillstrom" / "hillstrom.csv"
STARBUCKS_DIR = DATASETS / "starbucks"
FEATURE_SERVICE = "next_best_offer_v1"
# As training.train.train_offer, on one thread: on a shared two-core machine, LightGBM's OpenMP threads spin
# while the other core is busy, and two threads ran 60 times slower than one (measured: 0.35 s vs 6 ms a round).
THREADS = 1
OFFER_MODEL_PARAMS: dict[str, object] = {"min_data_in_leaf": 50, "num_threads": THREADS}
# Published figures the Hillstrom results stand beside (shared/datasets/README.md).
MENS_VISIT_RATE = 0.1828
PUBLISHED_UPLIFT_AT_30 = 0.0661
UPLIFT_SHARE = 0.3
LEVEL = 0.95


class RealDataError(RuntimeError):
    """The dataset cannot give the report (missing file, or the pipeline built no offer training set)."""


# --- the pipeline, as `sendwise ingest` + `sendwise train` run it -------------------------------------------
@dataclass
class PipelineRun:
    """A dataset ingested, its features built and registered, and the offer model's training set."""

    settings: Settings
    tables: FeatureTables
    store: FeatureStore
    data: TrainingSet
    exposures: pd.DataFrame  # the rows of `data`, in order: customer_id, offer_id, exposed_at, propensity, ...
    offers: pd.DataFrame  # the raw offers table, in action order
    ingest_report: IngestReport


class _RandomSplit(TrainingSet):
    """A training set whose held-out rows are a seeded random share (all rows share one time)."""

    def __init__(self, base: TrainingSet, valid_mask: np.ndarray) -> None:
        super().__init__(**{f.name: getattr(base, f.name) for f in fields(base)})
        self.valid_mask = valid_mask

    @property
    def train(self) -> np.ndarray:
        return ~self.valid_mask

    @property
    def valid(self) -> np.ndarray:
        return self.valid_mask


def run_pipeline(data_dir: Path, home: Path, as_of: pd.Timestamp | None = None, **settings: Any) -> PipelineRun:
    """Ingest `data_dir` into `home`, build and register the features, and take the offer training set."""
    settings_ = Settings(home=home, **settings)
    report = ingest(data_dir, settings_, progress=False)
    tables = build_feature_tables(settings_, as_of=as_of, progress=False)
    store = open_store(settings_)
    apply_definitions(store, settings_)
    found = offer_training_set(store, tables, settings_.conversion_window_days)
    if found is None:
        raise RealDataError(f"{data_dir}: the pipeline built no offer training set (too few closed exposures)")
    data, _ = found
    exposures = closed_exposures(tables, settings_.conversion_window_days)
    aligned = len(exposures) == len(data.label) and (
        (exposures["exposed_at"].to_numpy() == data.times.to_numpy()).all()
        and (exposures["converted"].to_numpy(dtype=np.float32) == data.label).all()
    )
    if not aligned:
        raise RealDataError("the exposures do not line up with the offer training set's rows")
    offers = tables.offers.sort_values("offer_id").reset_index(drop=True)
    return PipelineRun(settings_, tables, store, data, exposures, offers, report)


def ingest_facts(report: IngestReport) -> dict[str, Any]:
    """Rows read, accepted and quarantined per table, and where the customers' time zones came from."""
    return {
        "tables": {
            name: {"read": t.rows_read, "accepted": t.accepted, "quarantined": t.quarantined}
            for name, t in report.tables.items()
        },
        "timezones": report.timezones.model_dump(),
        "warnings": list(report.warnings),
    }


def subset(data: TrainingSet, rows: np.ndarray, seed: int, label: np.ndarray | None = None) -> TrainingSet:
    """The training set restricted to `rows` (optionally with another label), held-out part included.

    Where the rows span several times, the last `VALID_SHARE` by time is held out, as in the pipeline; where
    they all share one time, a seeded random `VALID_SHARE` is.
    """
    times = data.times.iloc[rows].reset_index(drop=True)
    base = TrainingSet(
        design=data.design.iloc[rows].reset_index(drop=True),
        label=(data.label if label is None else np.asarray(label, dtype=np.float32))[rows],
        times=times,
        cut=times.quantile(1 - VALID_SHARE),
        feature_service=data.feature_service,
        weight=None if data.weight is None else data.weight[rows],
    )
    if times.nunique() > 1 and base.train.any() and base.valid.any():
        return base
    valid = np.random.default_rng(seed).random(len(rows)) < VALID_SHARE
    return _RandomSplit(base, valid)


def score_offers(
    run: PipelineRun, units: pd.DataFrame, boosters: dict[str, lgb.Booster]
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Each booster's prediction for every (unit, offer): [units, offers] matrices, offers in `run.offers` order.

    `units` has `customer_id`, `offer_id` (the logged one) and `event_timestamp`; the customer's features come
    from Feast at that time, the offers' from Feast at the end of the data, and `offer_design` pairs them, as
    the engine does when it serves. Also returns the logged pairs' design rows, for checks.
    """
    rows = historical_features(run.store, FEATURE_SERVICE, units[["customer_id", "offer_id", "event_timestamp"]])
    matrix = customer_matrix(rows)
    offer_ids = run.offers["offer_id"].to_numpy()
    offer_rows = historical_features(
        run.store,
        FEATURE_SERVICE,
        pd.DataFrame(
            {
                "customer_id": units["customer_id"].iloc[0],
                "offer_id": offer_ids,
                "event_timestamp": run.tables.as_of,
            }
        ),
    )
    offers = OfferMatrix.from_rows(offer_rows)
    n, k = len(matrix), len(offers)
    design = offer_design(matrix, np.repeat(np.arange(n), k), offers, np.tile(np.arange(k), n))
    scores = {
        name: np.asarray(booster.predict(design[booster.feature_name()], num_threads=THREADS)).reshape(n, k)
        for name, booster in boosters.items()
    }
    logged = pd.Series(units["offer_id"].to_numpy()).map({o: j for j, o in enumerate(offer_ids)}).to_numpy()
    return scores, design.iloc[np.arange(n) * k + logged].reset_index(drop=True)


def _served_vs_trained(booster: lgb.Booster, data: TrainingSet, rows: np.ndarray, served: pd.DataFrame) -> float:
    """Largest gap between predictions from the training set's design and from the serving path's, same pairs."""
    columns = booster.feature_name()
    trained = np.asarray(booster.predict(data.design.iloc[rows][columns], num_threads=THREADS))
    return float(np.max(np.abs(trained - np.asarray(booster.predict(served[columns], num_threads=THREADS)))))


def rank_offers(value: np.ndarray, control: int | None) -> np.ndarray:
    """The engine's choice per unit: the offer of highest value over the control arm's (where there is one).

    Subtracting the control's value changes no argmax, but it is the rule: the control itself is among the
    candidates, so it wins where no offer adds value (ties go to the control).
    """
    if control is None:
        return value.argmax(axis=1)
    incremental = value - value[:, [control]]
    best = incremental.argmax(axis=1)
    return np.where(incremental[np.arange(len(best)), best] > 0, best, control)


# --- reporting helpers --------------------------------------------------------------------------------------
@contextmanager
def _steps(title: str, total: int, enabled: bool) -> Iterator[Any]:
    """A progress bar over the named steps of a report."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    )
    with progress:
        task = progress.add_task(title, total=total)
        calls = 0

        def step(description: str) -> None:
            nonlocal calls
            progress.update(task, description=f"{title}: {description}", completed=calls)
            calls += 1

        yield step
        progress.update(task, completed=total)


def _estimates(values: dict[str, offpolicy.PolicyValue]) -> dict[str, dict[str, Any]]:
    return {name: value.as_dict() for name, value in values.items()}


def _shares(choice: np.ndarray, offer_ids: np.ndarray) -> dict[str, float]:
    counts = np.bincount(choice, minlength=len(offer_ids)) / max(len(choice), 1)
    return {str(o): float(c) for o, c in zip(offer_ids, counts, strict=True)}


def _uniform(n: int, k: int) -> np.ndarray:
    return np.full((n, k), 1.0 / k)


def uplift_at_k(
    outcome: np.ndarray, treated: np.ndarray, uplift: np.ndarray, share: float = UPLIFT_SHARE, level: float = LEVEL
) -> dict[str, float]:
    """Treated minus control outcome rate among the `share` of units ranked highest by predicted uplift.

    The interval is the normal one for a difference of two independent means, given the ranking.
    """
    n_top = int(len(uplift) * share)
    top = np.argsort(-uplift, kind="stable")[:n_top]
    y, t = outcome[top].astype(float), treated[top].astype(bool)
    treated_rate, control_rate = float(y[t].mean()), float(y[~t].mean())
    value = treated_rate - control_rate
    se = float(np.sqrt(y[t].var(ddof=1) / t.sum() + y[~t].var(ddof=1) / (~t).sum()))
    z = offpolicy.z_score(level)
    return {
        "value": value,
        "low": value - z * se,
        "high": value + z * se,
        "std_error": se,
        "treated_rate": treated_rate,
        "control_rate": control_rate,
        "n_top": n_top,
        "n_treated_top": int(t.sum()),
        "n_control_top": int((~t).sum()),
        "overall_uplift": float(outcome[treated.astype(bool)].mean() - outcome[~treated.astype(bool)].mean()),
    }


# --- Hillstrom ----------------------------------------------------------------------------------------------
HILLSTROM_POLICIES = {
    "learned_visits": "sendwise, most visits",
    "learned_spend": "sendwise, most spend",
    "mens_to_all": "Mens to everyone",
    "womens_to_all": "Womens to everyone",
    "no_email": "No E-Mail to anyone",
    "random": "random arm",
}


def hillstrom_report(csv: Path, work_dir: Path, seed: int = 42, progress: bool = True) -> dict[str, Any]:
    """The offer model learned on a random half of Hillstrom, its policies evaluated on the other half.

    Returns the policies' visit rate and spend per customer by IPS, SNIPS and DR with 95% intervals, their
    paired differences from sending `Mens E-Mail` to everyone, and uplift@30% of `Womens E-Mail` over
    `No E-Mail` for visits beside the published 0.0661.
    """
    csv = Path(csv)
    if not csv.exists():
        raise RealDataError(f"{csv} does not exist: the Hillstrom CSV is expected there (shared/datasets)")
    work_dir = Path(work_dir)
    started = time.perf_counter()
    with _steps("Hillstrom", 5, progress) as step:
        step("writing the data contract")
        written = hillstrom.to_contract(csv, work_dir / "hillstrom" / "data", seed=seed)
        step("ingest, features, Feast training set")
        as_of = hillstrom.SEND_TIME + pd.Timedelta(days=hillstrom.OUTCOME_DAYS)
        run = run_pipeline(work_dir / "hillstrom" / "data", work_dir / "hillstrom" / "home", as_of=as_of, seed=seed)
        exposures = run.exposures
        visit = exposures["converted"].to_numpy(dtype=float)
        spend = exposures["value"].fillna(0.0).to_numpy(dtype=float)
        strata = exposures["offer_id"].astype(str) + "/" + exposures["converted"].astype(int).astype(str)
        train_rows, test_rows = train_test_split(
            np.arange(len(exposures)), test_size=0.5, random_state=seed, stratify=strata
        )
        train_rows, test_rows = np.sort(train_rows), np.sort(test_rows)

        step("fitting the offer (visit) model on the training half")
        visit_model = fit_binary(subset(run.data, train_rows, seed), seed=seed, params=OFFER_MODEL_PARAMS)
        per_visit = spend_per_visit(exposures.iloc[train_rows], run.offers["offer_id"])

        step("scoring every arm for the held-out half")
        test = exposures.iloc[test_rows].reset_index(drop=True)
        units = pd.DataFrame(
            {"customer_id": test["customer_id"], "offer_id": test["offer_id"], "event_timestamp": test["exposed_at"]}
        )
        scores, logged_design = score_offers(run, units, {"visit": visit_model.booster})
        scores["spend"] = scores["visit"] * per_visit.to_numpy()[None, :]
        served_vs_trained = _served_vs_trained(visit_model.booster, run.data, test_rows, logged_design)

        step("evaluating policies off-policy")
        report = _hillstrom_evaluation(run, test, test_rows, visit, spend, scores)
        source = hillstrom.outcomes(csv).set_index("customer_id").loc[exposures["customer_id"]]
        report["labels_match_source"] = {
            "visit": bool((source["visit"].to_numpy() == visit).all()),
            "spend": bool(np.allclose(source["spend"].to_numpy(), spend)),
            "arm": bool((source["offer_id"].to_numpy() == exposures["offer_id"].to_numpy()).all()),
        }
    report.update(
        {
            "dataset": "hillstrom",
            "source": str(csv),
            "contract_rows": written,
            "customers": len(exposures),
            "train_customers": len(train_rows),
            "test_customers": len(test_rows),
            "seed": seed,
            "split": "sklearn train_test_split, test_size=0.5, random_state=seed, stratified by arm and visit",
            "max_abs_difference_served_vs_trained": served_vs_trained,
            "models": {
                "visit": {**visit_model.metrics, "test_auc": report.pop("_visit_auc")},
                "spend": {
                    "spend_per_visit_train": {str(o): float(v) for o, v in per_visit.items()},
                    "test_gini": report.pop("_spend_gini"),
                },
            },
            "published": {"mens_visit_rate": MENS_VISIT_RATE, "uplift_at_30": PUBLISHED_UPLIFT_AT_30},
            "ingest": ingest_facts(run.ingest_report),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return report


def spend_per_visit(exposures: pd.DataFrame, offer_ids: pd.Series) -> pd.Series:
    """Mean conversion value (spend) per conversion (visit) of each offer: the contract's margin rule, on `exposures`.

    Expected spend = P(visit) × this, the engine's expected value (probability × margin). A model of spend per
    visit would have about 150 purchases per arm in a training half to learn from.
    """
    converted = exposures[exposures["converted"].astype(bool)]
    return (
        converted["value"].fillna(0.0).groupby(converted["offer_id"]).mean().reindex(offer_ids.to_numpy()).fillna(0.0)
    )


def _gini(outcome: np.ndarray, score: np.ndarray) -> float:
    """Normalised Gini of a score for a non-negative amount (1: perfect order, 0: random)."""

    def lorenz_area(order: np.ndarray) -> float:
        cumulative = np.cumsum(outcome[order]) / max(outcome.sum(), 1e-12)
        return float(cumulative.mean() - 0.5)

    best = lorenz_area(np.argsort(-outcome, kind="stable"))
    return lorenz_area(np.argsort(-score, kind="stable")) / best if best > 0 else float("nan")


def _hillstrom_evaluation(
    run: PipelineRun,
    test: pd.DataFrame,
    test_rows: np.ndarray,
    visit: np.ndarray,
    spend: np.ndarray,
    scores: dict[str, np.ndarray],
) -> dict[str, Any]:
    offer_ids = run.offers["offer_id"].to_numpy()
    index = {o: j for j, o in enumerate(offer_ids)}
    control = int(np.flatnonzero(run.offers["kind"].to_numpy() == "control")[0])
    mens, womens = index["mens-email"], index["womens-email"]
    actions = test["offer_id"].map(index).to_numpy()
    propensities = test["propensity"].to_numpy(dtype=float)
    n, k = len(test), len(offer_ids)
    outcomes = {"visit": visit[test_rows], "spend": spend[test_rows]}
    predicted = {"visit": scores["visit"], "spend": scores["spend"]}

    targets: dict[str, np.ndarray] = {
        "learned_visits": rank_offers(scores["visit"], control),
        "learned_spend": rank_offers(scores["spend"], control),
        "mens_to_all": np.full(n, mens),
        "womens_to_all": np.full(n, womens),
        "no_email": np.full(n, control),
        "random": _uniform(n, k),
    }
    policies: dict[str, Any] = {}
    values: dict[str, dict[str, dict[str, offpolicy.PolicyValue]]] = {}
    for name, target in targets.items():
        values[name] = {}
        for outcome, rewards in outcomes.items():
            logged = offpolicy.LoggedData(actions, propensities, rewards, k)
            values[name][outcome] = offpolicy.evaluate(logged, target, predicted[outcome], LEVEL)
        policies[name] = {
            "label": HILLSTROM_POLICIES[name],
            **{outcome: _estimates(v) for outcome, v in values[name].items()},
            "shares": _shares(target, offer_ids) if target.ndim == 1 else dict.fromkeys(map(str, offer_ids), 1 / k),
        }

    def versus(baseline: str) -> dict[str, Any]:
        return {
            name: {
                outcome: {
                    estimator: offpolicy.difference(
                        values[name][outcome][estimator], values[baseline][outcome][estimator]
                    ).as_dict()
                    for estimator in ("IPS", "DR")
                }
                for outcome in outcomes
            }
            for name in targets
            if name != baseline
        }

    arm = actions
    pair = (arm == womens) | (arm == control)
    uplift = uplift_at_k(
        outcomes["visit"][pair],
        arm[pair] == womens,
        scores["visit"][pair, womens] - scores["visit"][pair, control],
    )
    uplift["published"] = PUBLISHED_UPLIFT_AT_30
    uplift["n"] = int(pair.sum())
    logged_score = scores["visit"][np.arange(n), actions]
    logged_spend = scores["spend"][np.arange(n), actions]
    return {
        "offers": [str(o) for o in offer_ids],
        "control_offer": str(offer_ids[control]),
        "policies": policies,
        "versus_mens": versus("mens_to_all"),
        "versus_random": versus("random"),
        "uplift_at_30": uplift,
        "arm_rates_test": {
            str(o): {
                "visit": float(outcomes["visit"][actions == j].mean()),
                "spend": float(outcomes["spend"][actions == j].mean()),
            }
            for j, o in enumerate(offer_ids)
        },
        "_visit_auc": auc(outcomes["visit"], logged_score),
        "_spend_gini": _gini(outcomes["spend"], logged_spend),
    }


# --- Starbucks ----------------------------------------------------------------------------------------------
def _viewed(exposures: pd.DataFrame, offer_events: pd.DataFrame, window_days: int) -> np.ndarray:
    """Whether each exposure was viewed (`clicked`) within the conversion window, as conversions are matched."""
    clicks = offer_events.loc[offer_events["event"] == "clicked", ["customer_id", "offer_id", "occurred_at"]]
    rows = exposures[["customer_id", "offer_id", "exposed_at"]].assign(_row=np.arange(len(exposures)))
    joined = rows.merge(clicks, on=["customer_id", "offer_id"], how="inner")
    delay = joined["occurred_at"] - joined["exposed_at"]
    inside = joined[(delay >= pd.Timedelta(0)) & (delay <= pd.Timedelta(days=window_days))]
    return rows["_row"].isin(inside["_row"]).to_numpy()


def starbucks_report(
    source_dir: Path,
    work_dir: Path,
    seed: int = 42,
    customers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The offer and view models learned on a random half of the Starbucks customers, evaluated on the other.

    Returns the learned policy's completion rate by IPS, SNIPS and DR with 95% intervals (clustered by
    customer), beside a random offer and the best single offer (chosen on the training half), the paired
    differences, and the models' held-out AUCs. `customers` runs on a seeded sample of that many customers.
    """
    source_dir = Path(source_dir)
    if not (source_dir / starbucks.TRANSCRIPT).exists():
        raise RealDataError(f"{source_dir} has no {starbucks.TRANSCRIPT}: the Starbucks data is expected there")
    work_dir = Path(work_dir)
    started = time.perf_counter()
    with _steps("Starbucks", 5, progress) as step:
        step("writing the data contract")
        written = starbucks.to_contract(source_dir, work_dir / "starbucks" / "data", customers=customers, seed=seed)
        step("ingest, features, Feast training set")
        run = run_pipeline(
            work_dir / "starbucks" / "data",
            work_dir / "starbucks" / "home",
            seed=seed,
            conversion_window_days=starbucks.CONVERSION_WINDOW_DAYS,
        )
        exposures = run.exposures
        offer_events = load_table(run.settings, "offer_events")
        assert offer_events is not None
        viewed = _viewed(exposures, offer_events, run.settings.conversion_window_days)
        people = np.sort(exposures["customer_id"].unique())
        train_people, _ = train_test_split(people, test_size=0.5, random_state=seed)
        in_train = exposures["customer_id"].isin(set(train_people)).to_numpy()
        train_rows, test_rows = np.flatnonzero(in_train), np.flatnonzero(~in_train)

        step("fitting the offer and view models on the training half")
        offer_model = fit_binary(subset(run.data, train_rows, seed), seed=seed, params=OFFER_MODEL_PARAMS)
        view_model = fit_binary(subset(run.data, train_rows, seed, label=viewed), seed=seed, params=OFFER_MODEL_PARAMS)

        step("scoring every offer for the held-out half")
        test = exposures.iloc[test_rows].reset_index(drop=True)
        units = pd.DataFrame(
            {"customer_id": test["customer_id"], "offer_id": test["offer_id"], "event_timestamp": test["exposed_at"]}
        )
        scores, logged_design = score_offers(
            run, units, {"converted": offer_model.booster, "viewed": view_model.booster}
        )
        served_vs_trained = _served_vs_trained(offer_model.booster, run.data, test_rows, logged_design)

        step("evaluating policies off-policy")
        report = _starbucks_evaluation(run, exposures, train_rows, test_rows, viewed, scores)
    report.update(
        {
            "dataset": "starbucks",
            "source": str(source_dir),
            "contract_rows": written,
            "customers": len(people),
            "exposures": len(exposures),
            "train_customers": len(train_people),
            "test_customers": len(people) - len(train_people),
            "train_exposures": len(train_rows),
            "test_exposures": len(test_rows),
            "seed": seed,
            "split": "customers: sklearn train_test_split, test_size=0.5, random_state=seed",
            "conversion_window_days": run.settings.conversion_window_days,
            "data_end": str(run.tables.as_of),
            "max_abs_difference_served_vs_trained": served_vs_trained,
            "models": {
                "offer": {**offer_model.metrics, "test_auc": report.pop("_offer_auc")},
                "view": {**view_model.metrics, "test_auc": report.pop("_view_auc")},
                "offer_id_only_test_auc": report.pop("_offer_only_auc"),
                "offer_id_only_view_test_auc": report.pop("_offer_only_view_auc"),
            },
            "ingest": ingest_facts(run.ingest_report),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return report


def _starbucks_evaluation(
    run: PipelineRun,
    exposures: pd.DataFrame,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    viewed: np.ndarray,
    scores: dict[str, np.ndarray],
) -> dict[str, Any]:
    test = exposures.iloc[test_rows].reset_index(drop=True)
    test_viewed = viewed[test_rows].astype(float)
    offer_ids = run.offers["offer_id"].to_numpy()
    index = {o: j for j, o in enumerate(offer_ids)}
    kinds = run.offers["kind"].to_numpy()
    control = int(np.flatnonzero(kinds == "control")[0]) if (kinds == "control").any() else None
    margin = run.offers["margin"].fillna(1.0).to_numpy(dtype=float)
    n, k = len(test), len(offer_ids)
    actions = test["offer_id"].map(index).to_numpy()
    rewards = test["converted"].to_numpy(dtype=float) * margin[actions]
    logged = offpolicy.LoggedData(actions, test["propensity"].to_numpy(dtype=float), rewards, k, test["customer_id"])
    predicted = scores["converted"] * margin[None, :]

    train = exposures.iloc[train_rows]
    train_value = train["converted"].astype(float) * train["offer_id"].map(dict(zip(offer_ids, margin, strict=True)))
    train_rates = train_value.groupby(train["offer_id"]).mean().reindex(offer_ids)
    best_single = int(np.nanargmax(train_rates.to_numpy()))
    targets = {
        "learned": rank_offers(predicted, control),
        "best_single": np.full(n, best_single),
        "random": _uniform(n, k),
    }
    values = {name: offpolicy.evaluate(logged, target, predicted, LEVEL) for name, target in targets.items()}
    singles = {
        str(o): offpolicy.evaluate(logged, np.full(n, j), predicted, LEVEL)["IPS"].as_dict()
        for j, o in enumerate(offer_ids)
    }
    hindsight = max(singles, key=lambda o: singles[o]["value"])
    versus = {
        other: {
            estimator: offpolicy.difference(values["learned"][estimator], values[other][estimator]).as_dict()
            for estimator in ("IPS", "DR")
        }
        for other in ("best_single", "random")
    }
    bootstrap = {
        name: offpolicy.bootstrap_policy_value(logged, targets[name], "IPS", n_resamples=500, seed=run.settings.seed)
        for name in targets
    }
    logged_rows = np.arange(n)
    offer_only = train["converted"].astype(float).groupby(train["offer_id"]).mean()
    train_viewed = pd.Series(viewed[train_rows].astype(float)).groupby(train["offer_id"].to_numpy()).mean()
    offer_only_view = test["offer_id"].map(train_viewed).to_numpy()
    portfolio = run.offers.assign(train_rate=train_rates.to_numpy())
    return {
        "offers": [str(o) for o in offer_ids],
        "offer_table": portfolio[["offer_id", "kind", "category", "discount_pct", "price", "margin", "train_rate"]]
        .astype({"offer_id": str})
        .to_dict(orient="records"),
        "control_offer": None if control is None else str(offer_ids[control]),
        "policies": {
            "learned": {
                "label": "sendwise",
                **_estimates(values["learned"]),
                "shares": _shares(targets["learned"], offer_ids),
                "bootstrap_ips": bootstrap["learned"],
            },
            "best_single": {
                "label": f"best single offer ({offer_ids[best_single][:6]}, from the training half)",
                "offer_id": str(offer_ids[best_single]),
                **_estimates(values["best_single"]),
                "bootstrap_ips": bootstrap["best_single"],
            },
            "random": {
                "label": "random offer (as logged)",
                **_estimates(values["random"]),
                "bootstrap_ips": bootstrap["random"],
            },
        },
        "single_offers_ips": singles,
        "best_single_in_hindsight": {"offer_id": hindsight, **singles[hindsight]},
        "versus": versus,
        "test_view_rate": float(test_viewed.mean()),
        "_offer_auc": auc(test["converted"].to_numpy(dtype=float), scores["converted"][logged_rows, actions]),
        "_view_auc": auc(test_viewed, scores["viewed"][logged_rows, actions]),
        "_offer_only_auc": auc(test["converted"].to_numpy(dtype=float), test["offer_id"].map(offer_only).to_numpy()),
        "_offer_only_view_auc": auc(test_viewed, offer_only_view),
    }


# --- tables for the command line ----------------------------------------------------------------------------
def _ci(value: dict[str, Any], digits: int = 4, scale: float = 1.0, prefix: str = "") -> str:
    v, lo, hi = (value[key] * scale for key in ("value", "low", "high"))
    return f"{prefix}{v:.{digits}f} [{prefix}{lo:.{digits}f}, {prefix}{hi:.{digits}f}]"


def _signed(value: dict[str, Any], digits: int = 2, scale: float = 100.0, unit: str = " pp") -> str:
    v, lo, hi = (value[key] * scale for key in ("value", "low", "high"))
    return f"{v:+.{digits}f}{unit} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def arm_mix(shares: dict[str, float]) -> str:
    """A Hillstrom policy's arms as `Mens/Womens/none` percentages."""
    return "/".join(f"{shares[o]:.0%}" for o in ("mens-email", "womens-email", "no-email"))


def hillstrom_tables(report: dict[str, Any]) -> list[Table]:
    """The Hillstrom figures as rich tables: policies (95% intervals) and uplift@30% beside the published one."""
    policies = Table(
        title=(
            f"Hillstrom: policies learned on {report['train_customers']:,} customers, evaluated off-policy on the "
            f"other {report['test_customers']:,} (95% intervals)"
        ),
        caption=(
            f"Mens E-Mail to everyone: {MENS_VISIT_RATE:.2%} visits on the whole file (published). "
            "Differences are paired, on the same held-out customers."
        ),
    )
    for column in (
        "policy",
        "sends M/W/none",
        "visits % IPS",
        "visits % DR",
        "vs Mens (IPS)",
        "spend/customer IPS",
        "vs Mens (IPS)",
    ):
        policies.add_column(column, justify="left" if column == "policy" else "right")
    for name, policy in report["policies"].items():
        versus = report["versus_mens"].get(name)
        policies.add_row(
            policy["label"],
            arm_mix(policy["shares"]),
            _ci(policy["visit"]["IPS"], scale=100, digits=2),
            _ci(policy["visit"]["DR"], scale=100, digits=2),
            _signed(versus["visit"]["IPS"]) if versus else "-",
            _ci(policy["spend"]["IPS"], digits=3, prefix="$"),
            _signed(versus["spend"]["IPS"], digits=3, scale=1.0, unit=" $") if versus else "-",
        )
    uplift = report["uplift_at_30"]
    lift = Table(title="Hillstrom: uplift@30% of Womens E-Mail over No E-Mail, visits (held-out half)")
    for column in ("sendwise (95% interval)", "published reference", "top 30%: Womens / No E-Mail visits", "all"):
        lift.add_column(column, justify="right")
    lift.add_row(
        _ci(uplift),
        f"{uplift['published']:.4f}",
        f"{uplift['treated_rate']:.2%} ({uplift['n_treated_top']:,}) / {uplift['control_rate']:.2%} "
        f"({uplift['n_control_top']:,})",
        f"{uplift['overall_uplift']:.4f} ({uplift['n']:,} customers)",
    )
    model = report["models"]["visit"]
    models = Table(title="Hillstrom: the offer (visit) model")
    for column in ("held-out AUC", "early-stopping AUC", "rounds", "time"):
        models.add_column(column, justify="right")
    models.add_row(
        f"{model['test_auc']:.4f}",
        f"{model['valid_auc']:.4f}",
        f"{int(model['best_iteration'])}",
        f"{report['seconds']:.0f} s",
    )
    return [policies, lift, models]


def starbucks_tables(report: dict[str, Any]) -> list[Table]:
    """The Starbucks figures as rich tables: policy values (95% intervals) and the models' held-out AUCs."""
    policies = Table(
        title=(
            f"Starbucks: offer completions per offer sent, learned on {report['train_customers']:,} customers, "
            f"evaluated off-policy on {report['test_exposures']:,} offers to the other {report['test_customers']:,}"
        ),
        caption="95% intervals clustered by customer; differences are paired, on the same held-out offers.",
    )
    for column in ("policy", "IPS", "IPS bootstrap", "SNIPS", "DR", "sendwise − it, IPS", "DR"):
        policies.add_column(column, justify="left" if column == "policy" else "right")
    for name, policy in report["policies"].items():
        versus = report["versus"].get(name)
        low, high = policy["bootstrap_ips"]
        policies.add_row(
            policy["label"],
            _ci(policy["IPS"]),
            f"[{low:.4f}, {high:.4f}]",
            _ci(policy["SNIPS"]),
            _ci(policy["DR"]),
            _signed(versus["IPS"]) if versus else "-",
            _signed(versus["DR"]) if versus else "-",
        )
    hindsight = report["best_single_in_hindsight"]
    policies.add_row(
        f"best single in hindsight ({hindsight['offer_id'][:6]})",
        _ci(hindsight),
        "",
        "",
        "",
        "",
        "",
    )
    models = Table(title="Starbucks: models on the held-out half")
    for column in ("model", "held-out AUC", "offer id alone", "rounds"):
        models.add_column(column, justify="right")
    m = report["models"]
    models.add_row(
        "offer (completed)",
        f"{m['offer']['test_auc']:.4f}",
        f"{m['offer_id_only_test_auc']:.4f}",
        f"{int(m['offer']['best_iteration'])}",
    )
    models.add_row(
        "view (viewed)",
        f"{m['view']['test_auc']:.4f}",
        f"{m['offer_id_only_view_test_auc']:.4f}",
        f"{int(m['view']['best_iteration'])}",
    )
    return [policies, models]
