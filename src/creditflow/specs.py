"""Typed, validated configuration: the dataset spec and the experiment spec, loaded from YAML.

Both are frozen pydantic models built once at the edge (`load_dataset_spec`, `load_experiment_spec`);
everything downstream takes these objects, never raw dictionaries or environment variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from creditflow.errors import SpecError, first_line

C = TypeVar("C", bound=BaseModel)

DEFAULT_MODEL_NAME = "credit-default"  # the registered model every command uses unless told otherwise
CHAMPION_URI = f"models:/{DEFAULT_MODEL_NAME}@champion"

GroupKind = Literal["numeric", "skewed", "categorical", "indicator"]
Direction = Literal["increasing", "decreasing"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ColumnSpec(_Frozen):
    """One raw input column: its model name, preprocessing group and value rules."""

    name: str
    group: GroupKind
    display: str = ""
    min: float | None = None
    max: float | None = None
    nullable: bool = True
    integer: bool = False
    sentinels: tuple[float, ...] = ()
    cap: float | None = None  # model-side ceiling (winsorising), after the value rules
    categories: tuple[str, ...] = ()
    reason: str = ""  # adverse-action statement when this column is a principal reason (default: its label)
    monotone: Direction | None = None  # P(default) never moves against it as this column alone rises (gate (f))

    @model_validator(mode="after")
    def _ordered(self) -> ColumnSpec:
        if self.monotone and self.group == "categorical":
            raise ValueError(f"column '{self.name}': a categorical column has no order to be monotone in")
        return self

    @property
    def label(self) -> str:
        """Readable name for plots and reason codes."""
        return self.display or self.name.replace("_", " ")

    @property
    def statement(self) -> str:
        """What an adverse-action notice says when this column is a reason; a category's text is appended."""
        return self.reason or self.label


class DerivedSpec(_Frozen):
    """An indicator derived from one column: `column op value` as 0/1."""

    column: str
    op: Literal["gt", "ge", "lt", "le", "isnull"]
    value: float | None = None
    display: str = ""

    @model_validator(mode="after")
    def _value_needed(self) -> DerivedSpec:
        if self.op != "isnull" and self.value is None:
            raise ValueError(f"op '{self.op}' needs a value")
        return self


class TargetSpec(_Frozen):
    column: str
    positive: int | str = 1


class GeneratedSpec(_Frozen):
    rows: int = Field(150_000, gt=0)
    seed: int = 42
    segments: int = Field(0, ge=0, le=99)  # N > 0 adds the column Region (R01..RNN): docs/generated_data.md


class GroupSpec(_Frozen):
    """Preprocessing of one column group for linear models (trees get raw values and native NaN)."""

    impute: Literal["median", "mean", "most_frequent", "none"] = "median"
    add_indicator: bool = False
    scale: bool = True
    power: bool = False
    encode: Literal["onehot", "ordinal"] = "onehot"


DEFAULT_GROUPS: dict[str, GroupSpec] = {
    "numeric": GroupSpec(),
    "skewed": GroupSpec(power=True),
    "categorical": GroupSpec(impute="most_frequent", scale=False),
    "indicator": GroupSpec(impute="none", scale=False),
}


class ReportBySpec(_Frozen):
    """A column the model card reports performance and approval rate by: a numeric one in bands, a categorical one
    by category."""

    bands: tuple[float, ...] = ()  # band edges, increasing: [30, 45, 60] gives <30, 30-44, 45-59, 60+


