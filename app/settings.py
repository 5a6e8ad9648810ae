"""Runtime configuration: one Settings class, read from ``STEWARD_*`` environment variables."""

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.errors import InvalidSettings

ENV_PREFIX = "STEWARD_"
MIN_ADMIN_TOKEN = 16
MAX_WORKERS = 64
# Durations an older Steward read in milliseconds (STEWARD_<NAME>_MS), now in seconds
# (STEWARD_<NAME>_SECONDS). The old variable is refused, not ignored: an upgrade must not
# silently drop an operator's tuning.
FORMERLY_MILLISECONDS = ("batch_max_wait", "batch_inline_max")
TRAINING_COPY_MAX_BYTES = 50 * 1024 * 1024
TYPE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+\Z")  # module.Class, fully qualified


class Settings(BaseSettings):
    """Every knob of the service. Bad values are refused when the object is built."""

    # No infinite or NaN durations, limits or multiples: every float setting is a finite number.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, allow_inf_nan=False)

    models_dir: Path = Field(Path("models"), description="Registry root: <name>/<version>/.")
    data_dir: Path = Field(Path("data"), description="Where the embedded SQLite store lives.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the prediction store; default: SQLite in data_dir."
    )
    database_pool_size: int = Field(
        5,
        ge=1,
        le=1000,
        description="PostgreSQL connections each process keeps open to the store (the log "
        "writer, feedback and quality reads share them); ignored for SQLite.",
    )
    database_pool_max_overflow: int = Field(
        5,
        ge=0,
        le=1000,
        description="PostgreSQL connections opened beyond database_pool_size at busy moments, "
        "closed again when returned; ignored for SQLite.",
    )
    database_pool_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How long a store call waits for a free PostgreSQL connection; then the "
        "store counts as unavailable (503 store_unavailable). Ignored for SQLite.",
    )
    default_model: str | None = Field(
        None,
        description="Model served by POST /predict; default: the only model at start-up, if one.",
    )
    required_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models that must serve for /readyz to answer 200 (comma-separated names "
        "in the environment); by default any one serving model is enough.",
    )
    max_instances: int = Field(1000, ge=1, description="Most rows in one /predict request.")
    max_feedback_items: int = Field(1000, ge=1, description="Most items in one /feedback batch.")
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    max_concurrency: int = Field(
        64,
        ge=1,
        description="Requests to /predict and /feedback served at once; more get an immediate "
        "503 `overloaded` with Retry-After. A request counts once its body has arrived.",
    )
    body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Time a client has to send a whole request body once its headers arrived; "
        "a slower one gets 408 `request_timeout` and its connection is closed.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a client has to send a request's headers, from connecting (or from "
        "the request's first byte on a kept-alive connection); a slower one gets 408 "
        "`request_timeout` and its connection is closed. `steward serve` only.",
    )
    max_class_labels: int = Field(
        25,
        ge=2,
        description="Classes that get their own metric label; the rest share `_other`.",
    )
    input_range_multiple: float = Field(
        10.0,
        ge=0,
        description="Numeric inputs more than this many training spans outside a feature's "
        "training range are refused (422 naming the feature); 0 accepts any finite value.",
    )
    target_range_multiple: float = Field(
        10.0,
        ge=0,
        description="A regressor's ground truth and predictions more than this many training "
        "spans outside its training target range are refused; 0 accepts any finite value.",
    )
    batch_max_rows: int = Field(
        256,
        ge=1,
        description="Adaptive batching: most rows in one model call made of several requests "
        "(a larger request still runs, alone).",
    )
    batch_max_wait_seconds: float = Field(
        0.002,
        ge=0,
        le=1,
        description="Adaptive batching: longest a batch stays open while requests keep arriving; "
        "a lone request never waits.",
    )
    batch_inline_max_seconds: float = Field(
        0.002,
        ge=0,
        le=1,
        description="Model calls that took at most this long run on the event-loop thread "
        "(cheaper than a thread hop); slower models run in a worker thread.",
    )
    log_batch_size: int = Field(
        5000, ge=1, description="Most prediction rows written to the store in one transaction."
    )
    log_max_pending: int = Field(
        100_000,
        ge=1,
        description="Acknowledged rows held in memory while the store lags; beyond it, requests "
        "wait up to log_wait_seconds (store behind) or get 503 at once (store failing).",
    )
    log_wait_seconds: float = Field(
        5.0,
        ge=0,
        description="How long /predict waits for room when the log is full only because the "
        "store is behind (backpressure); then 503. A failing store is refused at once.",
    )
    shadow_max_pending_rows: int = Field(
        1000,
        ge=1,
        description="Rows waiting for a candidate's shadow predictions; beyond it, a request's "
        "rows are not shadowed (counted in steward_shadow_failures_total, reason skipped).",
    )
    shadow_window_seconds: float = Field(
        0.02,
        ge=0,
        le=10,
        description="Shadow work is gathered this long, then run as one model call: the "
        "candidate costs the loop one call per window instead of one per request.",
    )
    shadow_wait_seconds: float = Field(
        2.0,
        ge=0,
        description="How long feedback for a row waits for its shadow prediction still running, "
        "so both are labelled together; a shadow later than this misses that label.",
    )
    feedback_pending_wait_seconds: float = Field(
        2.0,
        ge=0,
        le=60,
        description="Feedback for an id not in the store yet (another worker or replica may "
        "still hold it in its buffer) looks for it again until this long after the id was "
        "issued, then 404; an older id is 404 at once. Only with workers above 1 or a "
        "database_url set; at most max_concurrency // 8 (at least 1) requests wait at once, each "
        "for its first 100 young ids (app/late_predictions.py). At least the other processes' "
        "log_flush_interval_seconds plus a write; 0: no wait.",
    )
    quality_window_seconds: float = Field(
        7 * 86400.0,
        gt=0,
        le=3650 * 86400,
        description="Live quality per version (GET /models/{model}) covers the predictions made "
        "in this span before now (by their created_at), labelled since or not.",
    )
    retention_seconds: float | None = Field(
        None,
        gt=0,
        description="Prediction-log retention by age: rows predicted longer ago than this are "
        "deleted in the background (with their shadow rows; labelled rows too). Unset: kept "
        "forever. At least quality_window_seconds, or live quality would lose its rows.",
    )
    retention_max_rows: int | None = Field(
        None,
        ge=1,
        description="Prediction-log retention by count: beyond this many rows in predictions, "
        "the oldest are deleted in the background (with their shadow rows). Unset: no limit.",
    )
    retention_interval_seconds: float = Field(
        60.0,
        gt=0,
        description="How often the retention pass runs (when a retention setting is on).",
    )
    retention_batch_size: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Most prediction rows one retention transaction deletes: the longest it "
        "holds the store's write lock.",
    )
    reload_interval_seconds: float = Field(
        2.0,
        ge=0,
        description="How often the server rescans the registry directory for alias changes, "
        "new versions and new models, and swaps them in while serving; 0 turns it off "
        "(POST /admin/reload still rescans).",
    )
    shutdown_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="How long shutdown waits for the prediction log to write every acknowledged "
        "row, after the requests in flight are done (drain_seconds).",
    )
    drain_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="On SIGTERM, how long requests in flight get to complete (new connections "
        "are refused at once); those still running then are cancelled. Whole seconds, rounded up.",
    )
    log_flush_interval_seconds: float = Field(
        0.05,
        ge=0,
        le=10,
        description="Longest an acknowledged prediction row waits before the writer starts its "
        "write (rows gathered meanwhile share one transaction); 0 writes at once. Bounds what a "
        "crash (SIGKILL, power loss) can lose: the rows acknowledged in this interval, plus the "
        "batch being committed.",
    )
    admin_token: SecretStr | None = Field(
        None,
        description=f"Bearer token of the admin API (/admin/...), at least {MIN_ADMIN_TOKEN} "
        "characters; unset (and no admin_token_file): the admin API answers 403.",
    )
    admin_token_file: Path | None = Field(
        None,
        description="A file holding the admin token (a Kubernetes Secret mounted as a file), "
        "read at start-up, a trailing newline stripped; not with admin_token.",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=f"API keys of /predict and /feedback (comma-separated in the environment), "
        f"each at least {MIN_ADMIN_TOKEN} printable characters without spaces or commas; "
        "none (and no api_keys_file): both are open. Not the admin token.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file holding the API keys, one a line (a Kubernetes Secret mounted as a "
        "file), read at start-up; blank lines and lines starting with # skipped; not with "
        "api_keys.",
    )
    training_copy_max_bytes: int = Field(
        TRAINING_COPY_MAX_BYTES,
        ge=0,
        description="A version trained from a CSV keeps its rows, gzip-compressed, in its folder "
        "(training.csv.gz) when the compressed copy is at most this size; larger, no copy is "
        "kept (the metadata says why) and retraining needs the CSV again. 0 keeps no copy.",
    )
    retrain_holdout_seconds: float = Field(
        86400.0,
        ge=0,
        le=3650 * 86400,
        description="A retraining keeps the labelled predictions of this span before the newest "
        "one out of its training rows: the recent traffic it is evaluated on; 0 keeps none out.",
    )
    gate_metric: Literal["accuracy", "f1_macro"] = Field(
        "accuracy",
        description="What the retraining gate compares for classifiers (regressors: MAE).",
    )
    gate_margin: float = Field(
        0.01,
        ge=0,
        le=1,
        description="How much worse than production a retrained version may score and still "
        "pass the gate: absolute for accuracy and macro-F1 (0.01 = one point), relative for MAE "
        "(0.01 = 1% more error).",
    )
    gate_min_rows: int = Field(
        20,
        ge=1,
        le=1_000_000,
        description="A gate set with fewer rows than this is skipped, not judged: a handful of "
        "rows decides nothing.",
    )
    auto_rollback: bool = Field(
        False,
        description="Automatic rollback for every model without a policy of its own (`steward "
        "auto-rollback`, PUT /admin/models/{model}/auto-rollback): after a promote, production "
        "goes back to the version before when the new one's live accuracy (MAE) is worse than "
        "that version's by more than the margin.",
    )
    auto_rollback_min_labels: int = Field(
        100,
        ge=1,
        le=1_000_000_000,
        description="Automatic rollback: the least labelled predictions of the new production "
        "version, since its promote, before it is judged.",
    )
    auto_rollback_margin: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Automatic rollback: how much worse than the version before a promoted "
        "version may score live before it is rolled back: absolute for accuracy (0.05 = five "
        "points), relative for MAE (0.05 = 5% more error).",
    )
    auto_rollback_interval_seconds: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="How often the server checks the models whose automatic rollback is on.",
    )
    search_seconds: float = Field(
        120.0,
        gt=0,
        le=86400,
        description="Time budget of `steward retrain --search`, an estimate: one cross-validation "
        "of the recipe is timed, and the search tries the whole grid if it fits the rest of the "
        "budget at that cost per candidate, as many random points of it as fit otherwise (at "
        "least one).",
    )
    search_folds: int = Field(
        5,
        ge=2,
        le=20,
        description="Cross-validation folds of `steward retrain --search` (stratified for "
        "classifiers; fewer when a class has fewer training rows).",
    )
    twins: bool = Field(
        True,
        description="Serve a version through its compiled twin (ONNX Runtime or Treelite, "
        "proven equal to its estimator when compiled and again when loaded). Off: every "
        "version serves on scikit-learn; GET /models/{model} and steward_model_runtime say so.",
    )
    allow_pickle: bool = Field(
        True,
        description="Load joblib (pickle) artifacts. Off: a joblib version is refused at load "
        "(reason pickle_refused) and the skops versions serve; what Steward writes is skops.",
    )
    skops_trusted_types: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Types a skops artifact may hold besides skops's defaults and Steward's "
        "own allowlist (fully qualified, comma-separated in the environment, e.g. "
        "sklearn.tree._tree.Tree). A version needing another is refused (untrusted_types).",
    )
    drift: bool = Field(
        True,
        description="Watch served inputs: per model version, a window of its latest rows scored "
        "against its training profile (PSI, KS), data-quality counts and the estimated "
        "accuracy. Off: nothing is kept or computed, GET /models/{model}/drift says `off`.",
    )
    drift_window_rows: int = Field(
        2000,
        ge=10,
        le=100_000,
        description="Drift: the latest served rows kept per model version (fewer for a model "
        "whose rows x (features + classes) would pass 1,000,000 values).",
    )
    drift_window_seconds: float = Field(
        86400.0,
        gt=0,
        le=30 * 86400,
        description="Drift: rows served longer ago than this leave the window.",
    )
    drift_interval_seconds: float = Field(
        10.0,
        gt=0,
        le=86400,
        description="Drift: how often the scores, statuses and estimated accuracy are computed "
        "(in the background, off the request path).",
    )
    drift_min_rows: int = Field(
        500,
        ge=1,
        le=100_000,
        description="Drift: rows in the window (and values of a feature) before it is judged; "
        "until then its status is `collecting`. Between two samples of one distribution, a "
        "PSI is noise of about (bins - 1) x (1/window rows + 1/training rows): fewer rows warn "
        "for nothing.",
    )
    drift_psi_warn: float = Field(
        0.1, gt=0, le=100, description="Drift: a feature's PSI from which its status is `warn`."
    )
    drift_psi_drift: float = Field(
        0.25, gt=0, le=100, description="Drift: a feature's PSI from which its status is `drift`."
    )
    drift_feature_labels: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Drift metrics: a model with at most this many features has a series per "
        "feature; a wider one only its STEWARD_DRIFT_TOP_FEATURES most drifting ones (and its "
        "data-quality counts under feature `_all`), so the label count stays bounded.",
    )
    drift_top_features: int = Field(
        10,
        ge=1,
        le=10_000,
        description="Drift metrics: features exported for a model wider than "
        "STEWARD_DRIFT_FEATURE_LABELS, those with the highest PSI.",
    )
    host: str = Field("127.0.0.1", description="Address `steward serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `steward serve` binds.")
    workers: int = Field(
        1,
        ge=1,
        le=MAX_WORKERS,
        description="Worker processes of `steward serve`, sharing its port: each with its own "
        "event loop, batching lanes, prediction-log writer, drift windows and "
        "STEWARD_MAX_CONCURRENCY. Above 1, /metrics is prometheus-client's multiprocess mode "
        "(every worker's counts, whichever worker answers the scrape).",
    )
    metrics_dir: Path | None = Field(
        None,
        description="With more than one worker: the folder where the workers keep their metric "
        "files (created if missing; a previous run's metric files deleted at start; one holding "
        "other *.db files refused). Unset: a new temporary folder, removed at exit. Ignored with "
        "one worker.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Logging level of the server."
    )
    log_format: Literal["json", "text"] = Field(
        "json",
        description="Server logs: one JSON object a line (json), or plain lines for a terminal "
        "(text); every line of a request carries its request id.",
    )

    @field_validator("required_models", "skops_trusted_types", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("metrics_dir", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # An empty value would be the current folder, whose metric files are deleted at start.
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty: unset it for a temporary folder")
        return value

    @field_validator("skops_trusted_types")
    @classmethod
    def _type_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not TYPE_NAME.match(n)]
        if bad:  # type names are no secret: naming them finds the typo
            shown = ", ".join(repr(n[:80]) for n in bad[:5])
            raise ValueError(
                f"not fully qualified types (module.Class, e.g. sklearn.tree._tree.Tree): {shown}"
            )
        return names

    _file_token: SecretStr | None = PrivateAttr(None)  # admin_token_file's, read at start-up
    _file_api_keys: tuple[SecretStr, ...] = PrivateAttr(())  # api_keys_file's, read at start-up

    @model_validator(mode="after")
    def _drift_judgeable(self) -> "Settings":
        if self.drift_psi_drift <= self.drift_psi_warn:
            raise ValueError(
                f"{ENV_PREFIX}DRIFT_PSI_DRIFT must be above {ENV_PREFIX}DRIFT_PSI_WARN: a feature "
                "would drift before it warns"
            )
        if self.drift_min_rows > self.drift_window_rows:
            raise ValueError(
                f"{ENV_PREFIX}DRIFT_MIN_ROWS must be at most {ENV_PREFIX}DRIFT_WINDOW_ROWS: no "
                "window would ever be judged"
            )
        return self

    @model_validator(mode="after")
    def _retention_covers_the_quality_window(self) -> "Settings":
        if self.retention_seconds is not None and (
            self.retention_seconds < self.quality_window_seconds
        ):
            raise ValueError(
                f"{ENV_PREFIX}RETENTION_SECONDS must be at least "
                f"{ENV_PREFIX}QUALITY_WINDOW_SECONDS: live quality would count rows retention "
                "has deleted"
            )
        return self

    @model_validator(mode="after")
    def _shadow_wait_outlasts_the_window(self) -> "Settings":
        if self.shadow_wait_seconds <= self.shadow_window_seconds:
            raise ValueError(
                f"{ENV_PREFIX}SHADOW_WAIT_SECONDS must be longer than "
                f"{ENV_PREFIX}SHADOW_WINDOW_SECONDS: feedback would stop waiting for a shadow "
                "before it runs, and leave it unlabelled"
            )
        return self

    @model_validator(mode="after")
    def _read_admin_token(self) -> "Settings":
        # Messages name the variable, never the token or the file's content.
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ValueError(
                f"{ENV_PREFIX}ADMIN_TOKEN and {ENV_PREFIX}ADMIN_TOKEN_FILE are both set: "
                "set one of them"
            )
        token, variable = self.admin_token, f"{ENV_PREFIX}ADMIN_TOKEN"
        file_token = None
        if self.admin_token_file is not None:
            variable = f"{ENV_PREFIX}ADMIN_TOKEN_FILE"
            try:
                text = self.admin_token_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ValueError(
                    f"{variable}: cannot read {self.admin_token_file}: {reason}"
                ) from None
            text = text.removesuffix("\n").removesuffix("\r")
            if not text:
                raise ValueError(f"{variable}: {self.admin_token_file} is empty")
            token = file_token = SecretStr(text)
        if token is not None and len(token.get_secret_value()) < MIN_ADMIN_TOKEN:
            raise ValueError(f"{variable}: the token must be at least {MIN_ADMIN_TOKEN} characters")
        self._file_token = file_token
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_separated_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @model_validator(mode="after")
    def _read_api_keys(self) -> "Settings":
        # Messages name the variable and the key's position, never a key or the file's content.
        if self.api_keys and self.api_keys_file is not None:
            raise ValueError(
                f"{ENV_PREFIX}API_KEYS and {ENV_PREFIX}API_KEYS_FILE are both set: set one of them"
            )
        keys, variable = [key.get_secret_value() for key in self.api_keys], f"{ENV_PREFIX}API_KEYS"
        if self.api_keys_file is not None:
            variable = f"{ENV_PREFIX}API_KEYS_FILE"
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ValueError(
                    f"{variable}: cannot read {self.api_keys_file}: {reason}"
                ) from None
            keys = [
                line.strip()
                for line in text.splitlines()
                if line.strip() and not line.strip().startswith("#")
            ]
            if not keys:
                raise ValueError(f"{variable}: {self.api_keys_file} holds no key")
            self._file_api_keys = tuple(SecretStr(key) for key in keys)
        for number, key in enumerate(keys, 1):
            if len(key) < MIN_ADMIN_TOKEN:
                raise ValueError(
                    f"{variable}: key {number} is shorter than {MIN_ADMIN_TOKEN} characters"
                )
            if not (key.isascii() and key.isprintable()) or " " in key or "," in key:
                raise ValueError(
                    f"{variable}: key {number} must be printable ASCII without spaces or commas "
                    "(what an HTTP header can carry)"
                )
        return self

    @property
    def api_key_secrets(self) -> tuple[SecretStr, ...]:
        """The keys /predict and /feedback accept, from api_keys or api_keys_file (none: open)."""
        return tuple(self.api_keys) or self._file_api_keys

    @property
    def admin_secret(self) -> SecretStr | None:
        """The admin API's token, from admin_token or admin_token_file (None: API disabled)."""
        return self.admin_token if self.admin_token is not None else self._file_token

    @property
    def store_url(self) -> str:
        """The prediction store's SQLAlchemy URL."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'steward.db'}"


def load_settings(**values: Any) -> Settings:
    """Settings from the environment, ``values`` taking precedence.

    A bad value, or a variable that was renamed, is an InvalidSettings error of one line naming
    each variable and its rule, never the value itself (a database URL holds a password).
    """
    problems = _renamed_variables()
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            message = error["msg"].removeprefix("Value error, ")  # a validator's own words
            if not error["loc"]:  # a rule across settings: its message names the variables
                problems.append(message)
                continue
            name = "_".join(str(part) for part in error["loc"]).upper()
            problems.append(f"{ENV_PREFIX}{name}: {message[:1].lower()}{message[1:]}")
    if problems:
        raise InvalidSettings(f"invalid settings: {'; '.join(problems)}")
    return settings


def _renamed_variables() -> list[str]:
    given = {name.upper() for name in os.environ}  # variables are read case-insensitively
    problems = []
    for setting in FORMERLY_MILLISECONDS:
        old, new = (f"{ENV_PREFIX}{setting.upper()}_{unit}" for unit in ("MS", "SECONDS"))
        if old in given:
            problems.append(f"{old}: renamed {new}, in seconds (2 ms is 0.002)")
    return problems
