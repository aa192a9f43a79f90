"""The model card's sections, written from its figures and the specs: use, data, features, performance, subgroups,
calibration, monotone behaviour, promotion, explanations, known limits. Every sentence is generated."""

from __future__ import annotations

from creditflow.specs import DatasetSpec
from creditflow.train.card import LEVEL, RESAMPLES, SEED, ModelCard
from creditflow.train.card_render import Block, fixed, interval, percent, to_html, to_markdown

CARD_FILES = ("model_card.md", "model_card.html")  # the files `train.run` logs, under `model_card/`
HEADLINE = (("roc_auc", "ROC AUC"), ("ks", "KS"), ("brier", "Brier score"),
            ("calibration_error", "Calibration error (10 equal-frequency bins)"))
OTHERS = (("pr_auc", "PR AUC"), ("log_loss", "Log loss"), ("f1", "F1 at the threshold"),
          ("balanced_accuracy", "Balanced accuracy at the threshold"))
OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "isnull": "is missing"}
FEW_ROWS, FEW_DEFAULTS = 500, 30  # a subgroup smaller than this has wide intervals: named under known limits


def title(card: ModelCard) -> str:
    """The card's heading and HTML title: which family, from which experiment."""
    exp = card.experiment
    return f"Model card: {exp.family} from experiment '{exp.name}'"


def model_section(card: ModelCard) -> list[Block]:
    """What was trained and how it decides, so a reader knows what the figures describe."""
    exp = card.experiment
    return [("h2", "Model"), ("ul", [
        f"Training run: `{card.run_id}`; model family `{exp.family}`, {exp.search.type} search on cross-validated "
        f"`{exp.metric}` ({exp.cv_folds} folds)",
        f"Decision: decline when P(default) >= {exp.threshold:g}, approve below; each applicant gets at most "
        f"{exp.reason_codes} principal reasons, stated as in an adverse-action notice",
        f"Registered as `{exp.register_as}`" if exp.register_as else "Not registered (the spec names no register_as)",
    ])]


def use_sections(card: ModelCard) -> list[Block]:
    """Intended and out-of-scope use, from the dataset spec's population and the decision rule."""
    ds, exp = card.dataset, card.experiment
    target = f"`{ds.target.column}` = {ds.target.positive}"
    population = f"`{ds.name}`" + (f" ({ds.description})" if ds.description else "")
    return [
        ("h2", "Intended use"),
        ("p", f"Estimate the probability of default (P(default), {target}) of credit applicants like those of "
              f"{population}; approve below the threshold P(default) = {exp.threshold:g} and decline at or above "
              "it, every decline with its principal reasons, for decisions a person reviews."),
        ("h2", "Out-of-scope use"),
        ("ul", [f"Applicants unlike the training population: other products, markets or periods than `{ds.name}` "
                f"(period: {ds.period or 'not stated in the dataset spec'}).",
                "Declines without human review of the decision and its reason statements.",
                "Pricing, limits or any decision other than approve/decline at the threshold: the model estimates "
                "P(default) only.",
                "Applicants whose data break the dataset spec's value rules: they are refused (online) or "
                "quarantined (batch), never scored."]),
    ]


def data_section(card: ModelCard) -> list[Block]:
    """Where the data came from and how much of it each step used."""
    ds, data, exp = card.dataset, card.data, card.experiment
    rows = [("Data set", ds.name + (f": {ds.description}" if ds.description else "")),
            ("Source", f"`{data.source}`"), ("Digest", f"`{data.digest}`"),
            ("Period", ds.period or "not stated in the dataset spec"),
            ("Rows", f"{data.train_rows + data.held_out_rows:,} ({data.train_rows:,} training, "
                     f"{data.held_out_rows:,} held out: a stratified {exp.test_size:g} split, seed {exp.seed}); "
                     f"{data.dropped_rows:,} rows breaking a value rule left out"),
            ("Target", f"`{ds.target.column}` = {ds.target.positive}: default rate {percent(data.default_rate)} "
                       f"(held out: {percent(data.held_out_default_rate)})")]
    return [("h2", "Data"), ("table", (("Field", "Value"), rows))]


