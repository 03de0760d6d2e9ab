"""bnlab.archive: unpacking the whole evidence or only the runs one reads."""

import pytest

from bnlab.archive import main, pack, unpack

RUNS = ("fig1/norm=batch,seed=0", "fig1/norm=none,seed=0", "fig10/norm=batch,seed=0", "dln/depth=2,seed=0")


@pytest.fixture
def archive(tmp_path):
    runs = tmp_path / "runs"
    for run in RUNS:
        (runs / run / ".hydra").mkdir(parents=True)
        (runs / run / "config.yaml").write_text(f"run: {run}\n")
        (runs / run / ".hydra" / "overrides.yaml").write_text("[]\n")
        (runs / run / "checkpoint.pt").write_bytes(b"never archived")
    path = tmp_path / "evidence.tar.xz"
    assert pack(runs, path) == len(RUNS)
    return path


def restored(root):
    return sorted(str(p.parent.relative_to(root)) for p in root.glob("*/*/config.yaml"))


def test_unpack_restores_every_run_or_only_the_runs_asked_for(archive, tmp_path):
    assert unpack(archive, tmp_path / "all") == 4 and restored(tmp_path / "all") == sorted(RUNS)
    assert not list((tmp_path / "all").glob("*/*/checkpoint.pt"))
    # an experiment, whole folder names only: fig1 is not fig10
    assert unpack(archive, tmp_path / "fig1", only="fig1") == 2
    assert restored(tmp_path / "fig1") == ["fig1/norm=batch,seed=0", "fig1/norm=none,seed=0"]
    assert (tmp_path / "fig1" / "fig1" / "norm=none,seed=0" / ".hydra" / "overrides.yaml").is_file()
    # one run, and several prefixes at once
    assert unpack(archive, tmp_path / "some", only=["dln", "fig1/norm=none,seed=0/"]) == 2
    assert restored(tmp_path / "some") == ["dln/depth=2,seed=0", "fig1/norm=none,seed=0"]
    # runs already there stay as they are, and count as not restored
    assert unpack(archive, tmp_path / "some", only="fig1") == 1


def test_unpack_names_what_the_archive_lacks(archive, tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="no runs under fig, bjorck"):
        unpack(archive, tmp_path / "x", only=["fig", "fig1", "bjorck"])
    cli = ["bnlab.archive", "unpack", "--archive", str(archive), "--runs", str(tmp_path / "cli")]
    monkeypatch.setattr("sys.argv", [*cli, "--only", "fig10", "--only", "dln/depth=2,seed=0"])
    main()
    assert "restored 2 runs" in capsys.readouterr().out
    assert restored(tmp_path / "cli") == ["dln/depth=2,seed=0", "fig10/norm=batch,seed=0"]
    monkeypatch.setattr("sys.argv", [*cli, "--only", "fig2"])
    with pytest.raises(SystemExit, match="no runs under fig2"):
        main()
