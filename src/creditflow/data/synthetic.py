"""Synthetic "Give Me Some Credit" data with a known true default probability.

The generator reproduces the schema and the quirks of Kaggle's ``cs-training.csv``
and draws ``SeriousDlqin2yrs`` from a documented logistic model of the *observed*
columns, so the Bayes-limit AUC of any sample is known.  See docs/generated_data.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TARGET: str = "SeriousDlqin2yrs"
ID_COLUMN: str = "Id"
RAW_COLUMNS: tuple[str, ...] = (
    "SeriousDlqin2yrs",
    "RevolvingUtilizationOfUnsecuredLines",
    "age",
    "NumberOfTime30-59DaysPastDueNotWorse",
    "DebtRatio",
    "MonthlyIncome",
    "NumberOfOpenCreditLinesAndLoans",
    "NumberOfTimes90DaysLate",
    "NumberRealEstateLoansOrLines",
    "NumberOfTime60-89DaysPastDueNotWorse",
    "NumberOfDependents",
)
LATE_COLUMNS: tuple[str, ...] = (
    "NumberOfTime30-59DaysPastDueNotWorse",
    "NumberOfTime60-89DaysPastDueNotWorse",
    "NumberOfTimes90DaysLate",
)
FLOAT_COLUMNS: tuple[str, ...] = (
    "RevolvingUtilizationOfUnsecuredLines",
    "DebtRatio",
    "MonthlyIncome",
    "NumberOfDependents",
)
SENTINEL_VALUES: tuple[int, int] = (96, 98)

# --- feature-generation constants -------------------------------------------
AGE_MEAN, AGE_SD, AGE_MIN, AGE_MAX = 52.0, 14.5, 21, 103
STRESS_AGE_LOADING = -0.35  # corr(latent stress, standardised age)
SENTINEL_RATE = 0.0018
SENTINEL_96_SHARE = 0.05  # the rest of the sentinel rows carry 98
INCOME_MISSING_BASE_LOGIT = -1.41  # P(MonthlyIncome missing) ~ 19.8 %
INCOME_ZERO_RATE = 0.0136  # share of reported incomes that are exactly 0
DEPENDENTS_MISSING_GIVEN_INCOME_MISSING = 0.13  # -> ~2.6 % overall
UTIL_ZERO_RATE = 0.07
UTIL_JUNK_RATE = 0.002  # huge, meaningless utilisation values (10 .. 50,000)
UTIL_JUNK_EFFECTIVE = 0.3  # junk values carry the risk of a 30 % utilisation
LATE_BASE_RATES: tuple[float, float, float] = (0.14, 0.022, 0.026)
LATE_STRESS_SLOPES: tuple[float, float, float] = (1.1, 1.4, 1.5)
LATE_MAXIMA: tuple[int, int, int] = (13, 11, 17)  # real-data maxima below 96

# --- true log-odds coefficients (see docs/generated_data.md) ------------------
INTERCEPT = -4.695  # solves E[p] = 0.067 on 2,000,000 rows drawn with seed 0
COEF_LATE_30_59 = 1.15
COEF_LATE_60_89 = 1.0
COEF_LATE_90 = 1.75
COEF_UTILISATION = 2.7
COEF_AGE = -0.31  # per 10 years, age clipped to [21, 80]
COEF_LOG_INCOME = -0.25
COEF_INCOME_MISSING = -0.05
COEF_INCOME_ZERO = -0.2
COEF_DEBT_RATIO = 0.55  # on log1p(min(DebtRatio, 5)) where income is reported
COEF_DEBT_AMOUNT = 0.08  # on log1p(DebtRatio) - 7 where income is missing / 0
COEF_FEW_LINES = 0.5  # on exp(-lines / 1.5)
COEF_REAL_ESTATE = -0.15  # per loan, up to 2
COEF_MANY_REAL_ESTATE = 0.3  # on log1p(max(loans - 2, 0))
COEF_DEPENDENTS = 0.06  # per dependant, capped at 6
SENTINEL_LOG_ODDS = 0.1  # rows with 96/98 in all three late counts
LOG_INCOME_CENTRE = 8.6


@dataclass(frozen=True)
class GeneratedCredit:
    """A synthetic cs-training frame and the true P(default) of each row."""

    frame: pd.DataFrame
    true_probability: np.ndarray


def generate_credit_data(n_rows: int = 150_000, seed: int = 42) -> GeneratedCredit:
    """Draw a deterministic synthetic cs-training data set of n_rows rows."""
    if n_rows < 1:
        raise ValueError(f"n_rows must be positive, got {n_rows}")
    rng = np.random.default_rng(seed)
    features = draw_features(rng, n_rows)
    probability = sigmoid(true_log_odds(features))
    frame = pd.DataFrame({ID_COLUMN: np.arange(1, n_rows + 1, dtype=np.int64)})
    frame[TARGET] = (rng.random(n_rows) < probability).astype(np.int64)
    for column in RAW_COLUMNS[1:]:
        frame[column] = features[column]
    return GeneratedCredit(frame=frame, true_probability=probability)


def write_kaggle_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """Write frame exactly like cs-training.csv (empty first header, Id first, NA)."""
    out = frame.set_index(ID_COLUMN)[list(RAW_COLUMNS)]
    out = out.astype({"MonthlyIncome": "Int64", "NumberOfDependents": "Int64"})
    out.index.name = ""
    out.to_csv(path, na_rep="NA", float_format="%.15g", lineterminator="\n")


def true_log_odds(features: pd.DataFrame) -> np.ndarray:
    """Return the true log-odds of default for frame-like observed features."""
    late = [features[c].to_numpy(dtype=float) for c in LATE_COLUMNS]
    sentinel = late[0] >= SENTINEL_VALUES[0]
    eta = INTERCEPT + late_term(late) + utilisation_term(features)
    eta = eta + age_term(features) + _income_debt_term(features)
    eta = eta + _household_term(features)
    return np.where(sentinel, SENTINEL_LOG_ODDS + age_term(features), eta)


def late_term(late: list[np.ndarray]) -> np.ndarray:
    """Log-odds contribution of the three late-payment counts."""
    coefs = (COEF_LATE_30_59, COEF_LATE_60_89, COEF_LATE_90)
    return sum(c * np.log1p(np.minimum(x, 20)) for c, x in zip(coefs, late, strict=True))


def utilisation_term(features: pd.DataFrame) -> np.ndarray:
    """Log-odds contribution of revolving utilisation (junk values neutralised)."""
    util = features["RevolvingUtilizationOfUnsecuredLines"].to_numpy(dtype=float)
    effective = np.where(util > 10, UTIL_JUNK_EFFECTIVE, np.clip(util, 0, 1.5))
    return COEF_UTILISATION * effective


def age_term(features: pd.DataFrame) -> np.ndarray:
    """Log-odds contribution of age (linear, flat beyond 80)."""
    age = features["age"].to_numpy(dtype=float)
    return COEF_AGE * (np.clip(age, 21, 80) - AGE_MEAN) / 10


def _income_debt_term(features: pd.DataFrame) -> np.ndarray:
    """Log-odds contribution of income, its missingness and DebtRatio."""
    income = features["MonthlyIncome"].to_numpy(dtype=float)
    debt = features["DebtRatio"].to_numpy(dtype=float)
    missing, zero = np.isnan(income), income == 0
    reported = ~missing & ~zero
    log_income = np.log1p(np.where(reported, income, 0.0)) - LOG_INCOME_CENTRE
    ratio_term = COEF_DEBT_RATIO * np.log1p(np.clip(debt, 0, 5))
    amount_term = COEF_DEBT_AMOUNT * (np.log1p(debt) - 7)
    return np.where(
        reported,
        COEF_LOG_INCOME * log_income + ratio_term,
        np.where(missing, COEF_INCOME_MISSING, COEF_INCOME_ZERO) + amount_term,
    )


def _household_term(features: pd.DataFrame) -> np.ndarray:
    """Log-odds contribution of credit lines, real-estate loans and dependants."""
    lines = features["NumberOfOpenCreditLinesAndLoans"].to_numpy(dtype=float)
    estate = features["NumberRealEstateLoansOrLines"].to_numpy(dtype=float)
    dependents = np.nan_to_num(features["NumberOfDependents"].to_numpy(dtype=float))
    return (
        COEF_FEW_LINES * np.exp(-lines / 1.5)
        + COEF_REAL_ESTATE * np.minimum(estate, 2)
        + COEF_MANY_REAL_ESTATE * np.log1p(np.maximum(estate - 2, 0))
        + COEF_DEPENDENTS * np.minimum(dependents, 6)
    )


def draw_features(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Draw all observed feature columns (everything but the target)."""
    age = np.clip(np.rint(rng.normal(AGE_MEAN, AGE_SD, n)), AGE_MIN, AGE_MAX)
    age_std = (age - AGE_MEAN) / AGE_SD
    loading = STRESS_AGE_LOADING
    stress = loading * age_std + np.sqrt(1 - loading**2) * rng.standard_normal(n)
    late = _draw_late_counts(rng, stress)
    sentinel = rng.random(n) < SENTINEL_RATE
    income, debt_ratio = _draw_income_and_debt(rng, age_std, stress)
    features = {
        "RevolvingUtilizationOfUnsecuredLines": _draw_utilisation(rng, stress),
        "age": age.astype(np.int64),
        "DebtRatio": debt_ratio,
        "MonthlyIncome": income,
        "NumberOfOpenCreditLinesAndLoans": _draw_open_lines(rng, age_std, stress),
        "NumberRealEstateLoansOrLines": _draw_real_estate(rng, age_std, income),
        "NumberOfDependents": _draw_dependents(rng, age, np.isnan(income)),
    }
    for column, counts in zip(LATE_COLUMNS, late, strict=True):
        features[column] = counts
    frame = pd.DataFrame(features)
    return _apply_sentinels(rng, frame, sentinel)


