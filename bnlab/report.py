"""Turn run directories into figures, tables and results/REPORT.md, one verdict per claim.

  python -m bnlab.report [--scale cpu]

For each experiment config (configs/experiment/<name>.yaml) with runs on disk, `experiments.<name>.analyze`
measures each claim that config declares; `bnlab.claims` gives the verdict, mechanically, from the criterion
written in the config before the runs. REPORT.md opens with the tally of the empirical claims, keeps the
sanity checks (`kind: check`) apart, and lists every amended criterion beside its original.
"""

import argparse
import importlib
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from bnlab import plots, runlog
from bnlab.archive import archive_path, unpack
from bnlab.claims import MIN_REPLICATES, VERDICTS, Context, Finding, claim_verdict, replicates, verdict
from bnlab.config import REPO_ROOT
from bnlab.runlog import DONE, atomic_write_text
from bnlab.sweeps import experiment_config, experiment_names, in_sweep, job_identities, job_name, sweep_jobs

README_START, README_END = "<!-- claims:start -->", "<!-- claims:end -->"


def tally(rows: list[dict]) -> str:
    """'N empirical claims: a reproduced, b not reproduced, ...; k sanity checks apart'."""
    claims = [r for r in rows if r["kind"] == "claim"]
    counts = ", ".join(f"{n} {v}" for v in (*VERDICTS, "not measured")
                       if (n := sum(r["base verdict"] == v for r in claims)))
    return f"{len(claims)} empirical claims: {counts}; {sum(r['kind'] == 'check' for r in rows)} sanity checks apart"


def claims_for_readme(rows: list[dict], out_dir: Path) -> str:
    """The README's block: the tally of the empirical claims, by source, and where the report is."""
    report = (out_dir / "REPORT.md").relative_to(REPO_ROOT)
    claims = [r for r in rows if r["kind"] == "claim"]
    by_group = pd.DataFrame([{"source": group, "claims": len(mine),
                              **{v: sum(r["base verdict"] == v for r in mine) for v in VERDICTS}}
                             for group in GROUPS if (mine := [r for r in claims if r["group"] == group])])
    return f"**{tally(rows)}.** Claim by claim, with the numbers: [{report}]({report}).\n\n" + markdown(by_group)


def update_readme(table: str) -> None:
    readme = REPO_ROOT / "README.md"
    text = readme.read_text()
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        tail = rest.split(README_END, 1)[1]
        atomic_write_text(readme, f"{head}{README_START}\n{table}\n{README_END}{tail}")


# The report's order: by source, as a reader looks claims up; each heading with the prefixes of the claim sources
# it holds (an experiment goes under its first claim's source).
SOURCES = (("Ioffe & Szegedy 2015", ("Ioffe & Szegedy",)), ("Santurkar et al. 2018", ("Santurkar",)),
           ("Deep Learning Book §8.7.1", ("Goodfellow",)), ("Bjorck et al. 2018", ("Bjorck",)),
           ("LayerNorm, GroupNorm and Batch Renormalization", ("Ba et al.", "Wu & He", "Ioffe 2017")),
           ("Questions from the write-up", ("Write-up",)), ("Other", ("",)))
GROUPS = tuple(heading for heading, _ in SOURCES)


def source_group(source: str) -> str:
    """The report heading a claim source goes under."""
    return next(heading for heading, prefixes in SOURCES if source.startswith(prefixes))


def by_source(configs: dict[str, DictConfig]) -> list[tuple[str, str]]:
    """(heading, experiment) in the report's order."""
    keyed = [(source_group(next(iter(cfg.claims.values())).source if cfg.claims else ""), name)
             for name, cfg in configs.items()]
    return sorted(keyed, key=lambda k: (GROUPS.index(k[0]), k[1]))


