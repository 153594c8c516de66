"""Hillstrom's email experiment (64,000 customers, Mens / Womens / no e-mail at random): the offer model learned
on a random half, its policies evaluated off-policy on the other half beside the published figures.

Hillstrom has two outcomes, visit (the contract's conversion) and spend (its value). Expected spend is the offer
model's visit probability × the arm's mean spend per visit on the training half: the engine's expected value
(probability × margin, the contract's margin rule). Spend itself has about 290 purchases in a training half,
too few for a model of its own; the visit model is the one learned. Hillstrom's exposures all share one send
time, so the pipeline's split by time (for early stopping) cannot apply; a seeded random 20% of the training
half is held out instead (`harness.subset`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table
from sklearn.model_selection import train_test_split

from sendwise.adapters import hillstrom as adapter
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
    uplift_at_k,
)

# Published figures the Hillstrom results stand beside (docs/real-data.md cites them).
MENS_VISIT_RATE = 0.1828
PUBLISHED_UPLIFT_AT_30 = 0.0661

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
        raise RealDataError(
            f"{csv} does not exist: the Hillstrom CSV is expected there (docs/real-data.md says where to get it)"
        )
    work_dir = Path(work_dir)
    started = time.perf_counter()
    with steps("Hillstrom", 5, progress) as step:
        step("writing the data contract")
        written = adapter.to_contract(csv, work_dir / "hillstrom" / "data", seed=seed)
        step("ingest, features, Feast training set")
        as_of = adapter.SEND_TIME + pd.Timedelta(days=adapter.OUTCOME_DAYS)
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
        served_vs_trained = serving_gap(visit_model.booster, run.data, test_rows, logged_design)

        step("evaluating policies off-policy")
        report = _hillstrom_evaluation(run, test, test_rows, visit, spend, scores)
        source = adapter.outcomes(csv).set_index("customer_id").loc[exposures["customer_id"]]
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
        "random": uniform_policy(n, k),
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
            **{outcome: estimates(v) for outcome, v in values[name].items()},
            "shares": policy_shares(target, offer_ids)
            if target.ndim == 1
            else dict.fromkeys(map(str, offer_ids), 1 / k),
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
            ci(policy["visit"]["IPS"], scale=100, digits=2),
            ci(policy["visit"]["DR"], scale=100, digits=2),
            signed(versus["visit"]["IPS"]) if versus else "-",
            ci(policy["spend"]["IPS"], digits=3, prefix="$"),
            signed(versus["spend"]["IPS"], digits=3, scale=1.0, unit=" $") if versus else "-",
        )
    uplift = report["uplift_at_30"]
    lift = Table(title="Hillstrom: uplift@30% of Womens E-Mail over No E-Mail, visits (held-out half)")
    for column in ("sendwise (95% interval)", "published reference", "top 30%: Womens / No E-Mail visits", "all"):
        lift.add_column(column, justify="right")
    lift.add_row(
        ci(uplift),
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
