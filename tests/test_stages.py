"""Pipeline stages: run once, reused while unchanged, re-run when their command changes, resumed after a kill."""
from pathlib import Path

import pytest

from utils.errors import UserError
from utils.stages import Stage

SCRIPT = """
import sys, pathlib
out = pathlib.Path(sys.argv[1])
with open(out.with_suffix('.log'), 'a') as log:
    log.write(' '.join(sys.argv[2:]) + '\\n')
if '--fail' in sys.argv:
    sys.exit(3)
out.write_text('ok')
"""


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    path = tmp_path / "step.py"
    path.write_text(SCRIPT)
    return path


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "out.log").read_text().splitlines()


def test_a_finished_stage_is_reused_until_its_command_changes(tmp_path, script):
    out = tmp_path / "out.txt"
    Stage("step", [str(script), str(out), "--a"], [out]).run(tmp_path)
    assert Stage("step", [str(script), str(out), "--a"], [out]).run(tmp_path) == 0.0
    Stage("step", [str(script), str(out), "--b"], [out]).run(tmp_path)
    assert calls(tmp_path) == ["--a", "--b"]


def test_resume_flags_apply_only_when_the_marker_exists(tmp_path, script):
    out, marker = tmp_path / "out.txt", tmp_path / "checkpoint"
    stage = Stage("step", [str(script), str(out)], [out], resume_marker=marker, resume_argv=["--load"])
    marker.write_text("1")  # a killed run left a checkpoint and no stage marker
    stage.run(tmp_path)
    assert calls(tmp_path) == ["--load"]
    assert stage.is_done(tmp_path)  # identity excludes the resume flags


def test_a_failing_stage_is_one_line_and_not_marked_done(tmp_path, script):
    out = tmp_path / "out.txt"
    stage = Stage("step", [str(script), str(out), "--fail"], [out])
    with pytest.raises(UserError, match="stage 'step' failed \\(exit 3\\)"):
        stage.run(tmp_path)
    assert not stage.is_done(tmp_path)


def test_a_checkpoint_of_another_command_is_refused_not_resumed(tmp_path, script):
    out, marker = tmp_path / "out.txt", tmp_path / "checkpoint"
    first = Stage("step", [str(script), str(out), "--lr", "1"], [out], resume_marker=marker, resume_argv=["--load"])
    first.run(tmp_path)
    marker.write_text("1")  # its training left a checkpoint
    changed = Stage("step", [str(script), str(out), "--lr", "3"], [out], resume_marker=marker, resume_argv=["--load"])
    with pytest.raises(UserError, match="holds a checkpoint of another command \\(differing arguments 1 3\\)"):
        changed.run(tmp_path)
    with pytest.raises(UserError, match="another command"):  # a killed changed run is refused as well
        Stage("step", [str(script), str(out), "--lr", "3"], [out], resume_marker=marker).run(tmp_path)
    assert first.run(tmp_path) == 0.0 and calls(tmp_path) == ["--lr 1"]
