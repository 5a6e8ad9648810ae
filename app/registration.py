"""Register a model trained elsewhere: load and check the artifact, survey a sample of its
inputs for the contract, score it on the sample when the sample carries the answers, save.

The file is joblib or pickle (unpickled: it runs the code it names, so only a trusted file), or
skops (``.skops``: built from the types the policy trusts, nothing else)."""

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from app.artifact_formats import ArtifactFormat, ArtifactPolicy, UntrustedTypes, load_skops
from app.artifacts import DataSource, ModelMetadata, Task, TrainingData, check_name, save_version
from app.compiling import compile_estimator
from app.drift import reference_profile
from app.errors import ArtifactError
from app.feature_survey import infer_features, probe_features, read_frame
from app.training import evaluate, frame_rows, read_csv, target_range

NOT_AN_ESTIMATOR = "not a joblib or pickle file of a scikit-learn estimator"
NOT_A_SKOPS_ESTIMATOR = "not a skops file of a scikit-learn estimator"


def register_estimator(
    root: Path,
    artifact: Path,
    name: str,
    sample_csv: Path,
    *,
    target: str | None = None,
    promote: bool = False,
    artifact_format: ArtifactFormat = "joblib",
    policy: ArtifactPolicy | None = None,
) -> ModelMetadata:
    """Register a model trained elsewhere; its schema and profile come from a sample of inputs.

    Categorical features accept the values present in the sample, and unseen ones too when the
    model handles them; features the model takes missing accept null. With ``target``, that
    column of the sample holds the true answers: it is not a feature, and the model is scored on
    the sample (metrics, and a regressor's target range). A ``.skops`` file is loaded as
    ``policy`` allows; the version is stored in ``artifact_format``.
    """
    check_name(name)
    if artifact.suffix == ".skops":
        estimator = _checked(artifact, _load_skops(artifact, policy or ArtifactPolicy()))
    else:
        estimator = _checked(artifact, _load_joblib(artifact))
    if is_classifier(estimator):
        task: Task = "classification"
    elif is_regressor(estimator):
        task = "regression"
    else:
        raise ArtifactError(f"{artifact}: not a scikit-learn classifier or regressor")
    sample = read_csv(sample_csv)
    labels = None
    if target is not None:
        if target not in sample.columns:
            raise ArtifactError(f"{sample_csv}: no column {target!r} (the --target)")
        labels = sample.pop(target)
    names_in = getattr(estimator, "feature_names_in_", None)
    if names_in is not None:
        columns = [str(c) for c in names_in]
        missing = [c for c in columns if c not in sample.columns]
        if missing:
            raise ArtifactError(f"{sample_csv}: missing feature columns {', '.join(missing)}")
        sample = sample[columns]
    expected = getattr(estimator, "n_features_in_", sample.shape[1])
    if sample.shape[1] != expected:
        extra = "" if target or sample.shape[1] <= expected else " (name a target column: --target)"
        raise ArtifactError(
            f"{sample_csv}: {sample.shape[1]} columns, the model expects {expected} features{extra}"
        )
    frame = read_frame(sample)
    features = infer_features(frame)
    draft = ModelMetadata(
        name=name,
        task=task,
        features=features,
        classes=estimator.classes_.tolist() if task == "classification" else None,
        has_proba=task == "classification" and hasattr(estimator, "predict_proba"),
        input_format="dataframe" if names_in is not None else "array",
        artifact_format=artifact_format,
        description=f"Registered from {artifact.name}; schema from {sample_csv.name}"
        + (f", scored on its column {target!r}." if target else "."),
    )
    rows = frame_rows(frame)
    contract = draft.contract()
    try:
        predicted = estimator.predict(contract.matrix(rows))
    except Exception as exc:
        raise ArtifactError(f"{artifact}: the model does not accept {sample_csv}: {exc}") from exc
    profile = reference_profile(np.asarray(contract.matrix(rows), dtype=object), features)
    update: dict[str, Any] = {
        "features": probe_features(contract, estimator, rows[0]),
        "reference_profile": profile,
        "sample_rows": len(rows),
        "training_data": TrainingData(
            sources=[DataSource(kind="sample", name=sample_csv.name, rows=len(rows))],
            rows=len(rows),
            target=target,
            no_copy_reason="registered: trained elsewhere, Steward holds no training data",
        ),
    }
    if labels is not None:
        update |= _score_on_sample(
            draft, labels, np.asarray(predicted), f"{sample_csv}: {target!r}"
        )
    draft = draft.model_copy(update=update)
    # The sample is data the model was not fitted on (as far as Steward knows): its held-out rows.
    compiled = compile_estimator(root, draft, estimator, (contract.matrix(rows), "sample"))
    return save_version(root, draft, estimator, promote=promote, compiled=compiled)


