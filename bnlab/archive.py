"""The evidence: everything the report reads from a scale's run directories, in one compressed file.

  python -m bnlab.archive pack [--scale cpu]      results/runs/<scale>/ -> results/evidence_<scale>.tar.xz
  python -m bnlab.archive unpack [--scale cpu]    the reverse, skipping run directories already on disk
  ... unpack --only fig1 [--only dln/<run>]       only the runs under these experiments (or runs)
  ... --stage confirmatory                        results/runs/confirmatory/<scale>/ <-> ..._confirmatory.tar.xz

Run directories are git-ignored (checkpoints are large); the archive is committed, so that a fresh clone can
recompute every number of REPORT.md without training: `python -m bnlab.report` unpacks it when a scale has no
runs on disk. It holds each run's config, Hydra overrides, summary and logs, and the final weights where a
run kept them for an analysis (model.pt); never checkpoints.
"""

import argparse
import io
import tarfile
from collections.abc import Iterable
from pathlib import Path

from bnlab.config import REPO_ROOT
from bnlab.runlog import ACTIVATIONS, CONFIG, ERROR, METRICS, MODEL, PROBES, SUMMARY, atomic_write_bytes

FILES = (CONFIG, ".hydra/overrides.yaml", SUMMARY, METRICS, ACTIVATIONS, PROBES, ERROR, MODEL)


def archive_path(scale: str, stage: str = "exploratory") -> Path:
    """results/evidence_<scale>.tar.xz (exploratory) or results/evidence_<scale>_confirmatory.tar.xz."""
    return REPO_ROOT / "results" / f"evidence_{scale}{'' if stage == 'exploratory' else '_' + stage}.tar.xz"


def pack(runs_root: Path, archive: Path) -> int:
    """Every run directory under runs_root (<experiment>/<run>/) into archive, in a fixed order with fixed
    metadata, so that the same runs give the same bytes. Returns the number of runs."""
    runs = sorted(p.parent for p in runs_root.glob("*/*/config.yaml"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz", preset=9) as tar:
        for run in runs:
            for name in FILES:
                path = run / name
                if path.is_file():
                    info = tarfile.TarInfo(str(path.relative_to(runs_root)))
                    data = path.read_bytes()
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
    atomic_write_bytes(archive, buffer.getvalue())
    return len(runs)


def unpack(archive: Path, runs_root: Path, only: str | Iterable[str] | None = None) -> int:
    """Restore the run directories of archive under runs_root; a run directory already there is left as it is
    (it may hold newer work). `only` restores just the runs under these paths, each an experiment ("fig1") or one
    run ("fig1/norm=batch,optim.lr=0.1,seed=0"), matched whole folder names at a time; one the archive lacks is a
    ValueError. Returns the number of runs restored."""
    prefixes = None if only is None else [tuple(Path(p).parts) for p in ([only] if isinstance(only, str) else only)]
    restored, found = set(), set()
    with tarfile.open(archive, "r:xz") as tar:
        for member in tar.getmembers():
            run = member.name.split("/")[:2]
            if len(run) < 2 or member.name.startswith(("/", "..")) or ".." in member.name.split("/"):
                continue
            if prefixes is not None:
                hits = {prefix for prefix in prefixes if tuple(member.name.split("/")[:len(prefix)]) == prefix}
                if not hits:
                    continue
                found |= hits
            if (runs_root / run[0] / run[1]).exists() and tuple(run) not in restored:
                continue
            restored.add(tuple(run))
            tar.extract(member, runs_root, filter="data")
    if missing := [prefix for prefix in prefixes or () if prefix not in found]:
        raise ValueError(f"{archive} holds no runs under {', '.join('/'.join(m) for m in missing)}")
    return len(restored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--stage", default="exploratory", choices=("exploratory", "confirmatory"))
    parser.add_argument("--runs", type=Path, help="the scale's run directories (default results/runs/<scale>)")
    parser.add_argument("--archive", type=Path, help="default results/evidence_<scale>.tar.xz")
    parser.add_argument("--only", action="append", metavar="EXPERIMENT[/RUN]",
                        help="unpack: only the runs under this experiment (or this one run); repeatable")
    args = parser.parse_args()
    if args.only and args.action == "pack":
        parser.error("--only applies to unpack")
    stage_dir = REPO_ROOT / "results" / "runs" / ("" if args.stage == "exploratory" else args.stage)
    runs_root = args.runs or stage_dir / args.scale
    archive = args.archive or archive_path(args.scale, args.stage)
    if args.action == "pack":
        n = pack(runs_root, archive)
        print(f"[bnlab] packed {n} runs into {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    else:
        try:
            n = unpack(archive, runs_root, args.only)
        except ValueError as error:
            raise SystemExit(f"[bnlab] {error}") from None
        print(f"[bnlab] restored {n} runs under {runs_root}")


if __name__ == "__main__":
    main()
