"""Turn run directories into figures, tables and results/REPORT.md, one verdict per claim.

  python -m bnlab.report [--scale cpu]

For each experiment config (configs/experiment/<name>.yaml) with runs on disk, `experiments.<name>.analyze`
measures each claim that config declares. The verdict is mechanical, from the criterion written in the
config before any run:
  reproduced      the median over seeds meets the criterion, and so does every seed
  partly          the median meets it, at least one seed does not
  not reproduced  the median does not meet it
"""

import argparse
import copy
import importlib
import itertools
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from bnlab import collect, plots
from bnlab.config import REPO_ROOT, run_identity
from bnlab.runlog import atomic_write_text, environment

CONFIG_DIR = REPO_ROOT / "configs"


@dataclass
class Finding:
    claim: str  # a key of the experiment config's `claims`
    values: list[float]  # the measured quantity, one value per seed (or per independent replicate)
    detail: str = ""  # what was measured, in words and numbers
    figure: str = ""  # path of the figure that shows it


@dataclass
class Context:
    """What an experiment's analysis gets: its runs, its config and where to put figures and tables."""

    name: str
    cfg: DictConfig
    runs: pd.DataFrame
    out_dir: Path
    tables: list[str] = field(default_factory=list)

    def figure_path(self, stem: str) -> Path:
        return self.out_dir / "figures" / f"{self.name}_{stem}"

    def write_table(self, stem: str, table: pd.DataFrame, caption: str) -> None:
        path = self.out_dir / "tables" / f"{self.name}_{stem}"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path.with_suffix(".csv"), table.to_csv(index=False))
        self.tables.append(f"**{caption}** (`{path.with_suffix('.csv').relative_to(self.out_dir)}`)\n\n"
                           + table.to_markdown(index=False))


def passes(value: float, threshold: float, direction: str) -> bool:
    return value >= threshold if direction == "ge" else value <= threshold


def verdict(values: list[float], threshold: float, direction: str) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "not measured"
    if not passes(statistics.median(vals), threshold, direction):
        return "not reproduced"
    return "reproduced" if all(passes(v, threshold, direction) for v in vals) else "partly"


def experiment_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def experiment_config(name: str, scale: str, overrides: list[str] = ()) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}", f"scale={scale}", *overrides])


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def sweep_jobs(name: str, scale: str, overrides: list[str] = ()) -> tuple[set[frozenset[str]], set[str]]:
    """The jobs that `python -m bnlab.train experiment=<name> scale=<scale> <overrides>` launches, each as the set
    of overrides that names its run directory, and the keys that such names leave out. Expanded as Hydra's basic
    sweeper does: the experiment's sweep params, then the given overrides, which replace a param of their key."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}", f"scale={scale}", *overrides],
                      return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    choices = {}
    for o in OverridesParser.create().parse_overrides([*params, *overrides]):
        key = o.get_key_element()
        values = o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices[key] = [f"{key}={v}" for v in values]
    named = [v for k, v in choices.items() if _key(k) not in excluded]
    return {frozenset(job) for job in itertools.product(*named)}, excluded


def job_name(job_overrides: tuple[str, ...] | None, excluded: set[str]) -> frozenset[str] | None:
    """The overrides that name a run's directory, as `sweep_jobs` lists a job (None: no record of them)."""
    return None if job_overrides is None else frozenset(o for o in job_overrides if _key(o) not in excluded)


def in_sweep(name: frozenset[str] | None, jobs: set[frozenset[str]]) -> bool:
    """Was the run of this `job_name` one of the sweep's jobs? A run without Hydra's record of its overrides counts."""
    return name is None or name in jobs


def job_identities(name: str, scale: str, jobs: set[frozenset[str]]) -> dict[frozenset[str], str]:
    """The identity (`config.run_identity`) that `train` gives each job under the config files as they are now.
    One Hydra compose per combination of config-group choices (~0.2 s each); the job's other overrides are set
    on a copy of it, as Hydra sets them after composing, so a grid of rates and seeds costs one compose."""
    parser, composed, out = OverridesParser.create(), {}, {}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for job in jobs:
            groups = tuple(sorted(o for o in job if (CONFIG_DIR / _key(o)).is_dir()))
            if groups not in composed:
                composed[groups] = compose("train", overrides=[f"experiment={name}", f"scale={scale}", *groups])
            cfg = copy.deepcopy(composed[groups])
            for o in parser.parse_overrides(sorted(job - set(groups))):
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
            out[job] = run_identity(cfg)
    return out


README_START, README_END = "<!-- claims:start -->", "<!-- claims:end -->"


