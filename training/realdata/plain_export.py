"""Hillstrom as a plain export, through exactly what a user runs, evaluated off-policy.

1. A seeded random half of the Hillstrom customers is written as a plain export taken after the fact
   (`sendwise.adapters.hillstrom.to_plain_export`: exposures at the send, visits and purchases over the two
   weeks after it, offers with their 14-day conversion window, no as-of in the files).
2. `sendwise pipeline --data DIR --as-of <send + 6 weeks>` runs into a home of its own: the same job
   (`training.jobs.pipeline`) the command runs, with the options it would parse.
3. The other half, customers that home has never seen, is decided through `Engine.decide` (the code behind
   `/v1/decide`): batches of at most 10,000 recipients, each with its Hillstrom columns as `attributes`, the
   window starting at the send time, no exploration, three offers ranked. The top offer is the decision; a
   control offer first means "no email".
4. The decided policy is evaluated on that half's logged arms and outcomes (a randomized experiment,
   propensity 1/3 per arm) by IPS, SNIPS and DR (`training.offpolicy`), with 95% intervals, beside sending Mens
   E-Mail, Womens E-Mail or no email to everyone, with the paired difference from Mens E-Mail to everyone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from rich.table import Table
from sklearn.model_selection import train_test_split

from sendwise.adapters import hillstrom
from sendwise.asof import parse_as_of
from sendwise.settings import Settings
from serving.engine import Engine
from serving.schemas import DecideRequest, Recipient
from training import jobs, offpolicy
from training.models import auc
from training.realdata.harness import LEVEL, RealDataError, ci, estimates, policy_shares, signed, steps
from training.realdata.hillstrom import arm_mix
from training.registry import connect

AS_OF_AFTER_SEND = pd.Timedelta(weeks=6)
"""When the export is taken: six weeks after the send, four after the 14-day conversion windows closed."""
DECIDE_BATCH = 10_000
PATH_CHECK = 2_000
"""Customers of the training half decided as known and again as unknown, to compare the two paths."""
K_OFFERS = 3
OUTCOMES = ("conversion", "spend")
POLICIES = {
    "learned": "sendwise (its top offer)",
    "mens_to_all": "Mens E-Mail to everyone",
    "womens_to_all": "Womens E-Mail to everyone",
    "no_email": "No E-Mail",
}


def as_of() -> pd.Timestamp:
    """The `--as-of` the evaluation passes: the send time + 6 weeks."""
    return hillstrom.SEND_TIME + AS_OF_AFTER_SEND


def recipients(customers: pd.DataFrame) -> list[Recipient]:
    """Each customer as a recipient the home does not know: its id and its `attr_*` columns as attributes."""
    columns = [c for c in customers.columns if c.startswith("attr_")]
    rows = customers[["customer_id", *columns]].to_dict("records")
    return [
        Recipient(
            customer_id=str(row["customer_id"]),
            attributes={name: row[name] for name in columns if not pd.isna(row[name])},
        )
        for row in rows
    ]


def decide_all(
    engine: Engine, people: list[Recipient], offer_ids: list[str], step: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Decide everyone in batches of at most 10,000 (window at the send time, no exploration, 3 offers).

    Returns each recipient's top offer (its index in `offer_ids`; a recipient sent nothing counts as the
    control), the conversion probability and expected value of every offer ([n, offers], NaN where not
    ranked), and facts about the answers (cold starts, sends, model versions).
    """
    index = {o: j for j, o in enumerate(offer_ids)}
    n, k = len(people), len(offer_ids)
    top = np.full(n, -1, dtype=np.int64)
    probability = np.full((n, k), np.nan)
    value = np.full((n, k), np.nan)
    cold = sent = 0
    versions: dict[str, str | None] = {}
    for first in range(0, n, DECIDE_BATCH):
        batch = people[first : first + DECIDE_BATCH]
        request = DecideRequest(
            recipients=batch, window_start=hillstrom.SEND_TIME.to_pydatetime(), explore_share=0.0, k_offers=K_OFFERS
        )
        answer = engine.decide(request)
        versions = dict(answer.model_versions)
        for i, decision in enumerate(answer.decisions, start=first):
            cold += int(decision.cold_start)
            sent += int(decision.send)
            for offer in decision.offers:
                j = index[offer.offer_id]
                probability[i, j] = offer.conversion_probability
                value[i, j] = offer.expected_value
            if decision.send and decision.offers:
                top[i] = index[decision.offers[0].offer_id]
        if step is not None:
            step(f"deciding: {min(first + DECIDE_BATCH, n):,} of {n:,}")
    return top, probability, value, {"cold_start": cold, "sent": sent, "model_versions": versions}


