"""Input drift. For now: the reference profile of the training inputs, saved with each version.

Numeric features keep their quantiles, categorical ones their value frequencies; windowed drift
scores over served inputs will compare against these.
"""

from collections import Counter
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from app.artifacts import FeatureProfile
from app.features import FeatureSpec

QUANTILE_PROBABILITIES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


def reference_profile(
    matrix: npt.NDArray[np.generic], features: Sequence[FeatureSpec]
) -> dict[str, FeatureProfile]:
    """Profile each column of ``matrix`` (rows x features, in ``features`` order)."""
    profile = {}
    for index, feature in enumerate(features):
        column = matrix[:, index]
        if not feature.numeric:
            present = [str(v) for v in column if v is not None and v == v]  # v == v drops NaN
            counts = Counter(present)
            total = max(len(present), 1)
            profile[feature.name] = FeatureProfile(
                frequencies={k: round(c / total, 6) for k, c in sorted(counts.items())}
            )
        else:
            values = column.astype(np.float64)
            values = values[np.isfinite(values)]
            quantiles = np.quantile(values, QUANTILE_PROBABILITIES).tolist() if values.size else []
            profile[feature.name] = FeatureProfile(
                probabilities=list(QUANTILE_PROBABILITIES), quantiles=quantiles
            )
    return profile
