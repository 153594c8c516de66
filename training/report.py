"""Marketer reports: for each champion, its strongest drivers in plain words with a chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sendwise.settings import Settings
from training.explain import global_report
from training.train import prepare_features

SAMPLE_ROWS = 2000


def write_reports(settings: Settings, model: str = "all") -> list[Path]:
    from training.datasets import offer_training_set, open_training_set
    from training.registry import champion, connect

    client = connect(settings)
    tables, store = prepare_features(settings, progress=False)
    out_dir = settings.reports_dir / "models"
    pages = []
    wanted = {"open": ["open_propensity"], "send-time": ["send_time"], "offer": ["next_best_offer"]}.get(
        model, ["open_propensity", "send_time", "next_best_offer"]
    )
    for name in wanted:
        found = champion(client, name)
        if found is None:
            continue
        _, booster = found
        if name == "next_best_offer":
            data = offer_training_set(store, tables, settings.conversion_window_days)
            design = data[0].design if data else None
        else:
            data_open = open_training_set(store, tables, settings.label_window_hours)
            design = data_open.design if data_open else None
        if design is None or design.empty:
            continue
        rng = np.random.default_rng(settings.seed)
        sample = design.iloc[rng.choice(len(design), size=min(SAMPLE_ROWS, len(design)), replace=False)]
        sample = pd.DataFrame(sample[booster.feature_name()]).reset_index(drop=True)
        pages.append(global_report(booster, sample, name.replace("_", " "), out_dir))
    return pages
