"""The offers' logged values (features/offer_values.py) on tiny hand-made exposures: closed windows, inverse-
propensity weights, the fitted shrinkage, never-exposed offers, the control arm and the margin rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.offer_values import (
    COLUMNS,
    LOGGED,
    NEVER_EXPOSED,
    NO_EXPOSURES,
    OfferValues,
    beta_prior,
    offer_values,
)

AS_OF = pd.Timestamp("2026-03-01", tz="UTC")
CLOSED = AS_OF - pd.Timedelta(days=20)  # outside a 7-day window


def _exposed(
    offer_id: str,
    converted: list[bool] | int,
    exposures: int | None = None,
    propensity: list[float] | None = None,
    value: float | None = None,
    at: pd.Timestamp = CLOSED,
) -> pd.DataFrame:
    """Exposures of one offer: `converted` flags, or a count of conversions among `exposures`."""
    flags = converted if isinstance(converted, list) else [i < converted for i in range(exposures or 0)]
    n = len(flags)
    return pd.DataFrame(
        {
            "customer_id": [f"c-{offer_id}-{i}" for i in range(n)],
            "offer_id": offer_id,
            "exposed_at": at,
            "propensity": propensity if propensity is not None else [np.nan] * n,
            "decision_id": None,
            "converted": flags,
            "value": [value if c and value is not None else np.nan for c in flags],
        }
    )


def _offers(*rows: tuple[str, str, float | None]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["offer_id", "kind", "margin"])


def _by_offer(table: pd.DataFrame) -> pd.DataFrame:
    return table.set_index("offer_id")


def test_without_propensities_plain_rates_shrunk_by_the_fitted_beta_prior() -> None:
    exposures = pd.concat([_exposed("a", 10, 100), _exposed("b", 30, 100), _exposed("c", 50, 100)])
    offers = _offers(("a", "discount", 10.0), ("b", "discount", 5.0), ("c", "content", 1.0))

    table = _by_offer(offer_values(exposures, offers, AS_OF, 7))

    assert table["exposures"].tolist() == [100, 100, 100] and table["conversions"].tolist() == [10, 30, 50]
    assert table["conversion_rate"].tolist() == pytest.approx([0.1, 0.3, 0.5])
    assert not table["weighted"].any()
    assert table["ips_conversion_rate"].tolist() == pytest.approx([0.1, 0.3, 0.5])  # plain means
    assert table["effective_exposures"].tolist() == pytest.approx([100.0, 100.0, 100.0])
    # Kleinman's moments: mean 0.3; spread sum n (r - mean)^2 / (mean (1 - mean)) = 8 / 0.21 against 2 by
    # chance; rho = (8 / 0.21 - 2) / (300 - 100 - 2); prior exposures = 1 / rho - 1.
    prior = 1 / ((8 / 0.21 - 2) / 198) - 1
    assert table["prior_rate"].iloc[0] == pytest.approx(0.3)
    assert table["prior_exposures"].iloc[0] == pytest.approx(prior)
    shrunk = [(100 * r + prior * 0.3) / (100 + prior) for r in (0.1, 0.3, 0.5)]
    assert table["shrunk_conversion_rate"].tolist() == pytest.approx(shrunk)
    assert table["value_per_exposure"].tolist() == pytest.approx([10 * shrunk[0], 5 * shrunk[1], shrunk[2]])
    assert table["incremental_value"].isna().all()  # no control arm in the catalog
    assert (table["source"] == LOGGED).all()


def test_inverse_propensity_weights_undo_the_policy_that_chose() -> None:
    # "a" converted where the policy was sure (p 0.5) and not where it rarely shows it (p 0.1); "b" the other
    # way round. Plain rates are equal; weighted by 1/p, "b" converts five times as often.
    exposures = pd.concat(
        [
            _exposed("a", [True, True, False, False], propensity=[0.5, 0.5, 0.1, 0.1]),
            _exposed("b", [False, False, True, True], propensity=[0.5, 0.5, 0.1, 0.1]),
            _exposed("d", [True, False, True], propensity=[0.5, 0.25, np.nan]),  # one without: an average one
            _exposed("e", [True, False, False, False]),  # none has a propensity: the plain mean
        ]
    )
    offers = _offers(("a", "discount", 1.0), ("b", "discount", 1.0), ("d", "discount", 1.0), ("e", "discount", 1.0))

    table = _by_offer(offer_values(exposures, offers, AS_OF, 7))

    assert table.loc[["a", "b"], "conversion_rate"].tolist() == [0.5, 0.5]
    assert table.loc["a", "ips_conversion_rate"] == pytest.approx(4 / 24)
    assert table.loc["b", "ips_conversion_rate"] == pytest.approx(20 / 24)
    assert table.loc["a", "effective_exposures"] == pytest.approx(24**2 / (4 + 4 + 100 + 100))
    assert table.loc["d", "ips_conversion_rate"] == pytest.approx((2 + 3) / (2 + 4 + 3))
    assert table.loc["e", "ips_conversion_rate"] == pytest.approx(0.25)
    assert table.loc["e", "effective_exposures"] == pytest.approx(4.0)
    assert table["weighted"].to_dict() == {"a": True, "b": True, "d": True, "e": False}
    assert table.loc["b", "shrunk_conversion_rate"] > table.loc["a", "shrunk_conversion_rate"]


def test_a_tiny_propensity_weighs_at_most_a_hundred_exposures() -> None:
    exposures = _exposed("a", [True, False], propensity=[0.0001, 0.5])
    table = _by_offer(offer_values(exposures, _offers(("a", "discount", 1.0)), AS_OF, 7))
    assert table.loc["a", "ips_conversion_rate"] == pytest.approx(100 / 102)


def test_a_lucky_offer_with_few_exposures_is_pulled_to_the_mean_and_the_rest_barely_move() -> None:
    counts = {"a": 18, "b": 20, "c": 20, "d": 22, "e": 20}
    exposures = pd.concat([*(_exposed(o, k, 200) for o, k in counts.items()), _exposed("lucky", 2, 2)])
    offers = _offers(*((o, "discount", 1.0) for o in [*counts, "lucky"]))

    table = _by_offer(offer_values(exposures, offers, AS_OF, 7))

    rates = np.array([*(k / 200 for k in counts.values()), 1.0])
    sizes = np.array([200.0] * 5 + [2.0])
    mean, strength = beta_prior(rates, sizes)
    assert mean == pytest.approx(102 / 1002)
    assert 1.0 <= strength <= 1002 / 6  # at most what the average offer has
    assert table.loc["lucky", "shrunk_conversion_rate"] == pytest.approx((2 + strength * mean) / (2 + strength))
    assert table.loc["lucky", "shrunk_conversion_rate"] < mean + 0.05  # from a raw rate of 1.0
    assert (table.loc[list(counts), "shrunk_conversion_rate"] - rates[:5]).abs().max() < 0.01


def test_the_prior_takes_its_bound_when_offers_differ_no_more_than_chance() -> None:
    rates, sizes = np.array([0.1, 0.1, 0.1]), np.array([50.0, 100.0, 150.0])
    assert beta_prior(rates, sizes) == pytest.approx((0.1, 100.0))
    assert beta_prior(np.array([0.1, 0.4]), np.array([10.0, 30.0])) == pytest.approx((0.325, 20.0))  # two offers
    assert beta_prior(np.zeros(4), np.full(4, 25.0)) == pytest.approx((0.0, 25.0))  # no conversions at all


def test_a_never_exposed_offer_gets_the_mean_over_offers_and_says_so() -> None:
    exposures = pd.concat([_exposed("a", 10, 100), _exposed("b", 30, 100), _exposed("c", 50, 100)])
    offers = _offers(("a", "discount", 1.0), ("b", "discount", 1.0), ("c", "discount", 1.0), ("new", "discount", 4.0))

    table = _by_offer(offer_values(exposures, offers, AS_OF, 7))

    assert table.loc["new", "exposures"] == 0 and np.isnan(table.loc["new", "conversion_rate"])
    assert table.loc["new", "shrunk_conversion_rate"] == pytest.approx(0.3)
    assert table.loc["new", "value_per_exposure"] == pytest.approx(4 * 0.3)
    assert table.loc["new", "source"] == NEVER_EXPOSED
    values = OfferValues.from_table(table.reset_index())
    assert values.never_exposed(["a", "new", "added-since"]) == ["new", "added-since"]
    assert values.rates_of(["a", "new", "added-since"]).tolist() == pytest.approx(
        [table.loc["a", "shrunk_conversion_rate"], 0.3, 0.3]
    )
    assert (values.exposures, values.conversions, values.weighted) == (300, 90, False)


def test_incremental_value_is_over_the_control_arm() -> None:
    exposures = pd.concat([_exposed("hold", 20, 400), _exposed("a", 30, 300), _exposed("b", 8, 100)])
    offers = _offers(("hold", "control", 10.0), ("a", "discount", 12.0), ("b", "discount", 30.0))

    table = _by_offer(offer_values(exposures, offers, AS_OF, 7))

    value = table["shrunk_conversion_rate"] * table["margin"]
    assert table["value_per_exposure"].tolist() == pytest.approx(value.tolist())
    assert table["incremental_value"].tolist() == pytest.approx((value - value["hold"]).tolist())
    assert table.loc["hold", "incremental_value"] == 0.0
    assert table.loc["b", "incremental_value"] > table.loc["a", "incremental_value"] > 0


def test_only_closed_conversion_windows_count_and_an_offer_may_have_its_own() -> None:
    recent = AS_OF - pd.Timedelta(days=3)  # may still convert
    exposures = pd.concat(
        [
            _exposed("a", 1, 10),
            _exposed("a", 0, 50, at=recent),
            _exposed("slow", 2, 10, at=AS_OF - pd.Timedelta(days=40)),
            _exposed("slow", 0, 30),  # 20 days ago: inside the offer's own 30-day window
            _exposed("gone", 5, 5),  # no longer in the catalog
        ]
    )
    offers = _offers(("a", "discount", 1.0), ("slow", "discount", 1.0)).assign(conversion_window_days=[np.nan, 30])

    table = _by_offer(offer_values(exposures, offers, AS_OF, 7))

    assert table["exposures"].to_dict() == {"a": 10, "slow": 10}
    assert table["conversion_rate"].to_dict() == pytest.approx({"a": 0.1, "slow": 0.2})
    assert "gone" not in table.index


def test_margin_from_the_catalog_else_the_mean_conversion_value_else_one() -> None:
    exposures = pd.concat(
        [_exposed("given", 2, 10, value=99.0), _exposed("valued", 2, 10, value=40.0), _exposed("bare", 2, 10)]
    )
    offers = _offers(("given", "discount", 7.0), ("valued", "discount", None), ("bare", "content", None))

    table = _by_offer(offer_values(exposures, offers, AS_OF, 7))

    assert table["margin"].to_dict() == {"given": 7.0, "valued": 40.0, "bare": 1.0}
    assert table["margin_source"].to_dict() == {
        "given": "catalog",
        "valued": "mean conversion value",
        "bare": "default 1",
    }


def test_without_exposures_no_rate_is_known_and_the_table_keeps_its_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    offers = _offers(("a", "discount", 3.0), ("hold", "control", 1.0))
    empty = _exposed("a", [])
    for exposures in (empty, _exposed("a", 0, 5, at=AS_OF - pd.Timedelta(days=1))):  # none, or none closed
        table = offer_values(exposures, offers, AS_OF, 7)
        assert table["offer_id"].tolist() == ["a", "hold"] and (table["exposures"] == 0).all()
        assert table["shrunk_conversion_rate"].isna().all() and (table["source"] == NO_EXPOSURES).all()
        assert table["margin"].tolist() == [3.0, 1.0]
        values = OfferValues.from_table(table)
        assert values.prior_rate is None and values.exposures == 0
        assert values.rates_of(["a", "hold"]).tolist() == [0.0, 0.0] and values.never_exposed(["a"]) == []
    no_catalog = offer_values(empty, None, AS_OF, 7)
    assert no_catalog.empty and list(no_catalog.columns) == list(COLUMNS)
    path = tmp_path / "offer_values.parquet"
    table.to_parquet(path)
    assert OfferValues.read(path) == OfferValues.from_table(table)
    assert OfferValues.read(tmp_path / "missing.parquet") is None