def features_section(ds: DatasetSpec) -> list[Block]:
    """Every input with the statement a decline would give for it."""
    rows = [(f"`{raw}`", col.label, col.group, col.monotone or "", col.statement) for raw, col in ds.columns.items()]
    derived = [f"`{name}` ({d.display or name}): `{d.column}` {OPS[d.op]}{'' if d.value is None else f' {d.value:g}'}"
               for name, d in ds.derived.items()]
    blocks: list[Block] = [("h2", "Features"), ("table", (("Column", "Label", "Group", "Monotone",
                                                          "Reason statement (adverse action)"), rows))]
    if derived:
        blocks += [("p", "Derived indicators (their contributions count towards their column's reason):"),
                   ("ul", derived)]
    return blocks


def performance_section(card: ModelCard) -> list[Block]:
    """The held-out figures the run logs, with how far resampling moves them."""
    level = f"{LEVEL:.0%}"
    rows = [(name, fixed(card.metrics[key]), interval(card.intervals[key])) for key, name in HEADLINE]
    rows.append((f"Approval rate at {card.experiment.threshold:g}", percent(1 - card.metrics["decline_rate"]),
                 interval(card.intervals["approval_rate"], percent)))
    rows += [(name, fixed(card.metrics[key]), "") for key, name in OTHERS]
    return [("h2", "Held-out performance"),
            ("p", f"The served probability on the {card.data.held_out_rows:,} held-out rows (never used in search, "
                  f"fit or calibration). Intervals: {level} percentile bootstrap over the rows, {RESAMPLES} "
                  f"resamples, seed {SEED}."),
            ("table", (("Metric", "Value", f"{level} interval"), rows))]


def subgroup_section(card: ModelCard) -> list[Block]:
    """Performance and approval rate per report_by subgroup, to see who the model serves worse."""
    blocks: list[Block] = [("h2", "Performance and approval rate by subgroup")]
    if not card.subgroups:
        return [*blocks, ("p", "The dataset spec names no `report_by` column: no subgroup figures.")]
    rows = [(s.column, s.group, f"{s.rows:,}", percent(s.default_rate), percent(s.mean_p), percent(s.approval_rate),
             interval(s.intervals["approval_rate"], percent), fixed(s.roc_auc), interval(s.intervals["roc_auc"]))
            for s in card.subgroups]
    header = ("Column", "Group", "Rows", "Default rate", "Mean P(default)", "Approval rate", "Approval interval",
              "ROC AUC", "ROC AUC interval")
    blocks += [("p", f"Held-out rows by the dataset spec's `report_by` columns; intervals from {RESAMPLES} "
                     "resamples of each group's own rows; ROC AUC is n/a in a group with one class."),
               ("table", (header, rows))]
    for column in dict.fromkeys(s.column for s in card.subgroups):
        rates = {s.group: s.approval_rate for s in card.subgroups if s.column == column}
        low, high = min(rates, key=rates.__getitem__), max(rates, key=rates.__getitem__)
        if rates[high] > 0:
            blocks.append(("p", f"{column}: lowest approval rate {percent(rates[low])} ({low}), highest "
                                f"{percent(rates[high])} ({high}); ratio {rates[low] / rates[high]:.2f}."))
    return blocks


def calibration_section(card: ModelCard) -> list[Block]:
    """Whether P(default) can be read as a default rate, before and after the map."""
    method = card.experiment.calibration
    lines = [f"Calibration error (held out): {fixed(card.metrics['calibration_error'])} "
             f"({interval(card.intervals['calibration_error'])})"]
    if card.uncalibrated_error is None:
        how = "Method: none (P(default) is the model's own probability)."
    else:
        how = (f"Method: {method}, fitted on out-of-fold predictions of the training split; served probabilities "
               "are calibrated.")
        lines.append(f"Before calibration: {fixed(card.uncalibrated_error)}")
    rows = [(str(i + 1), f"{n:,}", percent(mean), percent(rate)) for i, (n, mean, rate) in enumerate(card.reliability)]
    return [("h2", "Calibration"), ("p", how), ("ul", lines),
            ("table", (("Decile of P(default)", "Rows", "Mean P(default)", "Observed default rate"), rows))]


def monotone_section(card: ModelCard) -> list[Block]:
    """The declared directions and whether the trained model keeps them."""
    blocks: list[Block] = [("h2", "Monotone behaviour")]
    if not card.dataset.monotone_columns():
        return [*blocks, ("p", "The dataset spec declares no monotone column: nothing to check.")]
    rows = [(f"`{c.column}`", c.direction, str(len(c.grid)), str(c.applicants), str(c.violations),
             f"{c.worst.size:+.4g} ({c.worst.before:g} -> {c.worst.after:g})" if c.worst else "none")
            for c in card.monotone]
    return [*blocks,
            ("p", f"Each declared column alone varied over its grid for {card.monotone_rows} held-out applicants "
                  f"(sampled with seed {SEED}), the served P(default) read at each value: applicants for whom it "
                  "moves against the declared direction. Gate (f) repeats this on the registered artifact at "
                  "promotion."),
            ("table", (("Column", "Direction", "Values", "Applicants", "Moving against it", "Worst move"), rows))]


