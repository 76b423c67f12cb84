"""quickstart.sh's bad inputs, in a copy of the checkout (its venv linked in, so nothing is installed): one
`error:` line on stderr, a non-zero exit, nothing written. The set-up itself is what CI runs (.ci/run)."""
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

FILES = ("quickstart.sh", "prepare.py", "data.py", "convert_benchmarks.py", "convert_gguf.py", "requirements.txt",
         "requirements-test.txt")


@pytest.fixture
def clone(tmp_path):
    if not (ROOT / ".venv" / "bin" / "python").exists() or shutil.which("bash") is None:
        pytest.skip("needs bash and the project's .venv")
    d = tmp_path / "repo"
    d.mkdir()
    for f in FILES:
        shutil.copy2(ROOT / f, d / f)
    os.symlink(ROOT / ".venv", d / ".venv")
    for r in ("requirements.txt", "requirements-test.txt"):  # as after a first run: no pip
        stamp = ROOT / ".venv" / f".t2l-{r}.sha256"
        if not stamp.exists():
            pytest.skip("run ./quickstart.sh test once first (it records the installed requirements)")
    return d


def run(clone, *args, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("T2L_")}
    return subprocess.run(["bash", str(clone / "quickstart.sh"), *args], cwd=clone, env={**e, **env},
                          capture_output=True, text=True, timeout=300)


def one_error_line(r):
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    return lines[0]


def test_unknown_argument(clone):
    assert "unknown argument 'tset'" in one_error_line(run(clone, "tset"))


@pytest.mark.parametrize("mode", ["main", "test"])
def test_missing_data_folder(clone, mode):
    before = sorted(os.listdir(clone))
    r = run(clone, *([mode] if mode == "test" else []), T2L_DATA_FROM=str(clone / "no-such-data"))
    assert "no-such-data: no such folder" in one_error_line(r)
    assert sorted(os.listdir(clone)) == sorted(before + ["out"]) and not (clone / "assets").exists()
