"""The champions the benchmarks score: each family trained once into a throwaway store, and a categorical spec.

  logistic                 experiments/logistic_baseline.yaml as it is
  xgboost                  experiments/xgboost_bayes.yaml without its search: 300 trees of depth 6 (its
                           calibration kept)
  hist_gradient_boosting   experiments/hist_gradient_boosting.yaml tuned as `make demo` tunes it (the demo's
                           budget, creditflow.pipelines.main.Budget: 4 TPE trials, 3 folds, 90 s)
  categorical-FAMILY       the same family with the same settings (for hist_gradient_boosting: the parameters
                           its numeric run chose) on a categorical spec: the flagship's columns plus checking-account
                           status, purpose and housing (one-hot for logistic, ordinal for trees, as the spec's
                           groups say), generated here, with categories that move the default rate

Every model is logged with explanations off and the `reason_codes_for` the caller asks: the experiments' `all`
(reasons for every applicant) for the online and streaming benchmarks, `declined` (adverse-action reasons for
declined applicants) for batch. The store is the caller's (a SQLite file in its working directory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = {  # family: (experiment spec, overrides)
    "logistic": ("logistic_baseline.yaml", {}),
    "xgboost": ("xgboost_bayes.yaml", {"search.type": "none",
                                       "params": {"model__n_estimators": 300, "model__max_depth": 6}}),
    "hist_gradient_boosting": ("hist_gradient_boosting.yaml", {}),  # searched with the demo's budget
}
CATEGORICAL = "categorical-"
CATEGORIES = {  # column: (categories, share among good payers, share among defaulters); None = not given
    "checking_status": (["none", "<0", "0-200", ">=200"], [0.40, 0.20, 0.28, 0.12], [0.25, 0.45, 0.24, 0.06]),
    "purpose": (["car", "education", "furniture", "business", "repairs", "other"],
                [0.30, 0.10, 0.25, 0.10, 0.10, 0.15], [0.22, 0.14, 0.20, 0.22, 0.08, 0.14]),
    "housing": (["own", "rent", "free", None], [0.55, 0.28, 0.13, 0.04], [0.40, 0.40, 0.14, 0.06]),
}
SPEC_COLUMNS = {
    "checking_status": {"name": "checking_status", "group": "categorical", "nullable": False,
                        "categories": CATEGORIES["checking_status"][0], "display": "Checking account status",
                        "reason": "Checking account status"},
    "purpose": {"name": "purpose", "group": "categorical", "nullable": False, "display": "Purpose of the loan"},
    "housing": {"name": "housing", "group": "categorical", "nullable": True, "display": "Housing",
                "reason": "Housing status"},
}


@dataclass(frozen=True)
class Champion:
    name: str  # a key of FAMILIES, or categorical-FAMILY
    uri: str  # models:/name/version
    spec: object  # its DatasetSpec
    held_out: pd.DataFrame  # held-out applicants: the raw columns a request carries


def unknown(names: list[str]) -> list[str]:
    """The names that are not champions this module trains."""
    return [n for n in names if n.removeprefix(CATEGORICAL) not in FAMILIES]


def with_categories(frame: pd.DataFrame, target: pd.Series, seed: int) -> pd.DataFrame:
    """`frame` plus the categorical columns, drawn per applicant from the good payers' or the defaulters' shares."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    bad = np.asarray(target) == 1
    for column, (values, good_p, bad_p) in CATEGORIES.items():
        n = len(frame)
        codes = np.where(bad, rng.choice(len(values), n, p=bad_p), rng.choice(len(values), n, p=good_p))
        out[column] = pd.Series(np.asarray(values, dtype=object)[codes], index=frame.index, dtype=object)
    return out


def categorical_spec(work: Path, rows: int):
    """The flagship spec plus the categorical columns, over a generated file of `rows` applicants written to `work`."""
    from creditflow.data.synthetic import TARGET, generate_credit_data
    from creditflow.specs import DatasetSpec, load_dataset_spec

    flagship = load_dataset_spec(ROOT / "experiments" / "datasets" / "give_me_some_credit.yaml")
    path = work / f"categorical-{rows}.parquet"
    if not path.exists():
        gen = generate_credit_data(rows, seed=flagship.generated.seed).frame
        with_categories(gen, gen[TARGET], seed=5).to_parquet(path, index=False)
    raw = flagship.model_dump()
    raw.update(name="give_me_some_credit_categorical", source=str(path),
               columns={**raw["columns"], **SPEC_COLUMNS}, report_by={**raw["report_by"], "housing": {}})
    return DatasetSpec.model_validate(raw)


