"""Turn run directories into figures, tables and results/REPORT.md, one verdict per claim.

  python -m bnlab.report [--scale cpu]

For each experiment config (configs/experiment/<name>.yaml) with runs on disk, `bnlab.experiments.<name>.analyze`
measures each claim that config declares; `bnlab.claims` gives the verdict, mechanically, from the criterion
written in the config before the runs. REPORT.md opens with the tally of the empirical claims, keeps the
sanity checks (`kind: check`) apart, and lists every amended criterion beside its original.
"""

import argparse
import importlib
import math
import re
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, cast

import pandas as pd
from omegaconf import DictConfig

from bnlab.analysis import RateNotFrozen, chosen_rates
from bnlab.archive import archive_path, unpack
from bnlab.claims import (
    FIRST_SEEDS,
    MAGNITUDE_SHARE,
    VERDICTS,
    Cell,
    Context,
    Criterion,
    Finding,
    Judgement,
    holds_in,
    judge,
)
from bnlab.config import REPO_ROOT, ConfigError
from bnlab.registration import (
    CONFIRMATORY_SEEDS,
    check,
    committed,
    confirmatory_overrides,
    freeze_commit,
    load,
    registration,
    registration_path,
)
from bnlab.runlog import DONE, atomic_write_text
from bnlab.sweeps import experiment_config, experiment_names, runs_root, sweep_runs, sweep_seconds

README_START, README_END = "<!-- claims:start -->", "<!-- claims:end -->"
FAILED = "the analysis failed"
NO_FINDING = "analysis returned no finding"


def tally(rows: list[dict], stage: str = "confirmatory") -> str:
    """'N empirical claims; magnitude: a reproduced, ...; direction (k with a null): ...' for one stage."""
    claims = [r for r in rows if r["kind"] == "claim"]

    def counts(key: str) -> str:
        values = [r[key] for r in claims if r.get(key)]
        return ", ".join(f"{n} {v}" for v in VERDICTS if (n := values.count(v))) or "none"

    papers = sum(r["paper effect"] != "—" for r in claims)
    return (f"{len(claims)} empirical claims; magnitude ({papers} against half the paper's effect, "
            f"{len(claims) - papers} against a declared threshold): {counts(f'{stage} magnitude')}; direction ("
            f"{sum(bool(r.get(f'{stage} direction')) for r in claims)} claims with a no-effect value): "
            f"{counts(f'{stage} direction')}")


def claims_for_readme(rows: list[dict], out_dir: Path, freeze: str | None) -> str:
    """The README's block: the confirmatory tally, by source, and where the report is."""
    report = (out_dir / "REPORT.md").relative_to(REPO_ROOT)
    claims = [r for r in rows if r["kind"] == "claim"]
    by_group = pd.DataFrame([{"source": group, "claims": len(mine),
                              **{v: sum(r["confirmatory magnitude"] == v for r in mine) for v in VERDICTS}}
                             for group in SECTIONS if (mine := [r for r in claims if r["group"] == group])])
    return (f"**Confirmatory (criteria frozen at {str(freeze)[:10]}): {tally(rows)}.** Magnitude verdicts by "
            f"source below; claim by claim, with the numbers and the exploratory verdicts beside them: "
            f"[{report}]({report}).\n\n" + markdown(by_group))


def update_readme(table: str) -> None:
    readme = REPO_ROOT / "README.md"
    text = readme.read_text()
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        tail = rest.split(README_END, 1)[1]
        atomic_write_text(readme, f"{head}{README_START}\n{table}\n{README_END}{tail}")


# The report's headings, in its order: by source, as a reader looks claims up. Each experiment config names its
# own (`section:`), so a new paper is a new entry here.
SECTIONS = ("Ioffe & Szegedy 2015", "Santurkar et al. 2018", "Deep Learning Book §8.7.1", "Bjorck et al. 2018",
            "LayerNorm, GroupNorm and Batch Renormalization", "Questions from the write-up")


