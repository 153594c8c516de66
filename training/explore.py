"""What a data scientist looks at in a home: the features, what drives a champion's predictions, and how they
differ between segments of the rows it learned from. The explore notebook calls these.

Features are read from the home's feature tables and described by the Feast definitions; drivers are SHAP
values of a champion on the sample of its training set that training kept (`training.samples`), computed and
named by `sendwise.explain` as the marketer reports and `/v1/explain` name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from feast import FeatureStore
from matplotlib.figure import Figure

from sendwise.explain import readable, shap_values
from sendwise.registry import champion, connect
from sendwise.settings import Settings
from training import samples
from training.registry import RegistryError

TABLES = ("customer_features", "engagement_features", "customer_attributes")
"""The per-customer feature tables, joined on the customer into one row each (their latest)."""
SEGMENT_BINS = 4
OVERVIEW = ("n_emails", "n_human_opens", "days_since_human_open", "n_sessions", "days_since_session", "signup_at_days")
"""The features `plot_distributions` shows unless asked for others: engagement, recency and tenure."""


def feature_catalog(store: FeatureStore) -> pd.DataFrame:
    """Every feature each FeatureService gives its model: the service, view, name, type and description (from
    the Feast registry the pipeline applied)."""
    rows = [
        {
            "service": service.name,
            "view": projection.name,
            "feature": f.name,
            "type": str(f.dtype),
            "description": f.description,
        }
        for service in sorted(store.list_feature_services(), key=lambda s: s.name)
        for projection in service.feature_view_projections
        for f in projection.features
    ]
    return pd.DataFrame(rows, columns=["service", "view", "feature", "type", "description"])


def latest_features(settings: Settings) -> pd.DataFrame:
    """One row per customer: their latest row of each per-customer feature table, scalar features only (the
    hour profiles, arrays of 24, are left out)."""
    frames = []
    for table in TABLES:
        path = settings.feature_tables_dir / f"{table}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: `sendwise pipeline --data DATA_DIR` builds the features")
        frame = pd.read_parquet(path).sort_values("event_timestamp")
        frame = frame.drop_duplicates("customer_id", keep="last").drop(columns="event_timestamp")
        arrays = [c for c in frame.columns if frame[c].dtype == object and _holds_arrays(frame[c])]
        frames.append(frame.drop(columns=arrays).set_index("customer_id"))
    return frames[0].join(frames[1:], how="left").reset_index()


def _holds_arrays(column: pd.Series) -> bool:
    first = column.dropna()
    return len(first) > 0 and isinstance(first.iloc[0], list | tuple | np.ndarray)


def describe_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Per feature: missing share, and mean with the 10th, 50th and 90th percentiles (numbers) or the number
    of distinct values and the most common one (text)."""
    rows = []
    for column in frame.columns.drop("customer_id", errors="ignore"):
        values = frame[column]
        row: dict[str, object] = {"feature": column, "reads as": readable(column), "missing": values.isna().mean()}
        if pd.api.types.is_numeric_dtype(values):
            q = values.quantile([0.1, 0.5, 0.9])
            row |= {"mean": values.mean(), "p10": q[0.1], "median": q[0.5], "p90": q[0.9]}
        else:
            counts = values.astype("string").value_counts()
            row |= {"distinct": len(counts), "most common": counts.index[0] if len(counts) else None}
        rows.append(row)
    return pd.DataFrame(rows).set_index("feature")