def known_vs_unknown(engine: Engine, customers: pd.DataFrame, offer_ids: list[str]) -> float:
    """Largest difference between the offer probabilities of customers the home knows, decided by id, and the
    same customers decided as unknown ones (a new id) with their attributes as context."""
    table = hillstrom.customers_table(customers)
    known = [Recipient(customer_id=str(c)) for c in table["customer_id"]]
    unknown = recipients(table.assign(customer_id="new-" + table["customer_id"].astype(str)))
    _, by_id, _, facts = decide_all(engine, known, offer_ids)
    _, by_context, _, cold = decide_all(engine, unknown, offer_ids)
    if facts["cold_start"] != 0 or cold["cold_start"] != len(unknown):
        raise RealDataError("the known customers were not all known, or the new ids not all unknown")
    return float(np.nanmax(np.abs(by_id - by_context)))


def _by_probability(test: pd.DataFrame, offer_ids: list[str], probability: np.ndarray) -> dict[str, Any]:
    """The same model's policy ranked by purchase probability over the control's, margins left out."""
    index = {o: j for j, o in enumerate(offer_ids)}
    control = index[hillstrom.CONTROL_OFFER]
    gain = np.nan_to_num(probability) - np.nan_to_num(probability[:, [control]])
    choice = np.where(gain.max(axis=1) > 0, gain.argmax(axis=1), control)
    actions = test["offer_id"].map(index).to_numpy(dtype=np.int64)
    logged = offpolicy.LoggedData(
        actions, np.full(len(test), hillstrom.PROPENSITY), test["conversion"].to_numpy(dtype=float), len(offer_ids)
    )
    return {
        "shares": policy_shares(choice, np.array(offer_ids)),
        "conversion_ips": offpolicy.ips(logged, choice, LEVEL).as_dict(),
    }


def _offer_model_metrics(settings: Settings) -> dict[str, float]:
    """The served offer model's metrics from its MLflow run (empty where there is none)."""
    client: MlflowClient = connect(settings)
    try:
        version = client.get_model_version_by_alias("next_best_offer", "champion")
    except MlflowException:  # no champion
        return {}
    return dict(client.get_run(version.run_id).data.metrics) if version.run_id else {}