def by_section(configs: dict[str, DictConfig]) -> list[tuple[str, str]]:
    """(heading, experiment) in the report's order; an experiment whose `section` is not a heading is an error."""
    unknown = {name: cfg.section for name, cfg in configs.items() if cfg.section not in SECTIONS}
    if unknown:
        raise ConfigError(f"experiment configs with a section the report does not have: "
                          f"{', '.join(f'{name} ({section!r})' for name, section in unknown.items())}; "
                          f"`section:` is one of: {', '.join(map(repr, SECTIONS))} (bnlab.report.SECTIONS)")
    return sorted(((cfg.section, name) for name, cfg in configs.items()),
                  key=lambda k: (SECTIONS.index(k[0]), k[1]))


class UndeclaredFinding(ConfigError):
    """An analysis returned a finding for a claim id its experiment config does not declare."""


def declared(name: str, cfg: DictConfig, findings: list[Finding]) -> dict[str, Finding]:
    """The findings by claim id, one per declared claim: a claim the analysis left out reads NO_FINDING; an id the
    config does not declare (a typo, a claim renamed in one file only) is an error, never dropped."""
    undeclared = [f.claim for f in findings if f.claim not in cfg.claims]
    if undeclared:
        raise UndeclaredFinding(f"experiments/{name}.py returned findings for claims its config does not declare: "
                                f"{', '.join(undeclared)} (declared: {', '.join(cfg.claims)})")
    by_claim = {f.claim: f for f in findings}
    return {cid: by_claim.get(cid, Finding(cid, [], untestable={"": NO_FINDING})) for cid in cfg.claims}


def analyse(name: str, cfg: DictConfig, runs: pd.DataFrame, out_dir: Path, frozen: dict | None = None,
            record: dict | None = None) -> tuple[dict[str, Finding], Context]:
    """One experiment's findings by claim id; within the frozen rates (confirmatory) or recording the rates the
    analysis chooses (exploratory). A rate the registration did not freeze makes every claim not testable; an
    analysis that raises, or returns a finding for an undeclared claim, makes every claim read FAILED."""
    ctx = Context(name, cfg, runs, out_dir)
    if not (len(runs) and runs.status.isin(DONE).any()):  # an analysis needs a run that trained to its end
        return {}, ctx
    try:
        with chosen_rates(frozen, record):
            findings = declared(name, cfg, importlib.import_module(f"bnlab.experiments.{name}").analyze(ctx))
    except RateNotFrozen as e:
        return {cid: Finding(cid, [], untestable={"": f"its best rate was not frozen ({e})"})
                for cid in cfg.claims}, ctx
    except Exception as e:  # one broken analysis must not hide the other experiments' verdicts
        traceback.print_exc()
        why = f"{FAILED} ({type(e).__name__}: {e}; traceback on stderr)"
        return {cid: Finding(cid, [], untestable={"": why}) for cid in cfg.claims}, ctx
    return findings, ctx


@dataclass
class Stage:
    """What one stage's runs say: findings by experiment and claim, the runs read, the sections its analyses
    wrote (figures, tables, run counts) and the rates its analyses chose."""

    name: str
    findings: dict = field(default_factory=dict)
    more: dict = field(default_factory=dict)  # confirmatory: the findings over the first and the extra seeds
    runs: list = field(default_factory=list)
    sections: dict = field(default_factory=dict)
    rates: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)  # experiments whose analysis raised


@dataclass
class Stages:
    configs: dict
    exploratory: Stage
    confirmatory: Stage
    registration: dict  # as the configs and the exploratory runs give it now
    frozen: dict | None
    freeze: str | None
    problems: list
    second_stage_missing: list  # experiments with an undecided cell and no extra seeds


def run_sections(name: str, runs: pd.DataFrame, on_disk: pd.DataFrame, scale: str, out_root: Path) -> list[str]:
    """The runs an analysis read, failed, or left out, with their paths."""
    out = []
    rel = lambda p: Path(p).relative_to(out_root)  # noqa: E731
    if len(runs):
        bad = runs[runs.status.isin(["failed", "incomplete"])]
        counts = runs.status.value_counts()
        out.append("Runs on disk: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + "."
                   + "".join(f"\n  - {s}: `{rel(p)}`" for s, p in zip(bad.status, bad.path, strict=True)))
    if len(on_disk) and not on_disk.in_sweep.all():
        outside = on_disk[~on_disk.in_sweep].path
        out.append("Left out of the analysis, not jobs of this experiment's current sweep (another grid, or "
                   f"overrides the sweep does not make): {len(outside)} run directories."
                   + "".join(f"\n  - `{rel(p)}`" for p in outside))
    if len(on_disk) and on_disk.stale.any():
        stale = on_disk[on_disk.stale].path
        remake = f"make {name}" + ("" if scale == "cpu" else f" SCALE={scale}")
        out.append(f"Left out of the analysis, trained under an earlier config of this experiment (`{remake}` "
                   f"retrains them): {len(stale)} run directories." + "".join(f"\n  - `{rel(p)}`" for p in stale))
    return out


