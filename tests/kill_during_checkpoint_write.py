"""Run pretrain_gpt2.py and SIGKILL it at one step of writing one checkpoint: a deterministic stand-in for
a kill from outside at the worst moment.

    python tests/kill_during_checkpoint_write.py {before-rename|before-tracker} ITERATION [pretrain_gpt2.py flags]
"""
import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training import checkpointing  # noqa: E402

STEPS = {"before-rename": "_move_into_place", "before-tracker": "write_latest_iteration"}


def main() -> None:
    step, iteration, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
    name = STEPS[step]
    original = getattr(checkpointing, name)

    def killed_at_iteration(*args):
        # _move_into_place(temporary, final) names the iteration in `final`; write_latest_iteration(dir, n) in n
        if str(args[1]) == iteration or Path(str(args[1])).name == iteration:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args)

    setattr(checkpointing, name, killed_at_iteration)
    sys.argv = [str(ROOT / "pretrain_gpt2.py"), *flags]
    runpy.run_path(str(ROOT / "pretrain_gpt2.py"), run_name="__main__")


if __name__ == "__main__":
    main()
