"""What each offer earned per exposure in the logged data: how offers are ranked while no offer model is trained.

The next-best-offer model needs enough closed exposures with conversions to be trained. Until then the
service still ranks offers, by this table: for every offer of the catalog, from the exposures whose
conversion window has closed by `as_of` (an exposure still inside its window may yet convert),

- `exposures`, `conversions` and the plain `conversion_rate`;
- `ips_conversion_rate`: the self-normalized inverse-propensity estimate, sum(w * converted) / sum(w) with
  w = 1 / propensity. The logging policy showed each offer more often to the customers it thought likeliest
  to take it; weighting each exposure by how unlikely it was undoes that, so the rate is the offer's rate over
  all customers the policy could have shown it to, not over those it chose. Propensities are clipped at
  `MIN_PROPENSITY` (a weight of at most 100, as training clips them). An exposure without a propensity counts
  as an average exposure of its offer (the mean weight of those that have one); an offer without any
  propensity gets the plain mean (`weighted` false). `effective_exposures` is Kish's effective sample size,
  (sum w)^2 / sum w^2: what the weighted rate is worth in plain exposures;
- `shrunk_conversion_rate`: the rate shrunk toward the mean over offers by empirical Bayes, a beta-binomial
  prior fitted to the offers' rates (`prior_rate`, `prior_exposures`, below). An offer never exposed gets the
  prior's mean (`source` says so);
- `margin`, by the data contract's rule: the catalog's margin, else the mean observed conversion value of the
  offer, else 1 (`margin_source`);
- `value_per_exposure` = shrunk conversion rate × margin, and `incremental_value` = that minus the control
  arm's (kind `control`: the customer was sent no offer), where the catalog has a control offer.

The prior. A conversion rate from 3 exposures and one from 3,000 must not be ranked as equals: each offer's
rate is pulled toward the mean over offers by as many pseudo-exposures as the offers' spread warrants. The
prior is a beta distribution with mean `prior_rate` (the offers' rates averaged, each weighted by its
effective exposures) and strength `prior_exposures` = alpha + beta, fitted by the method of moments
(Kleinman's estimator of the beta-binomial's intra-class correlation rho, prior_exposures = 1 / rho - 1):
offers whose rates differ far more than chance allows get a weak prior and keep their own rates; offers that
differ no more than their exposure counts explain get a strong one. Fixed pseudo-exposures would be too strong
for a large catalog with plenty of data and too weak for a small one; the fit lets the data say which. Two
bounds keep a noisy fit sensible: the prior is never worth more than the average offer's effective exposures
(with fewer than `MIN_OFFERS_FOR_FIT` exposed offers, or a spread no larger than chance, it is worth exactly
that), so an offer with an average amount of data always weighs its own rate at least as much as the prior;
and never less than one exposure. Each offer's rate is then the posterior mean,
(effective exposures × its rate + prior exposures × prior rate) / (effective exposures + prior exposures).

The table holds aggregates only (no customer ids). `OfferValues` reads it for serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

MIN_PROPENSITY = 0.01
"""Propensities below this are clipped: one exposure never weighs more than 100."""
MIN_OFFERS_FOR_FIT = 3
"""Fewer exposed offers than this: their spread says nothing; the prior takes its upper bound."""
MIN_PRIOR_EXPOSURES = 1.0
TABLE = "offer_values"
"""The table's name under the home's feature tables (`feature_tables/offer_values.parquet`)."""

LOGGED = "logged"
NEVER_EXPOSED = "never exposed: the mean over offers"
NO_EXPOSURES = "no logged exposures"

COLUMNS = {
    "offer_id": "object",
    "kind": "object",
    "margin": "float64",
    "margin_source": "object",
    "exposures": "int64",
    "conversions": "int64",
    "conversion_rate": "float64",
    "weighted": "bool",
    "effective_exposures": "float64",
    "ips_conversion_rate": "float64",
    "shrunk_conversion_rate": "float64",
    "value_per_exposure": "float64",
    "incremental_value": "float64",
    "source": "object",
    "prior_rate": "float64",
    "prior_exposures": "float64",
}


def offer_values(
    exposures: pd.DataFrame, offers: pd.DataFrame | None, as_of: pd.Timestamp, window_days: float
) -> pd.DataFrame:
    """One row per offer of the catalog (columns `COLUMNS`): what it earned per exposure whose conversion
    window closed by `as_of`. `exposures` as `features.build` makes them (customer_id, offer_id, exposed_at,
    propensity, converted, value); an offer's own `conversion_window_days` wins over `window_days`."""
    if offers is None or offers.empty:
        return _empty()
    catalog = offers.drop_duplicates("offer_id").reset_index(drop=True)
    ids = catalog["offer_id"].astype(str)
    closed = _closed(exposures, catalog, as_of, window_days)
    stats = _per_offer(closed).reindex(ids)
    table = pd.DataFrame(
        {
            "offer_id": ids.to_numpy(dtype=object),
            "kind": catalog["kind"].astype(str).to_numpy(dtype=object),
        }
    )
    table["margin"], table["margin_source"] = _margins(catalog, closed)
    table["exposures"] = stats["exposures"].fillna(0).to_numpy(dtype=np.int64)
    table["conversions"] = stats["conversions"].fillna(0).to_numpy(dtype=np.int64)
    exposed = table["exposures"].to_numpy() > 0
    table["conversion_rate"] = np.where(exposed, table["conversions"] / np.maximum(table["exposures"], 1), np.nan)
    table["weighted"] = stats["weighted"].eq(True).to_numpy()
    table["effective_exposures"] = stats["effective_exposures"].fillna(0.0).to_numpy(dtype=np.float64)
    table["ips_conversion_rate"] = stats["ips_rate"].to_numpy(dtype=np.float64)
    if exposed.any():
        size = table["effective_exposures"].to_numpy()
        rate = np.nan_to_num(table["ips_conversion_rate"].to_numpy())  # a never exposed offer: size 0
        prior_rate, prior_exposures = beta_prior(rate[exposed], size[exposed])
        table["shrunk_conversion_rate"] = (size * rate + prior_exposures * prior_rate) / (size + prior_exposures)
        table["source"] = np.where(exposed, LOGGED, NEVER_EXPOSED)
    else:
        prior_rate = prior_exposures = np.nan
        table["shrunk_conversion_rate"] = np.nan
        table["source"] = NO_EXPOSURES
    table["value_per_exposure"] = table["shrunk_conversion_rate"] * table["margin"]
    control = table["kind"] == "control"
    baseline = table.loc[control, "value_per_exposure"].max() if control.any() else np.nan
    table["incremental_value"] = table["value_per_exposure"] - baseline
    table["prior_rate"], table["prior_exposures"] = prior_rate, prior_exposures
    return table[list(COLUMNS)].astype(COLUMNS)