def run_stage(stage: Stage, configs: dict, scale: str, root: Path, out_dir: Path, overrides: Sequence[str],
              frozen_rates: dict | None = None) -> None:
    for name, cfg in configs.items():
        extra = [] if frozen_rates is None else confirmatory_overrides(name, scale, {"rates": frozen_rates})
        on_disk = sweep_runs(name, scale, root, [*overrides, *extra])
        runs = on_disk[on_disk.in_sweep & ~on_disk.stale] if len(on_disk) else on_disk
        if len(on_disk):
            stage.runs.append(on_disk.assign(experiment=name, stage=stage.name,  # paths as under out_root
                                             path=[str(Path(p).relative_to(cfg.out_root)) for p in on_disk.path]))
        record: dict = {}
        first = runs[runs.seed < CONFIRMATORY_SEEDS[FIRST_SEEDS]] if frozen_rates is not None and len(runs) else runs
        frozen = None if frozen_rates is None else frozen_rates.get(name, {})
        stage.findings[name], ctx = analyse(name, cfg, first, out_dir, frozen, record if frozen is None else None)
        if frozen is not None and len(first) < len(runs):  # the extra seeds of the inconclusive cells
            stage.more[name], _ = analyse(name, cfg, runs, Path(tempfile.mkdtemp()), frozen)
        stage.rates[name] = record
        if any(f.untestable.get("", "").startswith(FAILED) for f in stage.findings[name].values()):
            stage.failed.append(name)
        figures = [f"![{f.name}]({f.with_suffix('.png').relative_to(out_dir)})" if i == 0 else
                   f"Figure: [{f.name}]({f.with_suffix('.png').relative_to(out_dir)})"
                   for i, f in enumerate(dict.fromkeys(ctx.figures))]
        stage.sections[name] = figures + ctx.tables + run_sections(name, runs, on_disk, scale, Path(cfg.out_root))


def analyse_stages(scale: str, out_dir: Path, overrides: Sequence[str] = (), figures: bool = True) -> Stages:
    """Both stages: the exploratory runs (which choose the rates) and the confirmatory ones (judged with the
    frozen rates), and the registration check. Figures and tables come from the confirmatory runs where there
    are any."""
    configs = {name: experiment_config(name, scale, overrides) for name in experiment_names()}
    has_confirmatory = any(runs_root(scale, "confirmatory", overrides).glob("*/*/config.yaml"))
    path, freeze, frozen = frozen_registration(scale)
    exploratory = Stage("exploratory")
    scratch = Path(tempfile.mkdtemp())
    run_stage(exploratory, configs, scale, runs_root(scale, "exploratory", overrides),
              out_dir if figures and not has_confirmatory else scratch, overrides)
    confirmatory = confirmatory_stage(configs, scale, out_dir if figures else scratch, overrides, frozen) \
        if has_confirmatory else Stage("confirmatory")
    now = registration(configs, exploratory.rates)
    runs = pd.concat(confirmatory.runs) if confirmatory.runs else pd.DataFrame()
    seeds = {int(s) for r in exploratory.runs for s in r.seed}
    problems = check(frozen, now, runs, freeze, seeds)
    if frozen is not None and load(scale) != frozen:
        problems.append(f"{path.name} differs from its committed version at {cast(str, freeze)[:10]}")
    missing = second_stage_missing(configs, confirmatory, frozen)
    problems += [f"seeds {CONFIRMATORY_SEEDS[FIRST_SEEDS]}-{CONFIRMATORY_SEEDS[-1]} not trained for experiments "
                 f"with an undecided cell: {', '.join(missing)}"] if missing else []
    return Stages(configs, exploratory, confirmatory, now, frozen, freeze, problems, missing)