def _draw_late_counts(rng: np.random.Generator, stress: np.ndarray) -> list[np.ndarray]:
    """Draw correlated 30-59 / 60-89 / 90+ day late-payment counts."""
    n = stress.size
    propensity = 0.8 * stress + 0.6 * rng.standard_normal(n)
    frailty = rng.gamma(shape=0.7, scale=1 / 0.7, size=n)
    params = zip(LATE_BASE_RATES, LATE_STRESS_SLOPES, LATE_MAXIMA, strict=True)
    return [np.minimum(rng.poisson(base * frailty * np.exp(slope * propensity)), top) for base, slope, top in params]


def _draw_utilisation(rng: np.random.Generator, stress: np.ndarray) -> np.ndarray:
    """Draw revolving utilisation: mostly [0, 1], a few % over 1, rare junk."""
    n = stress.size
    util = sigmoid(rng.normal(-1.3 + 1.1 * stress, 1.5))
    over = rng.random(n) < 0.025 * np.exp(0.8 * stress - 0.32)
    util = np.where(over, 1 + rng.exponential(0.12, n), util)
    util = np.where(rng.random(n) < UTIL_ZERO_RATE, 0.0, util)
    junk = rng.random(n) < UTIL_JUNK_RATE
    util = np.where(junk, np.exp(rng.uniform(np.log(10), np.log(50_000), n)), util)
    return np.round(util, 9)


