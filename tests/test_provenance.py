"""Where a record says its code came from: a checkout's commit, or else a fingerprint of the sources."""

from __future__ import annotations

import subprocess

from gpm_gainlora_experiments.common import provenance


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_an_installed_copy_inside_another_repository_records_no_commit(tmp_path, monkeypatch):
    user_repo = tmp_path / "user-project"
    installed = user_repo / ".venv" / "lib" / "site-packages"
    (installed / "experiments").mkdir(parents=True)
    (installed / "experiments" / "run.py").write_text("print('installed copy')\n")
    _git(user_repo, "init", "-q")
    (user_repo / "train.py").write_text("")
    _git(user_repo, "add", "train.py")
    _git(user_repo, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "user's work")
    monkeypatch.setattr(provenance, "PROJECT_ROOT", installed.resolve())
    assert provenance.git_commit(("experiments",)) is None  # not the user's HEAD


def test_the_checkout_records_its_commit():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance.PROJECT_ROOT, capture_output=True, text=True)
    assert provenance.git_commit().removesuffix("+dirty") == head.stdout.strip()


def test_the_source_fingerprint_follows_the_code(tmp_path, monkeypatch):
    (tmp_path / "experiments").mkdir()
    module = tmp_path / "experiments" / "run.py"
    module.write_text("A = 1\n")
    monkeypatch.setattr(provenance, "PROJECT_ROOT", tmp_path)
    fingerprint = provenance.source_fingerprint.__wrapped__
    first = fingerprint(("experiments",))
    assert first == fingerprint(("experiments",)) and len(first) == 64
    module.write_text("A = 2\n")
    assert fingerprint(("experiments",)) != first