def frozen_registration(scale: str) -> tuple[Path, str | None, dict | None]:
    """The registration file, its freeze commit and its content as committed there (an edit since is no
    registration)."""
    path = registration_path(scale)
    freeze = freeze_commit(path)
    return path, freeze, committed(path, freeze) if freeze else None


def confirmatory_stage(configs: dict, scale: str, out_dir: Path, overrides: Sequence[str],
                       frozen: dict | None) -> Stage:
    """The confirmatory runs of the experiments in `configs`, judged at the frozen rates."""
    stage = Stage("confirmatory")
    run_stage(stage, configs, scale, runs_root(scale, "confirmatory", overrides), out_dir,
              [*overrides, "stage=confirmatory", f"seed=range({CONFIRMATORY_SEEDS[0]},{CONFIRMATORY_SEEDS[-1] + 1})"],
              frozen_rates=(frozen or {}).get("rates", {}))
    return stage


def second_stage_missing(configs: dict, confirmatory: Stage, frozen: dict | None) -> list[str]:
    """Experiments with a verdict left inconclusive on the first seeds whose extra seeds were never trained."""
    return [name for name, findings in confirmatory.findings.items() if name not in confirmatory.more and any(
        "inconclusive" in (cell.verdict, cell.direction) for cid, claim in configs[name].claims.items()
        if cid in findings for cell in undecided_cells(findings[cid], frozen_criterion(frozen, name, cid,
                                                                                       Criterion.of(claim))))]


PAGES = "report"  # one page per experiment: <out_dir>/report/<experiment>.md, linked from REPORT.md


def build_report(scale: str, out_dir: Path, overrides: Sequence[str] = ()) -> tuple[str, dict[str, str], list[dict],
                                                                                  pd.DataFrame, Stages]:
    """REPORT.md's text (the front page), each experiment's page by name, the claim rows, runs.csv's table and
    the stages' analyses."""
    stages = analyse_stages(scale, out_dir, overrides)
    rows, pages = [], {}
    for group, name in by_section(stages.configs):
        stage = stages.confirmatory if stages.confirmatory.runs else stages.exploratory
        sections = [relinked(part) for part in stage.sections.get(name, [])]
        for claim_id, claim in stages.configs[name].claims.items():
            row = claim_row(name, claim_id, claim, stages) | {"group": group}
            rows.append(row)
            sections.append(claim_section(row, claim, stages, name))
        pages[name] = "\n\n".join([f"# Experiment `{name}` ({group})", "[Back to the report](../REPORT.md). "
                                    "Figures and tables from the confirmatory runs where there are any; each claim "
                                    "with both stages' cells.", *sections]) + "\n"
    table = pd.concat([*stages.exploratory.runs, *stages.confirmatory.runs], ignore_index=True) \
        if stages.exploratory.runs or stages.confirmatory.runs else pd.DataFrame()
    if len(table):
        atomic_write_text(out_dir / "runs.csv", table.to_csv(index=False))
    return header(scale, table, rows, stages) + "\n", pages, rows, table, stages


def relinked(section: str) -> str:
    """A section's links to figures/ and tables/ as seen from a page one folder down."""
    return re.sub(r"(\]\(|`)(figures|tables)/", r"\1../\2/", section)


def write_pages(out_dir: Path, pages: dict[str, str]) -> None:
    """Each experiment's page; a page of an experiment that no longer exists goes (they are all generated)."""
    folder = out_dir / PAGES
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.md"):
        if old.stem not in pages:
            old.unlink()
    for name, text in pages.items():
        atomic_write_text(folder / f"{name}.md", text)


def inconclusive(scale: str, overrides: Sequence[str] = (), only: Sequence[str] | None = None) -> list[str]:
    """The experiments that need the second confirmatory stage (a claim with a cell inconclusive on its first
    seeds), cheapest first by their last logged sweep time, so that an interrupted second stage has finished the
    most experiments. `only`: of these experiments, from their confirmatory runs alone, as `make reproduce` asks
    of each experiment once its first seeds are done (the exploratory runs and the other experiments do not
    decide it, and analysing them all takes minutes)."""
    if only is None:
        names = analyse_stages(scale, Path(tempfile.mkdtemp()), overrides, figures=False).second_stage_missing
    else:
        configs = {name: experiment_config(name, scale, overrides) for name in only}
        frozen = frozen_registration(scale)[2]
        names = second_stage_missing(configs, confirmatory_stage(configs, scale, Path(tempfile.mkdtemp()),
                                                                 overrides, frozen), frozen)
    seconds = sweep_seconds(scale)
    return sorted(names, key=lambda n: seconds.get(n, 10**9))


