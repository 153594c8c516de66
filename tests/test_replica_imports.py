"""What a service worker imports: LightGBM without the scikit-learn estimators it never uses."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_worker_imports_lightgbm_without_scikit_learn_and_its_boosters_predict_the_same() -> None:
    """In a fresh interpreter, as a worker starts: scikit-learn stays out, and a booster trained there (LightGBM's
    core API) predicts what the same model predicts with scikit-learn imported."""
    script = """
import json
import sys
from sendwise.champions import import_lightgbm_without_sklearn
import_lightgbm_without_sklearn()
import lightgbm as lgb
import numpy as np
assert "sklearn" not in sys.modules and not lgb.compat.SKLEARN_INSTALLED
rng = np.random.default_rng(0)
x = rng.random((200, 3))
booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(x, x[:, 0] > 0.5), 5)
text = booster.model_to_string()
import sklearn  # anything imported later may still import it
print(json.dumps({"model": text, "predicted": booster.predict(x[:5]).tolist()}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    found = json.loads(out)
    import lightgbm as lgb  # this process: with scikit-learn, as training imports it
    import numpy as np

    x = np.random.default_rng(0).random((200, 3))
    assert lgb.Booster(model_str=found["model"]).predict(x[:5]).tolist() == found["predicted"]
    assert len(set(found["predicted"])) > 1  # a model that tells rows apart
