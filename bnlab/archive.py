"""The evidence: everything the report reads from a scale's run directories, in one compressed file.

  python -m bnlab.archive pack [--scale cpu]      results/runs/<scale>/ -> results/evidence_<scale>.tar.xz
  python -m bnlab.archive unpack [--scale cpu]    the reverse, skipping run directories already on disk
  ... --stage confirmatory                        results/runs/confirmatory/<scale>/ <-> ..._confirmatory.tar.xz

Run directories are git-ignored (checkpoints are large); the archive is committed, so that a fresh clone can
recompute every number of REPORT.md without training: `python -m bnlab.report` unpacks it when a scale has no
runs on disk. It holds each run's config, Hydra overrides, summary and logs, and the final weights where a
run kept them for an analysis (model.pt); never checkpoints.
"""

import argparse
import io
import tarfile
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


def unpack(archive: Path, runs_root: Path) -> int:
    """Restore the run directories of archive under runs_root; a run directory already there is left as it is
    (it may hold newer work). Returns the number of runs restored."""
    restored = set()
    with tarfile.open(archive, "r:xz") as tar:
        for member in tar.getmembers():
            run = member.name.split("/")[:2]
            if len(run) < 2 or member.name.startswith(("/", "..")) or ".." in member.name.split("/"):
                continue
            if (runs_root / run[0] / run[1]).exists() and tuple(run) not in restored:
                continue
            restored.add(tuple(run))
            tar.extract(member, runs_root, filter="data")
    return len(restored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--stage", default="exploratory", choices=("exploratory", "confirmatory"))
    parser.add_argument("--runs", type=Path, help="the scale's run directories (default results/runs/<scale>)")
    parser.add_argument("--archive", type=Path, help="default results/evidence_<scale>.tar.xz")
    args = parser.parse_args()
    stage_dir = REPO_ROOT / "results" / "runs" / ("" if args.stage == "exploratory" else args.stage)
    runs_root = args.runs or stage_dir / args.scale
    archive = args.archive or archive_path(args.scale, args.stage)
    if args.action == "pack":
        n = pack(runs_root, archive)
        print(f"[bnlab] packed {n} runs into {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    else:
        print(f"[bnlab] restored {unpack(archive, runs_root)} runs under {runs_root}")


if __name__ == "__main__":
    main()