def undecided_cells(finding: Finding, c: Criterion) -> list[Cell]:
    """A claim's cells on its first seeds, and its contrast arm's: what the second stage may decide."""
    cells = list(judge(finding, replace(c, contrast=False)).cells.values())
    if c.contrast:
        cells += judge(Finding(finding.claim, finding.contrast or []), replace(c, contrast=False)).cells.values()
    return cells


def number(v: float) -> str:
    """Three significant digits, written out (2850, not 2.85e+03) between 1e-4 and 1e6."""
    return "n/a" if v is None or math.isnan(v) else f"{float(f'{v:.3g}'):g}"


def shown(cell: Cell) -> str:
    """'mean [low, high] (n)': the mean effect and its widened interval, on the measured scale."""
    if cell.verdict == "not testable":
        text = f"not testable: {cell.why}"
    else:
        text = f"{number(cell.mean)} [{number(cell.low)}, {number(cell.high)}] (n={cell.n})"
    return text + (f"; the direction read {shown(cell.direction_read)}" if cell.direction_read else "")


def judged(stages: Stages, stage: str, name: str, claim_id: str, c: Criterion) -> Judgement | None:
    """The claim's verdict in one stage; None where the stage has no finished run of its experiment."""
    s = getattr(stages, stage)
    if not s.findings.get(name):
        return None
    return judge(s.findings[name][claim_id], c, s.more.get(name, {}).get(claim_id))


def frozen_criterion(registered: dict | None, experiment: str, claim_id: str, c: Criterion) -> Criterion:
    """The criterion the confirmatory runs are judged by: the frozen one (a criterion changed since is listed among
    the registration's problems, never used)."""
    frozen = (registered or {}).get("criteria", {}).get(experiment, {}).get(claim_id)
    return Criterion(**{k: frozen[k] for k in vars(c)}) if frozen else c


def claim_row(experiment: str, claim_id: str, claim: DictConfig, stages: Stages) -> dict:
    c = Criterion.of(claim)
    row = {"id": claim_id, "experiment": experiment, "kind": str(claim.kind), "source": claim.source,
           "setup": claim.setup, "criterion": criterion(c), "measures": claim.measures or claim.statement,
           "threshold": f"{'≥' if c.direction == 'ge' else '≤'} {number(c.threshold)}",
           "paper value": "—" if claim.paper_effect is None else number(claim.paper_effect),
           "paper effect": "—" if claim.paper_effect is None else f"{claim.paper_effect:g} ({claim.paper_ref})"}
    for stage in ("exploratory", "confirmatory"):
        j = judged(stages, stage, experiment, claim_id,
                   frozen_criterion(stages.frozen, experiment, claim_id, c) if stage == "confirmatory" else c)
        row[f"{stage} judgement"] = j
        row[f"{stage} magnitude"] = j.verdict if j else ""
        row[f"{stage} direction"] = (j.direction or "") if j else ""
        row[f"{stage} measured"] = "" if j is None else (
            shown(next(iter(j.cells.values()))) if len(j.cells) == 1 else holds_in(j.cells))
    both = row["confirmatory magnitude"] and row["exploratory magnitude"]
    row["differs"] = bool(both) and (row["confirmatory magnitude"], row["confirmatory direction"]) != (
        row["exploratory magnitude"], row["exploratory direction"])
    if claim.amended:
        a = claim.amended
        row |= {"amended": True, "verdict then": a.verdict,
                "original": f"{a.statement} ({'≥' if str(a.direction) == 'ge' else '≤'} {a.threshold:g})"}
    return row