def plot_distributions(frame: pd.DataFrame, columns: list[str] | None = None, bins: int = 30) -> Figure:
    """A histogram per numeric feature, a bar of the ten most common values per text feature (default: the
    `OVERVIEW` features)."""
    columns = list(OVERVIEW) if columns is None else columns
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"no feature {missing[0]!r}; the frame has {', '.join(map(str, frame.columns))}")
    across = min(3, len(columns))
    down = -(-len(columns) // across)
    figure = Figure(figsize=(5 * across, 3.2 * down), layout="constrained")
    axes = np.atleast_1d(figure.subplots(down, across)).ravel()
    for axis, column in zip(axes, columns, strict=False):
        values = frame[column].dropna()
        if pd.api.types.is_numeric_dtype(values):
            axis.hist(values.to_numpy(dtype=float), bins=bins, color="#2b6cb0")
        else:
            counts = values.astype("string").value_counts().head(10)
            axis.barh(counts.index[::-1], counts.to_numpy()[::-1], color="#2b6cb0")
        axis.set_title(readable(column), fontsize=9)
    for axis in axes[len(columns) :]:
        axis.set_visible(False)
    return figure


@dataclass
class Drivers:
    """A champion's SHAP values (log-odds) on the sample of the training set it learned from."""

    name: str
    version: str
    design: pd.DataFrame = field(repr=False)
    values: np.ndarray = field(repr=False)
    base: float

    def prediction(self) -> np.ndarray:
        """The model's probability for each row: the base value plus the row's SHAP values, as a probability."""
        return 1.0 / (1.0 + np.exp(-(self.base + self.values.sum(axis=1))))

    def table(self) -> pd.DataFrame:
        """Every feature, strongest first: how much it moves predictions on average (mean |SHAP|) and which way
        (the correlation of a numeric feature's value with its SHAP value; NaN where it has no one direction)."""
        strength = np.abs(self.values).mean(axis=0)
        direction = [self._direction(k) for k in range(self.values.shape[1])]
        table = pd.DataFrame(
            {
                "feature": self.design.columns,
                "reads as": [readable(c) for c in self.design.columns],
                "mean |SHAP|": strength,
                "value vs SHAP correlation": direction,
            }
        )
        return table.sort_values("mean |SHAP|", ascending=False).reset_index(drop=True)

    def _direction(self, k: int) -> float:
        column = self.design.iloc[:, k]
        if not pd.api.types.is_numeric_dtype(column) or column.nunique() < 2 or np.std(self.values[:, k]) == 0:
            return float("nan")
        values = column.to_numpy(dtype=float)
        known = ~np.isnan(values)
        return float(np.corrcoef(values[known], self.values[known, k])[0, 1]) if known.sum() > 2 else float("nan")


def champion_drivers(settings: Settings, name: str) -> Drivers:
    """SHAP values of `name`'s champion on its training run's sample; a `RegistryError` names what is missing
    and the command that makes it."""
    client = connect(settings)
    found = champion(client, name)
    if found is None:
        raise RegistryError(
            f"{name} has no champion in {settings.home}: `sendwise pipeline --data DATA_DIR` trains one"
        )
    version, booster = found
    run_id = client.get_model_version(name, version).run_id or ""
    design = samples.load_sample(settings, run_id)
    if design is None:
        raise RegistryError(
            f"{name} v{version} has no training-set sample in {settings.training_sets_dir}: `sendwise train` keeps one"
        )
    values, base = shap_values(booster, design[booster.feature_name()])
    return Drivers(name, version, design[booster.feature_name()], values, base)


def plot_drivers(drivers: Drivers, top: int = 12) -> Figure:
    """The strongest drivers (mean |SHAP|), and the strongest numeric one's SHAP value against its value."""
    table = drivers.table()
    head = table.head(top)
    figure = Figure(figsize=(14, 0.35 * len(head) + 2), layout="constrained")
    bars, dependence = figure.subplots(1, 2, width_ratios=[3, 2])
    bars.barh(head["reads as"][::-1], head["mean |SHAP|"][::-1], color="#2b6cb0")
    bars.set_xlabel("mean |SHAP value| (log-odds)")
    bars.set_title(f"What drives {drivers.name} v{drivers.version}")
    bars.tick_params(axis="y", labelsize=8)
    numeric = [f for f in table["feature"] if pd.api.types.is_numeric_dtype(drivers.design[f])]
    if numeric:
        feature = numeric[0]
        k = list(drivers.design.columns).index(feature)
        dependence.scatter(drivers.design[feature], drivers.values[:, k], s=6, alpha=0.4, color="#c05621")
        dependence.axhline(0, color="grey", linewidth=1)
        dependence.set(xlabel=readable(feature), ylabel="SHAP value (log-odds)", title="Its effect, row by row")
    return figure


def segments(drivers: Drivers, by: str, bins: int = SEGMENT_BINS) -> pd.DataFrame:
    """The sample's rows by segment of one feature (its values, or quantile bins of a numeric feature with
    many): share of rows, mean predicted probability, what the feature itself adds there (its mean SHAP value,
    log-odds), and the other driver whose mean SHAP value in the segment differs most from its mean over all
    rows (what else sets the segment apart), with that difference."""
    if by not in drivers.design.columns:
        raise KeyError(f"no feature {by!r} in {drivers.name}'s sample; it has {', '.join(drivers.design.columns)}")
    column = drivers.design[by]
    if pd.api.types.is_numeric_dtype(column) and column.nunique() > bins:
        groups = pd.qcut(column, bins, duplicates="drop").astype("string")
    else:
        groups = column.astype("string")
    groups = groups.fillna("unknown")
    shap = pd.DataFrame(drivers.values, columns=drivers.design.columns)
    others = shap.drop(columns=by)
    overall = others.mean()
    prediction = pd.Series(drivers.prediction())
    rows = []
    for segment, index in groups.groupby(groups, sort=True).groups.items():
        apart = others.loc[index].mean() - overall
        feature = str(apart.abs().idxmax()) if len(apart) else by
        rows.append(
            {
                by: segment,
                "share of rows": len(index) / len(groups),
                "mean predicted": float(prediction.loc[index].mean()),
                f"{by} SHAP (log-odds)": float(shap.loc[index, by].mean()),
                "also sets it apart": readable(feature),
                "by (log-odds vs all rows)": float(apart.get(feature, 0.0)),
            }
        )
    return pd.DataFrame(rows).set_index(by)