def beta_prior(rates: np.ndarray, sizes: np.ndarray) -> tuple[float, float]:
    """(prior mean, prior strength in exposures) of a beta-binomial prior fitted by the method of moments to
    offers' conversion rates observed over `sizes` exposures each (Kleinman 1973; the module docstring)."""
    total = float(sizes.sum())
    mean = float((sizes * rates).sum() / total)
    cap = max(total / len(sizes), MIN_PRIOR_EXPOSURES)
    if len(sizes) < MIN_OFFERS_FOR_FIT or not 0.0 < mean < 1.0:
        return mean, cap
    spread = float((sizes * (rates - mean) ** 2).sum()) / (mean * (1.0 - mean))
    room = total - float((sizes**2).sum()) / total - (len(sizes) - 1)
    rho = (spread - (len(sizes) - 1)) / room if room > 0 else 0.0
    if rho <= 0.0:  # no more spread than chance: as strong as allowed
        return mean, cap
    return mean, float(np.clip(1.0 / rho - 1.0, MIN_PRIOR_EXPOSURES, cap))


def _empty() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in COLUMNS.items()})


def _closed(exposures: pd.DataFrame, catalog: pd.DataFrame, as_of: pd.Timestamp, window_days: float) -> pd.DataFrame:
    """The exposures of catalog offers whose conversion window ended by `as_of`."""
    if exposures is None or exposures.empty:
        return pd.DataFrame(columns=["offer_id", "exposed_at", "propensity", "converted", "value"])
    frame = exposures.assign(offer_id=exposures["offer_id"].astype(str))
    days = pd.Series(float(window_days), index=catalog.index)
    if "conversion_window_days" in catalog.columns:
        days = pd.to_numeric(catalog["conversion_window_days"], errors="coerce").fillna(days)
    window = pd.Series(days.to_numpy(), index=catalog["offer_id"].astype(str))
    own = frame["offer_id"].map(window)
    frame = frame[own.notna()]
    ends = frame["exposed_at"] + pd.to_timedelta(own[own.notna()], unit="D")
    return frame[ends <= as_of].reset_index(drop=True)