def criterion(c: Criterion) -> str:
    """'≥ 0.5 (ratio, δ ×1.11; no effect 1; cells: all)': a ratio's resolution as the factor it allows."""
    side = "≥" if c.direction == "ge" else "≤"
    null = "" if c.no_effect is None else f"; no effect {c.no_effect:g}"
    delta = f"δ ×{math.exp(c.resolution):.3g}" if c.effect == "ratio" else f"δ {c.resolution:g}"
    return f"{side} {c.threshold:.3g} ({c.effect}, {delta}{null}; cells: {c.cells})"


def claim_section(row: dict, claim: DictConfig, stages: Stages, name: str) -> str:
    """A claim's statement, setup, criterion, per-cell table in both stages and the analyses' detail."""
    stage = "confirmatory" if row["confirmatory judgement"] else "exploratory"
    text = [f"## {row['id']}",
            f"**{row['kind'].capitalize()}; {stage}: direction {row[f'{stage} direction'] or '—'}, magnitude "
            f"{row[f'{stage} magnitude'] or '—'}.** Measures: {claim.measures or claim.statement}.",
            f"*{claim.source}.* {claim.statement}. Setup: {claim.setup}."
            + (f" Confound: {claim.confound}." if claim.confound else "")
            + f" Criterion: mean {row['criterion']}; one value per seed. Paper: {claim.paper}"
            + (f" Paper's effect: {claim.paper_effect:g} ({claim.paper_ref})." if claim.paper_effect is not None
               else "")]
    cells = []
    for stage in ("confirmatory", "exploratory"):
        j = row[f"{stage} judgement"]
        if j is None:
            continue
        cells += [{"stage": stage, "cell": cell or "(one)", "mean [low, high] (n)": shown(x), "magnitude": x.verdict,
                   "direction": x.direction or "—"} for cell, x in j.cells.items()]
    if cells:
        text.append(markdown(pd.DataFrame(cells)))
    for stage in ("confirmatory", "exploratory"):
        f = getattr(stages, stage).findings.get(name, {}).get(row["id"])
        if f is not None and f.detail:
            text.append(f"{stage.capitalize()}: {f.detail}")
    if claim.amended:
        a = claim.amended
        text.append(f"Amended after its results were seen. Original criterion: {row['original']}, verdict then: "
                    f"{a.verdict}. Why: {a.why}")
    return "\n\n".join(text)


def markdown(table: pd.DataFrame) -> str:
    """A markdown table whose text cells may hold '|' (norms such as ||g||)."""
    return table.map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v).to_markdown(index=False)


def environments(runs: pd.DataFrame) -> str:
    """The software and CPUs each stage's runs trained with (their commits are in runs.csv)."""
    keys = ["stage", "torch", "torchvision", "python", "cpu"]
    env = runs.drop_duplicates(keys)[keys] if len(runs) and "cpu" in runs else pd.DataFrame()
    return "; ".join(f"{e.stage}: torch {e.torch}, torchvision {e.torchvision}, Python {e.python}, {e.cpu}"
                     for e in env.itertuples()) or "no runs"


