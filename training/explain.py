"""SHAP reports for marketers: what drives a model overall, in plain words, with a chart.

Single predictions are explained by `sendwise.explain`, which names the features for both."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from sendwise.explain import readable, shap_values


def global_report(booster: lgb.Booster, design: pd.DataFrame, title: str, out_dir: Path, top: int = 10) -> Path:
    """A marketer's page: the strongest drivers overall in plain words, with a bar chart of mean |SHAP|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values, _ = shap_values(booster, design)
    importance = pd.Series(np.abs(values).mean(axis=0), index=design.columns).sort_values(ascending=False)
    direction = pd.Series(
        [
            np.corrcoef(pd.to_numeric(design[c], errors="coerce").fillna(0), values[:, i])[0, 1]
            if pd.api.types.is_numeric_dtype(design[c]) and design[c].nunique() > 1
            else np.nan
            for i, c in enumerate(design.columns)
        ],
        index=design.columns,
    )
    head = importance.head(top)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(8, 0.4 * len(head) + 1.5))
    axis.barh([readable(f) for f in head.index[::-1]], head.to_numpy()[::-1], color="#2b6cb0")
    axis.set_xlabel("mean |SHAP value| (log-odds)")
    axis.set_title(title)
    figure.tight_layout()
    image = out_dir / f"{title.lower().replace(' ', '_')}_drivers.png"
    figure.savefig(image, dpi=110)
    plt.close(figure)
    lines = [f"# What drives {title}", "", f"![drivers]({image.name})", ""]
    for rank, (feature, weight) in enumerate(head.items(), start=1):
        d = direction.get(feature)
        how = (
            "the higher it is, the higher the prediction"
            if d is not None and not np.isnan(d) and d > 0.2
            else "the higher it is, the lower the prediction"
            if d is not None and not np.isnan(d) and d < -0.2
            else "its effect depends on the customer"
        )
        lines.append(
            f"{rank}. **{readable(feature)}** — moves the prediction by {weight:.2f} log-odds on average; {how}."
        )
    page = out_dir / f"{title.lower().replace(' ', '_')}.md"
    page.write_text("\n".join(lines) + "\n")
    return page
