"""Lower layers never import higher ones: data code knows no model, the command line knows no training code."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module, forbidden", [("data_utils.sequences", "model"),
                                               ("arguments", "training"),
                                               ("arguments", "generation.pipeline"),
                                               ("vqvae.api", "eval_utils")])
def test_a_module_does_not_import_a_higher_layer(module, forbidden):
    code = (f"import sys, {module}; "
            f"print(sorted(m for m in sys.modules if m == {forbidden!r} or m.startswith({forbidden + '.'!r})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{module} imports {result.stdout.strip()}"