class DatasetSpec(_Frozen):
    """What a tabular credit data set looks like and how each column is prepared."""

    name: str
    description: str = ""  # who the applicants are and what default means: the model card's intended use
    period: str = ""  # when the applications and their outcomes were observed, as the data's provider states it
    source: str = "generated"
    generated: GeneratedSpec = GeneratedSpec()
    target: TargetSpec
    id_column: str | None = None  # none: row numbers identify applicants in training (scoring by id needs one)
    sentinel_action: Literal["missing", "keep"] = "missing"
    columns: dict[str, ColumnSpec]
    derived: dict[str, DerivedSpec] = {}
    groups: dict[GroupKind, GroupSpec] = {}
    report_by: dict[str, ReportBySpec] = {}  # raw column -> its subgroups in the model card
    segment: str | None = None  # a column of the data that routes rows to segment models (a key, not a feature)

    @model_validator(mode="after")
    def _check_segment(self) -> DatasetSpec:
        if self.segment and self.segment in {*self.columns, self.target.column, self.id_column}:
            raise ValueError(f"segment column '{self.segment}' must not be a feature, the target or the id column")
        return self

    @model_validator(mode="after")
    def _check_report_by(self) -> DatasetSpec:
        for raw, report in self.report_by.items():
            if raw not in self.columns:
                raise ValueError(f"report_by names unknown column '{raw}'")
            categorical = self.columns[raw].group == "categorical"
            if categorical == bool(report.bands):
                raise ValueError(f"report_by '{raw}': " + ("a categorical column is reported by category, not bands"
                                                           if categorical else "a numeric column needs bands"))
            if list(report.bands) != sorted(set(report.bands)):
                raise ValueError(f"report_by '{raw}': bands must be increasing")
        return self

    @model_validator(mode="after")
    def _check_names(self) -> DatasetSpec:
        names = [c.name for c in self.columns.values()] + list(self.derived)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model column names used twice: {', '.join(dupes)}")
        known = {c.name for c in self.columns.values()}
        for key, d in self.derived.items():
            if d.column not in known:
                raise ValueError(f"derived '{key}' uses unknown column '{d.column}'")
        if self.target.column in self.columns or (self.id_column and self.id_column in self.columns):
            raise ValueError("target and id column must not be listed under columns")
        return self

    def require_id_column(self, needed_by: str) -> str:
        """The id column, or one line saying that `needed_by` (batch scoring, the feature store) needs one."""
        if not self.id_column:
            raise SpecError(f"dataset spec '{self.name}' names no id_column: {needed_by} needs one "
                            "(add `id_column: NAME` to the spec)")
        return self.id_column

    @property
    def is_generated(self) -> bool:
        return self.source == "generated"

    @property
    def raw_columns(self) -> list[str]:
        """Applicant columns as named in the raw file: the model's input signature."""
        return list(self.columns)

    def group_spec(self, kind: GroupKind) -> GroupSpec:
        return self.groups.get(kind, DEFAULT_GROUPS[kind])

    def model_columns(self, kind: GroupKind) -> list[str]:
        """Model-side (renamed) column names in a group; derived indicators are in `indicator`."""
        cols = [c.name for c in self.columns.values() if c.group == kind]
        return cols + list(self.derived) if kind == "indicator" else cols

    def raw_name_of(self, model_name: str) -> str:
        """The raw input column a model-side column comes from (derived → its source column)."""
        if model_name in self.derived:
            model_name = self.derived[model_name].column
        for raw, col in self.columns.items():
            if col.name == model_name:
                return raw
        raise KeyError(model_name)

    def monotone_columns(self) -> dict[str, Direction]:
        """Raw column -> its declared direction: what the tree constraints and the monotone gate read."""
        return {raw: col.monotone for raw, col in self.columns.items() if col.monotone}

    def display_names(self) -> dict[str, str]:
        return {raw: col.label for raw, col in self.columns.items()}

    def reason_labels(self) -> list[str]:
        """Column labels in raw-column order: reason codes name columns by their position in it."""
        return [self.columns[c].label for c in self.raw_columns]

    def reason_statements(self) -> list[str]:
        """Adverse-action statements in raw-column order, as `reason_labels`."""
        return [self.columns[c].statement for c in self.raw_columns]


class FloatParam(_Frozen):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class IntParam(_Frozen):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False


class CategoricalParam(_Frozen):
    type: Literal["categorical"]
    choices: tuple[Any, ...]


SearchParam = FloatParam | IntParam | CategoricalParam


class SearchSpec(_Frozen):
    """How hyper-parameters are chosen: none (fixed params), an exhaustive grid, or Optuna TPE."""

    type: Literal["none", "grid", "bayesian"] = "none"
    grid: dict[str, tuple[Any, ...]] = {}
    space: dict[str, SearchParam] = Field(default={})
    trials: int = Field(20, gt=0)
    timeout_seconds: float | None = None
    seed: int = 42

    @model_validator(mode="after")
    def _needs_space(self) -> SearchSpec:
        if self.type == "grid" and not self.grid:
            raise ValueError("a grid search needs 'grid'")
        if self.type == "bayesian" and not self.space:
            raise ValueError("a bayesian search needs 'space'")
        return self


class ExplainSpec(_Frozen):
    """Sizes of the explanation work: rows are subsampled with a fixed seed."""

    enabled: bool = True
    pdp_features: int = Field(4, ge=1)
    pdp_rows: int = Field(2_000, gt=0)
    permutation_repeats: int = Field(5, gt=0)
    permutation_rows: int = Field(5_000, gt=0)
    shap_rows: int = Field(1_000, gt=0)
    waterfalls: int = Field(3, ge=0)
    seed: int = 0


class SegmentsSpec(_Frozen):
    """A model per segment of the dataset's segment column, beside the global model (`creditflow segments`)."""

    column: str | None = None  # default: the dataset spec's `segment`
    min_rows: int = Field(1_000, ge=10)  # a segment with fewer rows trains nothing: the global model serves it
    explain: ExplainSpec = ExplainSpec(pdp_features=2, pdp_rows=300, permutation_repeats=2, permutation_rows=500,
                                       shap_rows=100, waterfalls=1)  # each segment's budget (the global: `explain`)
    workers: int = Field(0, ge=0)  # segments trained at once on this machine (0: one per core)