def build_report(scale: str, out_dir: Path, overrides: list[str] = ()) -> tuple[str, list[dict], pd.DataFrame]:
    rows, sections, all_runs = [], [], []
    configs = {name: experiment_config(name, scale, overrides) for name in experiment_names()}
    group_now = None
    for group, name in by_source(configs):
        cfg = configs[name]
        if group != group_now:
            sections.append(f"### {group}")
            group_now = group
        sweep_dir = Path(cfg.out_root) / scale / name
        on_disk = runlog.runs(sweep_dir)
        if len(on_disk):  # runs of another grid, with overrides the sweep does not make, or whose config has
            # changed since they trained (their identity is not the one train would give them now) are left out
            jobs, excluded = sweep_jobs(name, scale, overrides)
            named = [job_name(o, excluded) for o in on_disk.job_overrides]
            on_disk["in_sweep"] = [in_sweep(n, jobs) for n in named]
            current = job_identities(name, scale, {n for n in named if n in jobs})
            identity = on_disk.identity if "identity" in on_disk else [None] * len(on_disk)
            on_disk["stale"] = [n in current and isinstance(i, str) and i != current[n]
                                for n, i in zip(named, identity, strict=True)]
            all_runs.append(on_disk.drop(columns="job_overrides").assign(  # paths as the archive holds them
                experiment=name, path=[str(Path(p).relative_to(cfg.out_root)) for p in on_disk.path]))
        runs = on_disk[on_disk.in_sweep & ~on_disk.stale] if len(on_disk) else on_disk
        findings: list[Finding] = []
        ctx = Context(name, cfg, runs, out_dir)
        sections.append(f"#### Experiment `{name}`")
        if len(runs) and runs.status.isin(DONE).any():  # an analysis needs a run that trained to its end
            findings = importlib.import_module(f"experiments.{name}").analyze(ctx)
        for i, fig in enumerate(dict.fromkeys(ctx.figures)):  # the first embedded, every one linked
            link = fig.with_suffix(".png").relative_to(out_dir)
            sections.append(f"![{fig.name}]({link})" if i == 0 else f"Figure: [{fig.name}]({link})")
        by_claim = {f.claim: f for f in findings}
        for claim_id, claim in cfg.claims.items():
            f = by_claim.get(claim_id, Finding(claim_id, [], "no runs on disk yet"))
            row = claim_row(name, claim_id, claim, f, out_dir) | {"group": group}
            rows.append(row)
            sections.append(claim_section(row, claim, f))
        sections.extend(ctx.tables)
        if len(runs):
            bad = runs[runs.status.isin(["failed", "incomplete"])]
            counts = runs.status.value_counts().to_dict()
            sections.append(f"Runs of `{name}` on disk: {counts}."
                            + "".join(f"\n  - {s}: `{Path(p).relative_to(cfg.out_root)}`"
                                      for s, p in zip(bad.status, bad.path, strict=True)))
        if len(on_disk) and not on_disk.in_sweep.all():
            outside = on_disk[~on_disk.in_sweep].path
            sections.append("Left out of the analysis, not jobs of this experiment's current sweep (another grid, "
                            f"or overrides the sweep does not make): {len(outside)} run directories."
                            + "".join(f"\n  - `{Path(p).relative_to(cfg.out_root)}`" for p in outside))
        if len(on_disk) and on_disk.stale.any():
            stale = on_disk[on_disk.stale].path
            remake = f"make {name}" + ("" if scale == "cpu" else f" SCALE={scale}")
            sections.append(f"Left out of the analysis, trained under an earlier config of this experiment "
                            f"(`{remake}` retrains them): {len(stale)} run directories."
                            + "".join(f"\n  - `{Path(p).relative_to(cfg.out_root)}`" for p in stale))
    table = pd.concat(all_runs, ignore_index=True) if all_runs else pd.DataFrame()
    if len(table):
        atomic_write_text(out_dir / "runs.csv", table.to_csv(index=False))
    return header(scale, table, rows) + "\n\n## Details\n\n" + "\n\n".join(sections) + "\n", rows, table


def criterion(direction: str, threshold: float) -> str:
    return f"{'≥' if direction == 'ge' else '≤'} {threshold:g}"


def claim_row(experiment: str, claim_id: str, claim: DictConfig, f: Finding, out_dir: Path) -> dict:
    result, cells = claim_verdict(f, claim.threshold, claim.direction, claim.cells, claim.tie)
    a = claim.amended
    n = replicates(f)
    single = not isinstance(f.values, dict)
    return {"id": claim_id, "experiment": experiment, "kind": claim.kind, "source": claim.source,
            "statement": claim.statement, "criterion": criterion(claim.direction, claim.threshold),
            "measured": plots.median_range(f.values) if single else "; ".join(
                f"{cell}: {plots.median_range(v).split(' (')[0]}" for cell, v in f.cells().items()),
            "n": n, "verdict": result + (f" ({cells})" if cells and result == "partly" else ""),
            "few": 0 < n < MIN_REPLICATES, "base verdict": result,
            "figure": f"[figure]({Path(f.figure).relative_to(out_dir)})" if f.figure else "",
            **({"amended": True, "verdict then": a.verdict,
                "original": f"{a.statement} ({criterion(a.direction, a.threshold)})"} if a else {})}


def claim_section(row: dict, claim: DictConfig, f: Finding) -> str:
    """A claim's statement, criterion, what each value is, the per-cell table and the analysis's detail."""
    text = [f"##### {row['id']} ({row['kind']}): {row['verdict']}",
            f"*{claim.source}.* {claim.statement}. Criterion: measured {row['criterion']}; one value per "
            f"{claim.replicate}" + (f"; cells combine as: {claim.cells}" if isinstance(f.values, dict) else "")
            + f". Paper: {claim.paper}"]
    if isinstance(f.values, dict):
        table = pd.DataFrame([{"cell": cell, "measured: median [min, max] (n)": plots.median_range(v),
                               "verdict": verdict(v, claim.threshold, claim.direction, claim.tie)}
                              for cell, v in f.values.items()])
        text.append(markdown(table))
    if row["few"]:
        text.append(f"Fewer than {MIN_REPLICATES} replicates: read this verdict as provisional.")
    if f.detail:
        text.append(f.detail)
    if claim.amended:
        a = claim.amended
        text.append(f"Amended after its results were seen. Original criterion: {a.statement} "
                    f"({criterion(a.direction, a.threshold)}), verdict then: {a.verdict}. "
                    f"Why: {a.why}")
    return "\n\n".join(text)


