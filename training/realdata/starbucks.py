"""Starbucks' offer data (a simulated rewards app: offers sent at random, viewed, completed): the offer and view
models learned on a random half of the customers, the learned policy evaluated off-policy on the other half.

Starbucks' views (`clicked`) have no model in the pipeline; the view model is `fit_binary` on the same design
with the view as label.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table
from sklearn.model_selection import train_test_split

from sendwise.adapters import starbucks as adapter
from sendwise.raw import load_table
from training import offpolicy
from training.models import auc, fit_binary
from training.realdata.harness import (
    LEVEL,
    OFFER_MODEL_PARAMS,
    PipelineRun,
    RealDataError,
    ci,
    estimates,
    ingest_facts,
    policy_shares,
    rank_offers,
    run_pipeline,
    score_offers,
    serving_gap,
    signed,
    steps,
    subset,
    uniform_policy,
)


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
    if not (source_dir / adapter.TRANSCRIPT).exists():
        raise RealDataError(f"{source_dir} has no {adapter.TRANSCRIPT}: the Starbucks data is expected there")
    work_dir = Path(work_dir)
    started = time.perf_counter()
    with steps("Starbucks", 5, progress) as step:
        step("writing the data contract")
        written = adapter.to_contract(source_dir, work_dir / "starbucks" / "data", customers=customers, seed=seed)
        step("ingest, features, Feast training set")
        run = run_pipeline(
            work_dir / "starbucks" / "data",
            work_dir / "starbucks" / "home",
            seed=seed,
            conversion_window_days=adapter.CONVERSION_WINDOW_DAYS,
        )
        exposures = run.exposures
        offer_events = load_table(run.settings, "offer_events")
        if offer_events is None:
            raise RealDataError("the Starbucks export ingested no offer_events: its transcript has no offer rows")
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
        served_vs_trained = serving_gap(offer_model.booster, run.data, test_rows, logged_design)

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
        "random": uniform_policy(n, k),
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
                **estimates(values["learned"]),
                "shares": policy_shares(targets["learned"], offer_ids),
                "bootstrap_ips": bootstrap["learned"],
            },
            "best_single": {
                "label": f"best single offer ({offer_ids[best_single][:6]}, from the training half)",
                "offer_id": str(offer_ids[best_single]),
                **estimates(values["best_single"]),
                "bootstrap_ips": bootstrap["best_single"],
            },
            "random": {
                "label": "random offer (as logged)",
                **estimates(values["random"]),
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
            ci(policy["IPS"]),
            f"[{low:.4f}, {high:.4f}]",
            ci(policy["SNIPS"]),
            ci(policy["DR"]),
            signed(versus["IPS"]) if versus else "-",
            signed(versus["DR"]) if versus else "-",
        )
    hindsight = report["best_single_in_hindsight"]
    policies.add_row(
        f"best single in hindsight ({hindsight['offer_id'][:6]})",
        ci(hindsight),
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
