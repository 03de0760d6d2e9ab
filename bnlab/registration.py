"""The registration: every criterion, the confirmatory seeds and the best learning rates, frozen in one file before
any confirmatory run, and the check that the confirmatory runs and the criteria in force still match it.

  python -m bnlab.registration freeze [--scale cpu]   # writes configs/registration_<scale>.json: commit it alone
  python -m bnlab.registration check [--scale cpu]    # what `make report` checks too
  python -m bnlab.registration overrides fig1         # what a confirmatory sweep of fig1 adds (its chosen rates)

The freeze commit is the last commit that changed the registration file. A confirmatory run counts only if it was
trained at that commit or after it (its summary records its commit), and a verdict stands only while the criteria
in the configs equal the frozen ones; REPORT.md names the commit and prints every mismatch.
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

from bnlab.claims import FIRST_SEEDS, MAGNITUDE_SHARE, MORE_SEEDS, Criterion
from bnlab.config import CONFIG_DIR, REPO_ROOT
from bnlab.runlog import DONE

CONFIRMATORY_SEEDS = list(range(100, 100 + FIRST_SEEDS + MORE_SEEDS))  # no exploratory run uses a seed >= 100


def registration_path(scale: str) -> Path:
    return CONFIG_DIR / f"registration_{scale}.json"


def criteria(configs: dict) -> dict:
    """{experiment: {claim: what decides its verdict}}: everything a criterion is made of, as the verdict reads
    it (the statement too: it says what is measured)."""
    out = {}
    for name, cfg in sorted(configs.items()):
        out[name] = {cid: {"statement": c.statement, "kind": str(c.kind), "params": dict(c.params),
                           "paper_effect": c.paper_effect, **vars(Criterion.of(c))}
                     for cid, c in cfg.claims.items()}
    return out


def registration(configs: dict, rates: dict) -> dict:
    """The frozen record: criteria, seeds, the magnitude share and each experiment's chosen rates."""
    return {"magnitude_share": MAGNITUDE_SHARE, "seeds": {"first": CONFIRMATORY_SEEDS[:FIRST_SEEDS],
                                                          "more": CONFIRMATORY_SEEDS[FIRST_SEEDS:]},
            "criteria": criteria(configs), "rates": {k: rates[k] for k in sorted(rates)}}


def git(*args: str, repo: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)


def freeze_commit(path: Path, repo: Path = REPO_ROOT) -> str | None:
    """The last commit that changed the registration file (None: not committed, or no git history here)."""
    out = git("log", "-1", "--format=%H", "--", str(path), repo=repo)
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def at_or_after(commit: str, freeze: str, repo: Path = REPO_ROOT) -> bool | None:
    """Is `commit` the freeze commit or a descendant of it? None: git cannot tell (a commit it does not know, as
    in a shallow clone)."""
    rc = git("merge-base", "--is-ancestor", freeze, commit, repo=repo).returncode
    return True if rc == 0 else False if rc == 1 else None


def committed(path: Path, commit: str, repo: Path = REPO_ROOT) -> dict | None:
    """The registration as the freeze commit holds it (None: git cannot show it)."""
    out = git("show", f"{commit}:{path.relative_to(repo)}", repo=repo)
    return json.loads(out.stdout) if out.returncode == 0 else None


def differences(frozen: dict, now: dict, where: str = "") -> list[str]:
    """Every path at which two registrations differ, e.g. 'criteria.fig1.I1_faster.threshold: 0.5 -> 0.4' (a best
    rate's selection named by its arm, e.g. 'rates.fig1.norm.name: ...')."""
    if isinstance(frozen, dict) and isinstance(now, dict):
        return [d for k in sorted(set(frozen) | set(now), key=str)
                for d in differences(frozen.get(k, "(absent)"), now.get(k, "(absent)"), f"{where}.{arm_of(k)}"
                                     if where else str(k))]
    return [] if frozen == now else [f"{where}: {frozen} -> {now}"]


def arm_of(key) -> str:
    """A selection key (analysis.selection) by its arm alone; any other key as it is."""
    try:
        return ", ".join(json.loads(key)[0])
    except (TypeError, ValueError, IndexError, KeyError):
        return str(key)


def check(frozen: dict | None, now: dict, runs: pd.DataFrame, freeze: str | None, exploratory_seeds: set,
          after=at_or_after) -> list[str]:
    """What keeps the confirmatory verdicts from standing as registered ([] if nothing): criteria or rates that
    differ from the frozen ones, runs trained before the freeze, seeds an exploratory run used."""
    if frozen is None or freeze is None:
        return ["no committed registration: criteria were never frozen"]
    problems = [f"changed after the freeze: {d}" for d in differences(frozen, now)]
    if len(runs):
        # a run still training (or killed) has no summary, hence no commit yet; the analyses do not read it
        done = runs[runs.status.isin(DONE)] if "status" in runs else runs
        shas = done.git_sha.map(lambda sha: "" if pd.isna(sha) else str(sha))
        verdict = {sha: after(sha, freeze) if sha else None for sha in sorted(set(shas))}
        problems += [f"{int((shas == sha).sum())} confirmatory runs trained at {sha[:10] or 'an unrecorded commit'}, "
                     + ("not at or after the freeze" if ok is False else "which git cannot place against the freeze")
                     for sha, ok in verdict.items() if not ok]
        reused = sorted(set(runs.seed.astype(int)) & exploratory_seeds)
        problems += [f"confirmatory runs on seeds an exploratory run used: {reused}"] if reused else []
    return problems


def confirmatory_overrides(name: str, scale: str, frozen: dict | None) -> list[str]:
    """What a confirmatory sweep of `name` adds to its command line: where the experiment trains only the chosen
    rates, those rates (the union over its arms)."""
    from bnlab.sweeps import experiment_config

    if frozen is None or not experiment_config(name, scale).chosen_rates_only:
        return []
    rates = sorted({lr for choice in frozen["rates"].get(name, {}).values() for _, lr in choice})
    return [f"optim.lr={','.join(f'{lr:g}' for lr in rates)}"] if rates else []


def load(scale: str) -> dict | None:
    path = registration_path(scale)
    return json.loads(path.read_text()) if path.is_file() else None


def write(scale: str, record: dict) -> Path:
    path = registration_path(scale)
    path.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("freeze", "check", "overrides"))
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("experiment", nargs="?", help="overrides: the experiment whose confirmatory overrides to print")
    args = parser.parse_args()
    if args.action == "overrides":
        print(" ".join(confirmatory_overrides(args.experiment, args.scale, load(args.scale))))
        return
    from bnlab import report  # the exploratory analyses choose the rates

    stages = report.analyse_stages(args.scale, Path(tempfile.mkdtemp()), figures=False)
    if args.action == "freeze":
        print(f"[bnlab] wrote {write(args.scale, stages.registration)}: commit it alone, before any confirmatory run")
        return
    problems = stages.problems
    print("\n".join(f"[bnlab] {p}" for p in problems) or f"[bnlab] registration holds (frozen at {stages.freeze})")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