def _load_joblib(artifact: Path) -> Any:
    """What a joblib or pickle file holds, or one line saying why not."""
    try:
        estimator = joblib.load(artifact)
    except OSError as exc:
        if exc.errno is None:  # gzip and friends: a damaged or foreign file, not an I/O error
            raise ArtifactError(f"{artifact}: {NOT_AN_ESTIMATOR}") from exc
        raise ArtifactError(f"{artifact}: cannot read: {exc.strerror}") from exc
    except (ImportError, AttributeError) as exc:  # a class defined in a module absent here
        raise ArtifactError(f"{artifact}: needs code that is not importable here: {exc}") from exc
    except Exception as exc:  # unpickling other bytes fails in many ways, none worth repeating
        raise ArtifactError(f"{artifact}: {NOT_AN_ESTIMATOR}") from exc
    return estimator


def _load_skops(artifact: Path, policy: ArtifactPolicy) -> Any:
    """What a skops file holds, built only if every type in it is trusted by ``policy``."""
    try:
        data = artifact.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{artifact}: cannot read: {exc.strerror}") from exc
    try:
        return load_skops(data, policy, str(artifact))
    except UntrustedTypes:
        raise
    except (ImportError, AttributeError) as exc:
        raise ArtifactError(f"{artifact}: needs code that is not importable here: {exc}") from exc
    except Exception as exc:  # not a zip, or not skops's schema
        raise ArtifactError(f"{artifact}: {NOT_A_SKOPS_ESTIMATOR}") from exc


def _checked(artifact: Path, estimator: Any) -> Any:
    """``estimator`` if it is a fitted scikit-learn estimator, else one line saying why not."""
    if not isinstance(estimator, BaseEstimator):
        raise ArtifactError(f"{artifact}: not a scikit-learn classifier or regressor")
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise ArtifactError(f"{artifact}: the estimator is not fitted") from exc
    return estimator


def _score_on_sample(
    draft: ModelMetadata, labels: pd.Series, predicted: Any, source: str
) -> dict[str, Any]:
    """Metrics of the model on the sample's labelled rows, and a regressor's target range."""
    known = labels.notna().to_numpy()
    if not known.any():
        raise ArtifactError(f"{source} has no values")
    actual = labels[known]
    if draft.task == "classification":
        classes = draft.classes or []
        if all(isinstance(c, str) for c in classes):
            actual = actual.astype(str)  # "1" read back from a CSV as 1
        strangers = set(actual) - set(classes)
        if strangers:
            raise ArtifactError(
                f"{source} holds {len(strangers)} value(s) that are not classes of the model"
            )
    elif is_bool_dtype(actual) or not is_numeric_dtype(actual):
        raise ArtifactError(f"{source} is not numeric; a regressor's target is")
    try:
        metrics = evaluate(draft.task, actual.to_numpy(), predicted[known])
    except ValueError as exc:  # e.g. a non-finite prediction
        raise ArtifactError(f"{source}: cannot score the model on it: {exc}") from exc
    return {"metrics": metrics, **target_range(draft.task, actual)}