def compact(rows: list[dict]) -> str:
    """A markdown table without tabulate's padding, so that the front page stays short; '|' in text escaped."""
    if not rows:
        return "(none)"
    cols = list(rows[0])
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|",
                      *("| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows)])


def claim_link(row: dict) -> str:
    return f"[{row['id']}]({PAGES}/{row['experiment']}.md#{row['id'].lower()})"


def brief(cell: Cell) -> str:
    """'mean [low, high]', or 'not testable' (its page says why)."""
    return cell.verdict if cell.verdict == "not testable" else f"{number(cell.mean)} [{number(cell.low)}, " \
                                                              f"{number(cell.high)}]"


def front_rows(row: dict) -> list[dict]:
    """A claim's rows on the front page: the claim, then one row per cell where it has several."""
    stage = "confirmatory" if row["confirmatory judgement"] else "exploratory"
    j = row[f"{stage} judgement"]
    first = {"claim": claim_link(row), "measures": row["measures"], "paper": row["paper value"],
             "threshold": row["threshold"], "ours: mean [95% CI ± δ]": "no runs", "n": "",
             "direction": row[f"{stage} direction"] or "—", "magnitude": row[f"{stage} magnitude"] or "—"}
    if j is None:
        return [first]
    if len(j.cells) == 1:
        only = next(iter(j.cells.values()))
        return [first | {"ours: mean [95% CI ± δ]": brief(only), "n": only.n}]
    return [first | {"ours: mean [95% CI ± δ]": holds_in(j.cells)}] + [
        {"claim": f"↳ {name}", "measures": "", "paper": "", "threshold": "", "ours: mean [95% CI ± δ]": brief(x),
         "n": x.n, "direction": x.direction or "—", "magnitude": x.verdict} for name, x in j.cells.items()]


def differing(rows: list[dict]) -> str:
    return compact([{"claim": claim_link(r), "measures": r["measures"],
                     "confirmatory": f"{r['confirmatory direction'] or '—'} / {r['confirmatory magnitude']}",
                     "exploratory": f"{r['exploratory direction'] or '—'} / {r['exploratory magnitude']}"}
                    for r in rows])


def registration_line(scale: str, stages: Stages) -> str:
    problems = "\n".join(f"- {p}" for p in stages.problems)
    return (f"**Registration:** criteria, seeds and best rates frozen in `{registration_path(scale).name}` at "
            f"commit `{stages.freeze}`. " + ("The confirmatory runs and the criteria in force match it."
                                             if not stages.problems else f"**It does not hold:**\n\n{problems}"))


def header(scale: str, runs: pd.DataFrame, rows: list[dict], stages: Stages) -> str:
    """The front page: the registration, both tallies, one table per source (a row per claim and per cell, each
    id linked to its experiment's page), the verdicts that differ between the stages, the sanity checks apart,
    the amendments and the experiments' pages."""
    claims = [r for r in rows if r["kind"] == "claim"]
    differ = [r for r in claims if r["differs"]]
    failed = [f"{stage.name}: {name}" for stage in (stages.exploratory, stages.confirmatory) for name in stage.failed]
    text = [f"# bnlab report (scale `{scale}`)",
            f"Generated by `python -m bnlab.report --scale {scale}` from the run directories under `results/runs/`;"
            f" every number below comes from those files. Runs trained with: {environments(runs)}; every run "
            "single-threaded.", registration_line(scale, stages),
            f"**Confirmatory (fresh seeds {CONFIRMATORY_SEEDS[0]}-{CONFIRMATORY_SEEDS[FIRST_SEEDS - 1]}, "
            f"{CONFIRMATORY_SEEDS[FIRST_SEEDS]}-{CONFIRMATORY_SEEDS[-1]} for inconclusive cells): "
            f"{tally(rows, 'confirmatory')}.**",
            *([f"**Analyses that failed** (their claims read not testable; tracebacks on stderr): "
               f"{', '.join(failed)}."] if failed else []),
            f"Exploratory (each experiment's own seeds, which designed the criteria; same criteria): "
            f"{tally(rows, 'exploratory')}; {len(differ)} claims differ between the stages.",
            "How a verdict is reached: [docs/method.md](../docs/method.md). Per cell, the mean effect over seeds "
            "and its 95% t-interval widened by the claim's resolution δ; *magnitude*: against the threshold "
            f"({MAGNITUDE_SHARE:g} of the paper's effect where it gives one); *direction*: against no effect. "
            "Cells combine by the rule each claim declares; \"holds in k of m cells\" describes, it does not judge. "
            "Each id links to its experiment's page: setup, confound, criterion, both stages' cells, figures.",
            "## Claims", *[part for group in SECTIONS if (mine := [r for r in claims if r["group"] == group])
                           for part in (f"### {group}", compact([x for r in mine for x in front_rows(r)]))],
            "## Verdicts that differ between the stages", differing(differ),
            "## Sanity checks",
            "These hold by construction: they confirm the implementation and are not counted as evidence.",
            compact([x for r in rows if r["kind"] == "check" for x in front_rows(r)]),
            *amendments(rows), "## Experiments", pages_list(rows)]
    return "\n\n".join(text)


def amendments(rows: list[dict]) -> list[str]:
    amended = [r for r in rows if r.get("amended")]
    return ["## Amended criteria", "Criteria replaced after their results were seen; each claim's page gives the "
            "original criterion and the reason.",
            compact([{"claim": claim_link(r), "verdict then": r["verdict then"],
                      "confirmatory magnitude now": r["confirmatory magnitude"] or "—"} for r in amended])
            ] if amended else []


def pages_list(rows: list[dict]) -> str:
    names = dict.fromkeys((r["experiment"], r["group"]) for r in rows)
    return "\n".join(f"- [{name}]({PAGES}/{name}.md): {group}, "
                     f"{sum(r['experiment'] == name for r in rows)} claims" for name, group in names)


def log_artifact(out_dir: Path, scale: str, mode: Literal["online", "offline", "disabled"]) -> None:
    """REPORT.md, figures and tables as one wandb artifact of a 'report' run in the group report/<scale>."""
    import wandb  # lazy, as for the runs

    run = wandb.init(project="bnlab", mode=mode, dir=str(out_dir), job_type="report", group=f"report/{scale}",
                     name=f"report-{scale}", settings=wandb.Settings(silent=True, console="off"))
    artifact = wandb.Artifact(f"bnlab-report-{scale}", type="report")
    artifact.add_file(str(out_dir / "REPORT.md"))
    for folder in ("figures", "tables"):
        if (out_dir / folder).is_dir():
            artifact.add_dir(str(out_dir / folder), name=folder)
    run.log_artifact(artifact)
    run.finish()


def report_dir(scale: str) -> Path:
    return REPO_ROOT / "results" if scale == "cpu" else REPO_ROOT / "results" / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="cpu", help="which profile's runs to report (smoke | cpu | paper)")
    parser.add_argument("--out-dir", type=Path, help="where REPORT.md, figures and tables go (default results/)")
    parser.add_argument("--archive", type=Path, help="exploratory runs to unpack when the scale has none on disk "
                        "(default results/evidence_<scale>.tar.xz)")
    parser.add_argument("--wandb", default="disabled", choices=("disabled", "offline", "online"),
                        help="also log REPORT.md, figures and tables to wandb as an artifact")
    parser.add_argument("--inconclusive", nargs="*", metavar="EXPERIMENT", choices=experiment_names(),
                        help="print (last line) the experiments (of those named; none named: all) with a claim's "
                        "cell inconclusive on the first confirmatory seeds, and write nothing; overrides go "
                        "before it")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. out_root=/elsewhere data.root=/data")
    args = parser.parse_args()
    if args.inconclusive is not None:
        print(" ".join(inconclusive(args.scale, args.overrides, args.inconclusive or None)))
        return
    out_dir = args.out_dir or report_dir(args.scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stage in ("exploratory", "confirmatory"):  # a fresh clone: the committed evidence
        root, archive = runs_root(args.scale, stage, args.overrides), archive_path(args.scale, stage)
        if stage == "exploratory" and args.archive:
            archive = args.archive
        if not any(root.glob("*/*/config.yaml")) and archive.is_file():
            print(f"[bnlab] no runs under {root}: restored {unpack(archive, root)} from {archive}")
    text, pages, rows, runs, stages = build_report(args.scale, out_dir, args.overrides)
    atomic_write_text(out_dir / "REPORT.md", text)
    write_pages(out_dir, pages)
    if out_dir == report_dir("cpu") and args.scale == "cpu":  # the README shows the default profile's verdicts
        update_readme(claims_for_readme(rows, out_dir, stages.freeze))
    failed = int(runs.status.isin(["failed", "incomplete"]).sum()) if len(runs) else 0
    stale = int((runs.stale | ~runs.in_sweep).sum()) if len(runs) else 0
    if args.wandb != "disabled":
        log_artifact(out_dir, args.scale, args.wandb)
    broken = [n for stage in (stages.exploratory, stages.confirmatory) for n in stage.failed]
    print(f"[bnlab] confirmatory: {tally(rows)}\n[bnlab] exploratory: {tally(rows, 'exploratory')}\n"
          + (f"[bnlab] ANALYSES FAILED: {', '.join(broken)} (tracebacks above)\n" if broken else "")
          + "".join(f"[bnlab] registration: {p}\n" for p in stages.problems)
          + f"[bnlab] {failed} failed or incomplete runs, {stale} left out (stale or outside the sweep); "
          f"wrote {out_dir / 'REPORT.md'}")

if __name__ == "__main__":
    main()
