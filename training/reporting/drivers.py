"""The drivers section: what moves each champion's predictions, in plain words on the probability scale.

Each champion is explained on the sample of its training set that its run kept (`training.samples`): rows like
those it learned from, without customer ids. The send-time champion is told by the features that differ
between the hours of one customer's day (`features.transform.HOUR_FEATURES`): everything else moves every hour
of a customer alike, so it says how likely an open is, not when.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.transform import HOUR_FEATURES
from training.explain import Driver, Explained, shap_explain, shap_plots, top_drivers
from training.reporting.inputs import Champion, ReportInputs, missing_sample
from training.reporting.site import PLOTS, Section

TOP_DRIVERS = 8


@dataclass(frozen=True)
class Wording:
    """How a model's predictions read: what a row of its sample is, and the outcome."""

    predicts: str
    rows: str
    outcome: str


WORDING = {
    "open_propensity": Wording(
        "how likely a person is to open an email (a human open, not a privacy proxy's)",
        "emails sent",
        "of emails opened",
    ),
    "send_time": Wording(
        "how likely an open is at each hour of a customer's day, which is how sendwise picks the hour",
        "emails sent",
        "of emails opened",
    ),
    "next_best_offer": Wording(
        "how likely a customer is to convert on an offer an email shows them",
        "offers shown",
        "of offers converted",
    ),
}


@dataclass(frozen=True)
class ModelPart:
    """One champion's part of the drivers page."""

    name: str
    title: str
    version: str
    wording: Wording
    rows: int
    mean_probability: float
    drivers: list[Driver]
    beeswarm: str
    bar: str
    note: str | None = None


def _features_of(found: Champion, inputs: ReportInputs) -> tuple[list[str] | None, str | None]:
    """The features to rank for a champion (None: all), and a note on why where limited."""
    if found.name != "send_time":
        return None, None
    hours = [f for f in found.booster.feature_name() if f in HOUR_FEATURES]
    if not hours:
        return None, None
    same = inputs.every_champion.get("open_propensity")
    shared = same is not None and same.run_id == found.run_id
    note = (
        "The send-time champion is the open-propensity model itself, registered on its own metric: " if shared else ""
    ) + (
        "it is told here by the features that differ between the hours of one customer's day; the others move "
        "every hour of a customer alike."
    )
    return hours, note[0].upper() + note[1:]


def offer_titles(inputs: ReportInputs) -> dict[str, dict[str, str]]:
    """The offer feature's values (offer ids) named by the offers' titles, where they have one."""
    offers = inputs.table("offers")
    if offers is None or "title" not in offers.columns:
        return {}
    titled = offers[offers["title"].notna() & (offers["title"].astype(str).str.strip() != "")]
    return {"offer_id": dict(zip(titled["offer_id"].astype(str), titled["title"].astype(str), strict=True))}


def model_part(found: Champion, inputs: ReportInputs, explained: Explained) -> ModelPart:
    wording = WORDING.get(found.name, WORDING["open_propensity"])
    features, note = _features_of(found, inputs)
    drivers = top_drivers(explained, TOP_DRIVERS, features, category_labels=offer_titles(inputs))
    plotted = explained if features is None else explained.only(features)
    beeswarm, bar = shap_plots(plotted, inputs.plots_dir, f"drivers-{found.name}", top=TOP_DRIVERS)
    return ModelPart(
        name=found.name,
        title=found.title,
        version=found.version,
        wording=wording,
        rows=len(explained.design),
        mean_probability=explained.mean_probability,
        drivers=drivers,
        beeswarm=f"{PLOTS}/{beeswarm.name}",
        bar=f"{PLOTS}/{bar.name}",
        note=note,
    )


def drivers_section(inputs: ReportInputs) -> Section | None:
    """One part per champion that kept a training sample; a note for each that did not."""
    parts, notes = [], []
    explained: dict[str, Explained] = {}
    for found in inputs.champions.values():
        if found.sample is None or found.sample.empty:
            notes.append(missing_sample(inputs.settings, found))
            continue
        inputs.status(f"explaining the {found.name} champion")
        key = found.run_id or found.name  # open propensity and send time often share one run, booster and sample
        if key not in explained:
            explained[key] = shap_explain(found.booster, found.sample)
        parts.append(model_part(found, inputs, explained[key]))
    if not parts and not notes:
        return None
    summary = [
        f"{p.title}: the strongest driver is {p.drivers[0].name} ({p.drivers[0].comparison(p.wording.outcome)})."
        if p.drivers
        else f"{p.title}: no feature splits its rows into groups the model tells apart."
        for p in parts
    ]
    return Section(
        slug="drivers",
        title="What drives the predictions",
        summary=summary + notes,
        template="drivers.html.j2",
        context={"parts": parts},
        images=[image for p in parts for image in (p.beeswarm, p.bar)],
        notes=notes,
    )
