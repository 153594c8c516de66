"""Marketer reports: for each champion, its strongest drivers in plain words with a chart.

A report reads what the pipeline left in the home and rebuilds nothing: the champions from the registry and,
for each, the sample of the training set its run kept (`training.samples`). Where either is missing, it says
which command makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sendwise.settings import Settings
from training.explain import global_report
from training.registry import MODEL_NAMES, champion, connect
from training.samples import load_sample

MODELS = {"open": ["open_propensity"], "send-time": ["send_time"], "offer": ["next_best_offer"]}
"""`--model` -> the registered models it names (`all`: every one)."""


@dataclass
class ReportResult:
    """The pages written, and for each model that has none, why and what to run."""

    pages: list[Path] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)


def write_reports(settings: Settings, model: str = "all") -> ReportResult:
    """One page per champion named by `model`, in `reports/models/` of the home."""
    client = connect(settings)
    result = ReportResult()
    for name in MODELS.get(model, list(MODEL_NAMES)):
        found = champion(client, name)
        if found is None:
            result.missing[name] = (
                f"no {name} champion in the registry of {settings.home}: run `sendwise pipeline --data DATA_DIR` "
                "(or `sendwise train` after `sendwise ingest DATA_DIR`)"
            )
            continue
        version, booster = found
        run_id = client.get_model_version(name, version).run_id
        sample = load_sample(settings, run_id) if run_id else None
        if sample is None or sample.empty:
            result.missing[name] = (
                f"the {name} champion (v{version}) kept no sample of its training set in "
                f"{settings.training_sets_dir}: run `sendwise train` to train it again (it keeps one)"
            )
            continue
        design = pd.DataFrame(sample[booster.feature_name()])
        result.pages.append(global_report(booster, design, name.replace("_", " "), settings.reports_dir / "models"))
    return result