def _per_offer(closed: pd.DataFrame) -> pd.DataFrame:
    """Exposures, conversions, whether propensities weight them, effective exposures and the self-normalized
    IPS conversion rate of each exposed offer (indexed by offer_id)."""
    if closed.empty:
        columns = {"exposures": "int64", "conversions": "int64", "weighted": "bool"}
        columns |= {"effective_exposures": "float64", "ips_rate": "float64"}
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})
    converted = closed["converted"].eq(True).to_numpy(dtype=np.float64)
    propensity = pd.to_numeric(closed["propensity"], errors="coerce").to_numpy(dtype=np.float64)
    valid = (propensity > 0.0) & (propensity <= 1.0)  # NaN compares false
    weight = pd.Series(np.where(valid, 1.0 / np.clip(propensity, MIN_PROPENSITY, 1.0), np.nan))
    offer = closed["offer_id"].to_numpy()
    average = weight.groupby(offer).transform("mean")  # NaN for an offer without any propensity
    weight = weight.fillna(average).fillna(1.0).to_numpy()
    parts = pd.DataFrame(
        {
            "offer_id": offer,
            "n": 1,
            "y": converted,
            "valid": valid,
            "w": weight,
            "w2": weight**2,
            "wy": weight * converted,
        }
    ).groupby("offer_id")
    sums = parts[["n", "y", "w", "w2", "wy"]].sum()
    return pd.DataFrame(
        {
            "exposures": sums["n"].astype(np.int64),
            "conversions": sums["y"].astype(np.int64),
            "weighted": parts["valid"].any(),
            "effective_exposures": sums["w"] ** 2 / sums["w2"],
            "ips_rate": sums["wy"] / sums["w"],
        }
    )


def _margins(catalog: pd.DataFrame, closed: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each offer's margin and where it came from: the catalog's, else the mean observed conversion value of
    the offer, else 1 (the data contract's rule, as the ingest fills it)."""
    given = (
        pd.to_numeric(catalog["margin"], errors="coerce")
        if "margin" in catalog.columns
        else pd.Series(np.nan, index=catalog.index)
    )
    observed = pd.Series(dtype=np.float64)
    if not closed.empty:
        converted = closed[closed["converted"].eq(True) & closed["value"].notna()]
        observed = converted.groupby("offer_id")["value"].mean()
    from_value = catalog["offer_id"].astype(str).map(observed)
    margin = given.fillna(from_value).fillna(1.0).to_numpy(dtype=np.float64)
    source = np.where(given.notna(), "catalog", np.where(from_value.notna(), "mean conversion value", "default 1"))
    return margin, source.astype(object)


@dataclass(frozen=True)
class OfferValues:
    """The table as serving reads it: each offer's shrunk logged conversion rate, and what it rests on."""

    rates: dict[str, float]
    """The shrunk conversion rate of every offer with logged exposures."""
    prior_rate: float | None
    """The mean over offers, for offers the table does not have; None when the data had no closed exposures."""
    exposures: int
    conversions: int
    weighted: bool
    """Whether any exposure carried a propensity (so the rates are inverse-propensity weighted)."""

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> OfferValues:
        exposures = int(table["exposures"].sum())
        logged = table[table["exposures"] > 0]
        return cls(
            rates=dict(zip(logged["offer_id"].astype(str), logged["shrunk_conversion_rate"], strict=True)),
            prior_rate=float(table["prior_rate"].iloc[0]) if exposures else None,
            exposures=exposures,
            conversions=int(table["conversions"].sum()),
            weighted=bool(table["weighted"].any()),
        )

    @classmethod
    def read(cls, path: Path) -> OfferValues | None:
        """The table at `path`, or None where it was never built."""
        return cls.from_table(pd.read_parquet(path)) if path.exists() else None

    def rates_of(self, offer_ids: list[str]) -> np.ndarray:
        """The conversion rate of each offer: its own, the mean over offers for one the table does not have
        (added to the catalog since), 0 for all when the data had no closed exposures."""
        fill = self.prior_rate if self.prior_rate is not None else 0.0
        return np.array([self.rates.get(o, fill) for o in offer_ids], dtype=np.float64)

    def never_exposed(self, offer_ids: list[str]) -> list[str]:
        """The offers among `offer_ids` without logged exposures of their own, where others have some."""
        return [o for o in offer_ids if o not in self.rates] if self.prior_rate is not None else []