def promotion_section(card: ModelCard) -> list[Block]:
    """Where the gates' verdicts are: promotion happens after the card is written."""
    name = card.experiment.register_as or "NAME"
    blocks: list[Block] = [("h2", "Promotion gates"), (
        "p", "Gates (a)-(f) are decided when a version is promoted, on the registered artifact, after this card was "
             "first written: each decision, with its gate verdicts and figures, is an audit run "
             f"(`creditflow registry history --name {name} --all`). `creditflow explain --run-id {card.run_id}` "
             "regenerates this card with the versions' aliases and tags as they are then.")]
    if card.registry:
        blocks += [("p", "Registered versions of this run's model when this card was generated:"),
                   ("ul", list(card.registry))]
    return blocks


def explanation_section(card: ModelCard) -> list[Block]:
    """Where the run's explanation pictures are."""
    if not card.explanations:
        return [("h2", "Explanations"), ("p", "This run logged no explanation pictures (`explain.enabled: false`).")]
    return [("h2", "Explanations"),
            ("p", "Pictures logged with this run (artifact paths; the run's Artifacts tab shows them):"),
            ("ul", [f"`{path}`" for path in card.explanations])]


def limits_section(card: ModelCard) -> list[Block]:
    """What the figures cannot tell, worked out from the specs and the figures."""
    ds, data = card.dataset, card.data
    limits = []
    if data.generated:
        limits.append(f"Trained and tested on generated data (`{data.source}`): the figures describe the "
                      "generator's population, not real applicants.")
    limits.append("The held-out split is a random split of the same data (same period and population): it shows no "
                  "drift; later applicants are compared with the training data by `creditflow monitor drift`.")
    small = [f"{s.column} {s.group} ({s.rows:,} rows, {s.defaults:,} defaults)" for s in card.subgroups
             if s.rows < FEW_ROWS or min(s.defaults, s.rows - s.defaults) < FEW_DEFAULTS]
    if small:
        limits.append(f"Small subgroups, wide intervals: {'; '.join(small)}.")
    inputs = sorted({ds.columns[raw].label for raw in ds.report_by})
    if inputs:
        limits.append(f"Reported subgroups that are model inputs ({', '.join(inputs)}): the model uses them "
                      "directly; the subgroup table shows outcomes, whether the model may use them is a legal "
                      "review (e.g. Reg. B on age).")
    free = [col.label for col in ds.columns.values() if not col.monotone and col.group != "categorical"]
    if free:
        limits.append(f"No direction declared for {len(free)} of {len(ds.columns)} columns ({', '.join(free)}): "
                      "P(default) may move either way with them.")
    against = [c.column for c in card.monotone if c.violations]
    if against:
        limits.append(f"P(default) moves against a declared direction in {', '.join(against)}: gate (f) refuses "
                      "such a version.")
    if card.uncalibrated_error is None:
        limits.append("No calibration map: P(default) is as well calibrated as the model family makes it.")
    limits.append("Bootstrap intervals cover resampling of the held-out rows only, not a change of population; the "
                  "calibration error's interval leans high (resampling noise adds to every bin's gap).")
    return [("h2", "Known limits"), ("ul", limits)]


def card_blocks(card: ModelCard) -> list[Block]:
    """The whole card, section by section."""
    return [("h1", title(card)),
            ("p", "Generated by creditflow from the run's specs and its held-out split; do not edit by hand."),
            *model_section(card), *use_sections(card), *data_section(card), *features_section(card.dataset),
            *performance_section(card), *subgroup_section(card), *calibration_section(card), *monotone_section(card),
            *promotion_section(card), *explanation_section(card), *limits_section(card)]


def card_files(card: ModelCard) -> dict[str, str]:
    """File name -> text: the card as Markdown and as HTML."""
    blocks = card_blocks(card)
    return dict(zip(CARD_FILES, (to_markdown(blocks), to_html(blocks, title(card))), strict=True))