def claims_for_readme(rows: list[dict], out_dir: Path) -> str:
    """The claims table in short: claim id, source, ours, verdict, with the figure link made README-relative."""
    table = pd.DataFrame([{"claim": r["claim"].split("**")[1], "source": r["source"], "criterion": r["criterion"],
                           "measured": r["measured: median [min, max]"], "verdict": r["verdict"],
                           "figure": r["figure"].replace("](", f"]({out_dir.relative_to(REPO_ROOT)}/")}
                          for r in rows])
    return table.to_markdown(index=False)


def update_readme(table: str) -> None:
    readme = REPO_ROOT / "README.md"
    text = readme.read_text()
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        tail = rest.split(README_END, 1)[1]
        atomic_write_text(readme, f"{head}{README_START}\n{table}\n{README_END}{tail}")


def build_report(scale: str, out_dir: Path, overrides: list[str] = ()) -> tuple[str, list[dict]]:
    rows, sections, all_runs = [], [], []
    for name in experiment_names():
        cfg = experiment_config(name, scale, overrides)
        sweep_dir = Path(cfg.out_root) / scale / name
        on_disk = collect.runs(sweep_dir)
        if len(on_disk):  # runs of another grid, with overrides the sweep does not make, or whose config has
            # changed since they trained (their identity is not the one train would give them now) are left out
            jobs, excluded = sweep_jobs(name, scale, overrides)
            named = [job_name(o, excluded) for o in on_disk.job_overrides]
            on_disk["in_sweep"] = [in_sweep(n, jobs) for n in named]
            current = job_identities(name, scale, {n for n in named if n in jobs})
            identity = on_disk.identity if "identity" in on_disk else [None] * len(on_disk)
            on_disk["stale"] = [n in current and isinstance(i, str) and i != current[n]
                                for n, i in zip(named, identity, strict=True)]
            all_runs.append(on_disk.drop(columns="job_overrides").assign(experiment=name))
        runs = on_disk[on_disk.in_sweep & ~on_disk.stale] if len(on_disk) else on_disk
        findings: list[Finding] = []
        ctx = Context(name, cfg, runs, out_dir)
        sections.append(f"### {name}")
        if len(runs):
            findings = importlib.import_module(f"experiments.{name}").analyze(ctx)
        by_claim = {f.claim: f for f in findings}
        for claim_id, claim in cfg.claims.items():
            f = by_claim.get(claim_id, Finding(claim_id, [], "no runs on disk yet"))
            op = "≥" if claim.direction == "ge" else "≤"
            fig = f"[figure]({Path(f.figure).relative_to(out_dir)})" if f.figure else ""
            cell = lambda text: text.replace("|", "\\|")  # noqa: E731  (norms like ||g|| inside a table)
            rows.append({"claim": f"**{claim_id}** {cell(claim.statement)}", "source": cell(claim.source),
                         "paper": cell(claim.paper), "criterion": f"{op} {claim.threshold:g}",
                         "measured: median [min, max]": plots.median_range(f.values),
                         "verdict": verdict(f.values, claim.threshold, claim.direction), "figure": fig})
            if f.detail:
                sections.append(f"- **{claim_id}**: {f.detail}")
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
    env = environment()
    header = (f"# bnlab report (scale `{scale}`)\n\nGenerated by `python -m bnlab.report --scale {scale}` from the "
              f"run directories under `results/runs/{scale}/`; every number below comes from those files.\n"
              f"torch {env['torch']}, torchvision {env['torchvision']}, Python {env['python']}, "
              f"git {env['git_sha'][:10]}, {env['cpu']}; every run single-threaded, two runs at a time. "
              "Numbers are median [min, max] over seeds (n = number of values).\n\n"
              "Verdicts: *reproduced* = the median over seeds meets the criterion fixed in the experiment "
              "config before the runs, and so does every seed; *partly* = the median meets it but some seed "
              "does not; *not reproduced* = the median does not.\n\n")
    body = pd.DataFrame(rows).to_markdown(index=False) if rows else "(no claims)"
    return header + "## Claims\n\n" + body + "\n\n## Details\n\n" + "\n\n".join(sections) + "\n", rows


def report_dir(scale: str) -> Path:
    return REPO_ROOT / "results" if scale == "cpu" else REPO_ROOT / "results" / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="cpu", help="which profile's runs to report (smoke | cpu | paper)")
    parser.add_argument("--out-dir", type=Path, help="where REPORT.md, figures and tables go (default results/)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. out_root=/elsewhere data.root=/data")
    args = parser.parse_args()
    out_dir = args.out_dir or report_dir(args.scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    text, rows = build_report(args.scale, out_dir, args.overrides)
    atomic_write_text(out_dir / "REPORT.md", text)
    if out_dir == report_dir("cpu") and args.scale == "cpu":  # the README shows the default profile's verdicts
        update_readme(claims_for_readme(rows, out_dir))
    print(f"[bnlab] wrote {out_dir / 'REPORT.md'}")


if __name__ == "__main__":
    main()