def _draw_income_and_debt(
    rng: np.random.Generator, age_std: np.ndarray, stress: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Draw MonthlyIncome (NaN / 0 quirks) and DebtRatio (amount if no income)."""
    n = stress.size
    log_income = 8.72 + 0.12 * age_std - 0.12 * age_std**2 - 0.25 * stress
    income = np.rint(np.exp(log_income + 0.6 * rng.standard_normal(n)))
    ratio = np.exp(np.log(0.3) + 0.3 * stress + 0.75 * rng.standard_normal(n))
    ratio = np.where(rng.random(n) < 0.03, 0.0, ratio)
    missing_logit = INCOME_MISSING_BASE_LOGIT + 0.25 * age_std
    missing = rng.random(n) < sigmoid(missing_logit)
    zero = ~missing & (rng.random(n) < INCOME_ZERO_RATE)
    amount = np.rint(ratio * income * 0.7)
    debt_ratio = np.where(missing | zero, amount, np.round(ratio, 9))
    income = np.where(missing, np.nan, np.where(zero, 0.0, income))
    return income, debt_ratio


def _draw_open_lines(rng: np.random.Generator, age_std: np.ndarray, stress: np.ndarray) -> np.ndarray:
    """Draw NumberOfOpenCreditLinesAndLoans (overdispersed Poisson, mean ~8.5)."""
    mean = 9.2 * np.exp(0.12 * age_std - 0.1 * age_std**2 + 0.05 * stress)
    rate = mean * rng.gamma(shape=4.0, scale=0.25, size=stress.size)
    return rng.poisson(rate).astype(np.int64)


def _draw_real_estate(rng: np.random.Generator, age_std: np.ndarray, income: np.ndarray) -> np.ndarray:
    """Draw NumberRealEstateLoansOrLines (mean ~1, long tail)."""
    log_income = np.log1p(np.nan_to_num(income, nan=5400.0)) - LOG_INCOME_CENTRE
    mean = 1.15 * np.exp(0.1 * age_std - 0.15 * age_std**2 + 0.35 * log_income)
    rate = mean * rng.gamma(shape=8.0, scale=1 / 8.0, size=income.size)
    return rng.poisson(rate).astype(np.int64)


def _draw_dependents(rng: np.random.Generator, age: np.ndarray, income_missing: np.ndarray) -> np.ndarray:
    """Draw NumberOfDependents (hump in age, NaN for a subset of no-income rows)."""
    n = age.size
    mean = 0.15 + 1.35 * np.exp(-(((age - 40) / 14) ** 2))
    dependents = rng.poisson(mean * rng.gamma(1.2, 1 / 1.2, n))
    dependents = np.minimum(dependents, 20).astype(float)
    unknown = rng.random(n) < DEPENDENTS_MISSING_GIVEN_INCOME_MISSING
    return np.where(income_missing & unknown, np.nan, dependents)


def _apply_sentinels(rng: np.random.Generator, frame: pd.DataFrame, sentinel: np.ndarray) -> pd.DataFrame:
    """Overwrite sentinel rows with 96/98 late counts and their usual companions."""
    code = np.where(rng.random(sentinel.size) < SENTINEL_96_SHARE, 96, 98)
    for column in LATE_COLUMNS:
        frame[column] = np.where(sentinel, code, frame[column]).astype(np.int64)
    util = frame["RevolvingUtilizationOfUnsecuredLines"].to_numpy()
    frame["RevolvingUtilizationOfUnsecuredLines"] = np.where(sentinel, 0.9999999, util)
    lines = frame["NumberOfOpenCreditLinesAndLoans"].to_numpy()
    frame["NumberOfOpenCreditLinesAndLoans"] = np.where(sentinel, rng.integers(0, 2, sentinel.size), lines).astype(
        np.int64
    )
    estate = frame["NumberRealEstateLoansOrLines"].to_numpy()
    frame["NumberRealEstateLoansOrLines"] = np.where(sentinel, 0, estate).astype(np.int64)
    return frame


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return np.exp(-np.logaddexp(0.0, -x))