class ExperimentSpec(_Frozen):
    """One experiment: which data, which model family, how to search, how to evaluate."""

    name: str
    description: str = ""
    dataset: str
    family: str
    params: dict[str, Any] = {}
    search: SearchSpec = SearchSpec()
    cv_folds: int = Field(5, ge=2)
    test_size: float = Field(0.2, gt=0, lt=1)
    seed: int = 42
    metric: Literal["roc_auc", "average_precision", "neg_log_loss", "neg_brier_score"] = "roc_auc"
    threshold: float = Field(0.2, gt=0, lt=1)
    reason_codes: int = Field(4, ge=1, le=5)  # principal reasons per decline: Reg. B expects at most four
    # "declined": adverse-action reasons only; None (default): every row online and in streams, declined in batch jobs
    reason_codes_for: Literal["all", "declined"] | None = None
    calibration: Literal["none", "sigmoid", "isotonic"] = "none"  # fitted on out-of-fold predictions of the training
    explain: ExplainSpec = ExplainSpec()
    register_as: str | None = DEFAULT_MODEL_NAME
    segments: SegmentsSpec | None = None  # a model per segment too (`creditflow segments`)

    def with_overrides(self, **changes: Any) -> ExperimentSpec:
        """A copy with nested fields replaced (e.g. budgets from the command line), re-validated."""
        data = self.model_dump()
        for dotted, value in changes.items():
            target = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                target = target[key]
            target[leaf] = value
        return validated(ExperimentSpec, data, f"{self.name} (overrides)")


def read_yaml(path: Path, what: str = "spec file") -> dict[str, Any]:
    if not path.is_file():
        raise SpecError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if data is None:  # an empty file: every field at its default
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    return data


def validated(model: type[BaseModel], data: dict[str, Any], origin: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = first_error(exc)
        raise SpecError(f"{origin}: invalid field '{field or '(top level)'}': {message}") from None


def first_error(exc: ValidationError) -> tuple[str, str]:
    """A pydantic error as (dotted field, message without pydantic's "Value error, " prefix): one line for users."""
    err = exc.errors()[0]
    return ".".join(str(p) for p in err["loc"]), str(err["msg"]).removeprefix("Value error, ")


def load_config(model: type[C], path: str | Path | None, what: str, **overrides: Any) -> C:
    """A config object (serving, batch job, stream): its YAML file, if any, with the command line's overrides.

    Overrides that are None or "" were not given. Every mistake is one SpecError line.
    """
    data = read_yaml(Path(path), what) if path else {}
    data.update({k: v for k, v in overrides.items() if v not in (None, "")})
    return validated(model, data, str(path) if path else what)


def load_dataset_spec(path: str | Path) -> DatasetSpec:
    path = Path(path)
    return validated(DatasetSpec, _extended(path, read_yaml(path)), str(path))


def _extended(path: Path, data: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """`extends: other.yaml` (beside this file): that spec's fields, with this file's merged over them."""
    base = data.pop("extends", None)
    if not base:
        return data
    if depth > 5:
        raise SpecError(f"{path}: 'extends' goes more than 5 files deep (a spec extending itself?)")
    parent = path.parent / str(base)
    return _merged(_extended(parent, read_yaml(parent), depth + 1), data)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


GLOBAL_MODEL_TAG = "global_model"  # a segment's registered model: the global model it falls back to (and competes with)


def segment_model_name(global_name: str, segment: str) -> str:
    """The registered model of one segment: `credit-default-R07` for the global model `credit-default`."""
    return f"{global_name}-{segment}"


def load_experiment_spec(path: str | Path) -> tuple[ExperimentSpec, DatasetSpec]:
    """Load an experiment spec and the dataset spec it names (a path relative to the experiment file)."""
    path = Path(path)
    spec: ExperimentSpec = validated(ExperimentSpec, read_yaml(path), str(path))
    dataset_path = (path.parent / spec.dataset).resolve()
    return spec, load_dataset_spec(dataset_path)


def spec_from_config(config: dict[str, Any]) -> DatasetSpec:
    """The dataset spec a creditflow model carries in its config, its columns in signature order.

    MLflow stores the model config with sorted keys; `raw_columns` keeps the order, which decides
    which value rule a row breaking several is reported under.
    """
    ds = DatasetSpec.model_validate(config["dataset_spec"])
    order = config.get("raw_columns") or ds.raw_columns
    return ds.model_copy(update={"columns": {raw: ds.columns[raw] for raw in order}})