def markdown(table: pd.DataFrame) -> str:
    """A markdown table whose text cells may hold '|' (norms such as ||g||)."""
    return table.map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v).to_markdown(index=False)


def header(scale: str, runs: pd.DataFrame, rows: list[dict]) -> str:
    """Tally of the empirical claims, the claims table, the sanity checks apart, and the amendments."""
    claims = [r for r in rows if r["kind"] == "claim"]
    checks = [r for r in rows if r["kind"] == "check"]
    env = (runs.drop_duplicates(["torch", "cpu", "git_sha"])[["torch", "torchvision", "python", "cpu", "git_sha"]]
           if len(runs) and "cpu" in runs else pd.DataFrame())
    where = "; ".join(f"torch {e.torch}, torchvision {e.torchvision}, Python {e.python}, {e.cpu}, "
                      f"git {str(e.git_sha)[:10]}" for e in env.itertuples()) or "no runs"
    cols = ["id", "source", "criterion", "measured", "n", "verdict", "figure"]
    table = lambda rs: markdown(pd.DataFrame(rs)[cols]) if rs else "(none)"  # noqa: E731
    amended = [r for r in rows if r.get("amended")]
    text = [f"# bnlab report (scale `{scale}`)",
            f"Generated by `python -m bnlab.report --scale {scale}` from the run directories under "
            f"`results/runs/{scale}/`; every number below comes from those files. Runs trained with: {where}; "
            "every run single-threaded.",
            f"**{tally(rows)}.**",
            "Verdicts: one value per independent replicate (a training run, one seed); *reproduced* = every "
            "replicate meets the criterion fixed in the experiment config before the runs; *not reproduced* = "
            "none does; *inconclusive* = replicates on both sides. A claim over several cells combines the "
            "cells' verdicts by the rule its config declares: *partly (k of m cells)* = some cells reproduced, "
            "fewer than the rule asks. Numbers are median [min, max] (n = replicates).",
            "## Claims", *[part for group in GROUPS if (mine := [r for r in claims if r["group"] == group])
                           for part in (f"### {group}", table(mine))],
            "## Sanity checks",
            "These hold by construction: they confirm the implementation and are not counted as evidence.",
            table(checks)]
    if amended:
        text += ["## Amended criteria", "Criteria replaced after their results were seen; each claim's section "
                 "gives the reason.", markdown(pd.DataFrame(amended)[["id", "original", "verdict then", "verdict"]])]
    return "\n\n".join(text)


def log_artifact(out_dir: Path, scale: str, mode: str) -> None:
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
    parser.add_argument("--archive", type=Path, help="runs to unpack when the scale has none on disk "
                        "(default results/evidence_<scale>.tar.xz)")
    parser.add_argument("--wandb", default="disabled", choices=("disabled", "offline", "online"),
                        help="also log REPORT.md, figures and tables to wandb as an artifact")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. out_root=/elsewhere data.root=/data")
    args = parser.parse_args()
    out_dir = args.out_dir or report_dir(args.scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_root = Path(experiment_config(experiment_names()[0], args.scale, args.overrides).out_root) / args.scale
    archive = args.archive or archive_path(args.scale)
    if not any(runs_root.glob("*/*/config.yaml")) and archive.is_file():  # a fresh clone: the committed evidence
        print(f"[bnlab] no runs under {runs_root}: restored {unpack(archive, runs_root)} from {archive}")
    text, rows, runs = build_report(args.scale, out_dir, args.overrides)
    atomic_write_text(out_dir / "REPORT.md", text)
    if out_dir == report_dir("cpu") and args.scale == "cpu":  # the README shows the default profile's verdicts
        update_readme(claims_for_readme(rows, out_dir))
    failed = int(runs.status.isin(["failed", "incomplete"]).sum()) if len(runs) else 0
    stale = int((runs.stale | ~runs.in_sweep).sum()) if len(runs) else 0
    if args.wandb != "disabled":
        log_artifact(out_dir, args.scale, args.wandb)
    print(f"[bnlab] {tally(rows)}\n"
          f"[bnlab] {failed} failed or incomplete runs, {stale} left out (stale or outside the sweep); "
          f"wrote {out_dir / 'REPORT.md'}")


if __name__ == "__main__":
    main()