def plain_export_report(
    csv: Path, work_dir: Path, seed: int = 42, customers: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Hillstrom written as a plain export (half of it), `sendwise pipeline --as-of`, `/v1/decide` for the
    other half, and the decided policy evaluated off-policy (module docstring). `customers` runs on a seeded
    sample of that many customers instead of all 64,000."""
    csv = Path(csv)
    if not csv.exists():
        raise RealDataError(
            f"{csv} does not exist: the Hillstrom CSV is expected there (docs/real-data.md says where to get it)"
        )
    root = Path(work_dir) / "hillstrom-plain"
    data_dir, home = root / "data", root / "home"
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    with steps("Hillstrom plain export", 6, progress) as step:
        step("splitting the customers")
        source = hillstrom.read_source(csv)
        if customers is not None and customers < len(source):
            chosen = np.random.default_rng(seed).choice(len(source), customers, replace=False)
            source = source.iloc[np.sort(chosen)].reset_index(drop=True)
        strata = source["offer_id"] + "/" + source["conversion"].astype(str)
        train_rows, test_rows = train_test_split(
            np.arange(len(source)), test_size=0.5, random_state=seed, stratify=strata
        )
        train_rows, test_rows = np.sort(train_rows), np.sort(test_rows)

        step("writing the plain export of the training half")
        written = hillstrom.write_plain_export(source.iloc[train_rows], data_dir, seed=seed)

        step("sendwise pipeline --data DIR --as-of ...")
        clock = time.perf_counter()
        command = ["pipeline", "--data", str(data_dir), "--as-of", as_of().strftime("%Y-%m-%dT%H:%M:%SZ")]
        settings = Settings(home=home, mlflow_tracking_uri=None)  # its models in its home, not on a shared server
        pipeline = jobs.pipeline(settings, data_dir, as_of=parse_as_of(command[-1]), progress=False)
        seconds["pipeline"] = time.perf_counter() - clock

        step("loading the engine")
        clock = time.perf_counter()
        engine = Engine.load(settings)
        offer_ids = [str(o) for o in engine.offers["offer_id"]] if engine.offers is not None else []
        seconds["engine_load"] = time.perf_counter() - clock
        if "next_best_offer" not in engine.models:
            why = pipeline.training.skipped.get("next_best_offer", "it was trained but not promoted")
            raise RealDataError(f"`sendwise {' '.join(command)}` trained no offer model: {why}")

        clock = time.perf_counter()
        test = source.iloc[test_rows].reset_index(drop=True)
        people = recipients(hillstrom.customers_table(test))
        top, probability, value, facts = decide_all(engine, people, offer_ids, step)
        seconds["decide"] = time.perf_counter() - clock

        step("evaluating off-policy")
        report = _evaluate(test, offer_ids, top, probability, value)
        known = source.iloc[train_rows[:PATH_CHECK]].reset_index(drop=True)
        catalog = engine.offers if engine.offers is not None else pd.DataFrame({"offer_id": [], "margin": []})
        report["diagnostics"] = {
            "known_vs_unknown_max_difference": known_vs_unknown(engine, known, offer_ids),
            "margins": {str(o): float(m) for o, m in zip(catalog["offer_id"], catalog["margin"], strict=True)},
            "by_probability_alone": _by_probability(test, offer_ids, probability),
        }
    report.update(
        {
            "dataset": "hillstrom plain export",
            "source": str(csv),
            "seed": seed,
            "customers": len(source),
            "train_customers": len(train_rows),
            "test_customers": len(test_rows),
            "split": "sklearn train_test_split, test_size=0.5, random_state=seed, stratified by arm and conversion",
            "contract_rows": written,
            "command": f"sendwise {' '.join(command)}",
            "as_of": str(as_of()),
            "window_start": str(hillstrom.SEND_TIME),
            "decisions": {**facts, "batches": -(-len(test_rows) // DECIDE_BATCH), "k_offers": K_OFFERS},
            "offer_model": _offer_model_metrics(settings),
            "seconds": {name: round(value, 1) for name, value in seconds.items()}
            | {"total": round(time.perf_counter() - started, 1)},
        }
    )
    return report


def _evaluate(
    test: pd.DataFrame, offer_ids: list[str], top: np.ndarray, probability: np.ndarray, value: np.ndarray
) -> dict[str, Any]:
    """The decided policy and the single-arm policies by IPS, SNIPS and DR on the logged arms and outcomes."""
    index = {o: j for j, o in enumerate(offer_ids)}
    control = index[hillstrom.CONTROL_OFFER]
    n, k = len(test), len(offer_ids)
    actions = test["offer_id"].map(index).to_numpy(dtype=np.int64)
    propensities = np.full(n, hillstrom.PROPENSITY)
    rewards = {"conversion": test["conversion"].to_numpy(dtype=float), "spend": test["spend"].to_numpy(dtype=float)}
    predicted = {"conversion": np.nan_to_num(probability), "spend": np.nan_to_num(value)}
    decided = np.where(top >= 0, top, control)
    targets = {
        "learned": decided,
        "mens_to_all": np.full(n, index["mens-email"]),
        "womens_to_all": np.full(n, index["womens-email"]),
        "no_email": np.full(n, control),
    }
    values: dict[str, dict[str, dict[str, offpolicy.PolicyValue]]] = {}
    for name, target in targets.items():
        values[name] = {
            outcome: offpolicy.evaluate(
                offpolicy.LoggedData(actions, propensities, rewards[outcome], k), target, predicted[outcome], LEVEL
            )
            for outcome in OUTCOMES
        }
    policies = {
        name: {
            "label": POLICIES[name],
            "shares": policy_shares(targets[name], np.array(offer_ids)),
            **{outcome: estimates(values[name][outcome]) for outcome in OUTCOMES},
        }
        for name in targets
    }
    differences = {
        name: {
            outcome: {
                estimator: offpolicy.difference(
                    values[name][outcome][estimator], values["mens_to_all"][outcome][estimator]
                )
                for estimator in ("IPS", "DR")
            }
            for outcome in OUTCOMES
        }
        for name in targets
        if name != "mens_to_all"
    }
    versus_mens = {
        name: {outcome: estimates(by_outcome[outcome]) for outcome in OUTCOMES}
        for name, by_outcome in differences.items()
    }
    learned = differences["learned"]
    logged_probability = probability[np.arange(n), actions]
    return {
        "offers": offer_ids,
        "control_offer": hillstrom.CONTROL_OFFER,
        "policies": policies,
        "versus_mens": versus_mens,
        "logged": {
            "arms": {o: int((actions == j).sum()) for o, j in index.items()},
            "conversion_rate_by_arm": {o: float(rewards["conversion"][actions == j].mean()) for o, j in index.items()},
            "spend_by_arm": {o: float(rewards["spend"][actions == j].mean()) for o, j in index.items()},
        },
        "served_model": {
            "test_auc": auc(rewards["conversion"], np.nan_to_num(logged_probability)),
            "mean_probability_by_offer": {o: float(np.nanmean(probability[:, j])) for o, j in index.items()},
        },
        "bar": {
            "offer_model_trained": True,
            "conversion_at_least_mens": learned["conversion"]["IPS"].high >= 0,
            "spend_at_least_mens": learned["spend"]["IPS"].high >= 0,
            "not_all_no_email": bool((decided != control).any()),
        },
    }


def plain_export_tables(report: dict[str, Any]) -> list[Table]:
    """The plain export's figures as a rich table: each policy's conversion and spend by IPS (95% intervals)."""
    table = Table(
        title=(
            f"Hillstrom as a plain export: `{report['command']}` on {report['train_customers']:,} customers, "
            f"/v1/decide for the other {report['test_customers']:,} (unknown to the home), evaluated off-policy "
            "(IPS, 95% intervals)"
        ),
        caption=(
            "Differences from Mens E-Mail to everyone are paired, on the same customers. The served offer "
            f"model's AUC on the decided half's logged arms: {report['served_model']['test_auc']:.3f}. "
            f"Time: pipeline {report['seconds']['pipeline']:.0f} s, deciding {report['seconds']['decide']:.0f} s, "
            f"all {report['seconds']['total']:.0f} s."
        ),
    )
    for column in ("policy", "sends M/W/none", "conversion % IPS", "vs Mens", "spend/customer IPS", "vs Mens"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, policy in report["policies"].items():
        versus = report["versus_mens"].get(name)
        table.add_row(
            policy["label"],
            arm_mix(policy["shares"]),
            ci(policy["conversion"]["IPS"], scale=100, digits=2),
            signed(versus["conversion"]["IPS"], scale=100, unit=" pp") if versus else "-",
            ci(policy["spend"]["IPS"], digits=3, prefix="$"),
            signed(versus["spend"]["IPS"], digits=3, scale=1.0, unit=" $") if versus else "-",
        )
    return [table]
