"""The thin CLI and the README/CI contract."""

import re
import subprocess
import sys
from pathlib import Path

from fcnseg.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_models_lists_every_model_with_flops(capsys):
    assert main(["models", "--size", "360x480"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) >= {"fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet", "fcn-alexnet-tv"}
    # FCN-8s at 360x480: the conv trunk alone is about 2 * 15.5 GFLOP * (560 * 680) / 224^2 ~ 235 GFLOP.
    assert 250 < float(rows["fcn8s"][2]) < 300
    assert rows["fcn8s"][1].endswith("M") and 130 < float(rows["fcn8s"][1][:-1]) < 140


def test_help_and_bad_size():
    result = subprocess.run([sys.executable, "-m", "fcnseg", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "models" in result.stdout
    result = subprocess.run([sys.executable, "-m", "fcnseg", "models", "--size", "big"], capture_output=True, text=True)
    assert result.returncode == 2 and "HEIGHTxWIDTH" in result.stderr


def test_ci_runs_the_readme_commands():
    readme_blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    install, test = readme_blocks[0].strip(), readme_blocks[1].strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and test in ci