def applicants(spec, rows: int, seed: int, ids: bool = False) -> pd.DataFrame:
    """`rows` new generated applicants in `spec`'s raw columns (numbers as floats, as a JSON request arrives)."""
    from creditflow.data.synthetic import ID_COLUMN, TARGET, generate_credit_data

    gen = generate_credit_data(rows, seed=seed).frame
    if any(c in CATEGORIES for c in spec.raw_columns):
        gen = with_categories(gen, gen[TARGET], seed=seed + 1)
    numeric = [c for c in spec.raw_columns if c not in CATEGORIES]
    out = gen[spec.raw_columns].astype({c: "float64" for c in numeric})
    return pd.concat([gen[ID_COLUMN].astype(str), out], axis=1) if ids else out


def trained_before(folder: Path, names: list[str]) -> dict[str, Champion]:
    """The champions an earlier run trained (FOLDER/uris.json {name: models:/...}, FOLDER/<name>.parquet held-out
    rows), in the store MLFLOW_TRACKING_URI names; `names` in that order."""
    from creditflow.serving.live import fetch

    uris = json.loads((folder / "uris.json").read_text())
    missing = [n for n in names if n not in uris]
    if missing:
        raise SystemExit(f"error: {folder / 'uris.json'} has no champion {', '.join(missing)}")
    return {n: Champion(n, uris[n], fetch(uris[n]).spec, _as_trained(pd.read_parquet(folder / f"{n}.parquet")))
            for n in names}


def _as_trained(frame: pd.DataFrame) -> pd.DataFrame:
    """Held-out rows read back from Parquet as training held them: text columns object, None for missing (pandas 3
    reads its string dtype, NaN for missing, which MLServer's V2 codec refuses)."""
    texts = {c: frame[c].astype(object).where(frame[c].notna(), None) for c in frame.columns
             if not pd.api.types.is_numeric_dtype(frame[c])}
    return frame.assign(**texts)


def chosen(args, names: list[str], work: Path, reasons_for: str) -> dict[str, Champion]:
    """The bench's champions: those of `--champions-from DIR`, or trained now (and saved in `--save-champions DIR`)."""
    if args.champions_from:
        return trained_before(Path(args.champions_from), names)
    champs = train(names, args.train_rows, work, reasons_for, quick=args.quick)
    if args.save_champions:
        save(champs, Path(args.save_champions))
    return champs


def save(champs: dict[str, Champion], folder: Path) -> None:
    """What `trained_before` reads: uris.json and each champion's held-out rows."""
    for name, champ in champs.items():
        champ.held_out.to_parquet(folder / f"{name}.parquet")
    (folder / "uris.json").write_text(json.dumps({n: c.uri for n, c in champs.items()}))


def _tuned_params(run_id: str) -> dict:
    """The parameters a run's search chose (`best.*`), typed again from their text."""
    import mlflow
    import yaml

    params = mlflow.get_run(run_id).data.params
    return {k.removeprefix("best."): yaml.safe_load(v) for k, v in params.items() if k.startswith("best.")}


def train(names: list[str], train_rows: int, work: Path, reasons_for: str = "all",
          quick: bool = False) -> dict[str, Champion]:
    """Train every named champion and the numeric family of each categorical one (first: it takes their settings).

    `quick`: the demo's search with one trial and two folds, for a run that only shows the script works.
    """
    from creditflow.data.dataset import load_dataset, split_data
    from creditflow.pipelines.main import Budget, budgeted
    from creditflow.specs import load_experiment_spec
    from creditflow.train.run import train_and_log

    budget = Budget(trials=1, cv_folds=2) if quick else Budget()
    families = list(dict.fromkeys(n.removeprefix(CATEGORICAL) for n in names))
    out: dict[str, Champion] = {}
    tuned: dict[str, dict] = {}
    for name in [*families, *[n for n in names if n.startswith(CATEGORICAL)]]:
        family = name.removeprefix(CATEGORICAL)
        spec_file, overrides = FAMILIES[family]
        exp, ds = load_experiment_spec(ROOT / "experiments" / spec_file)
        exp = budgeted(exp.with_overrides(**overrides), budget)
        if name.startswith(CATEGORICAL):
            ds = categorical_spec(work, train_rows)
            if tuned.get(family):  # the numeric run's choice: the same model settings
                exp = exp.with_overrides(**{"search.type": "none", "params": {**exp.params, **tuned[family]}})
        else:
            ds = ds.model_copy(update={"generated": ds.generated.model_copy(update={"rows": train_rows})})
        exp = exp.with_overrides(**{"explain.enabled": False, "reason_codes_for": reasons_for,
                                    "name": f"bench-{name}", "register_as": f"bench-{name}"})
        data = load_dataset(ds)
        outcome = train_and_log(exp, ds, data)
        if exp.search.type != "none":
            tuned[family] = _tuned_params(outcome.run_id)
        held_out = split_data(data, exp.test_size, exp.seed).X_test[ds.raw_columns]
        out[name] = Champion(name, f"models:/{exp.register_as}/{outcome.registered_version}", ds, held_out)
    return out
