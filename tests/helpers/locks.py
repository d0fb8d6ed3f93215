"""Another process holding a lock of ``pipelines.core.files``, as a second deploy or replay would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipelines.core.settings import PROJECT_ROOT


def hold_lock(path: Path) -> subprocess.Popen[str]:
    """A process holding ``path``'s lock until killed; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path\n"
         "from pipelines.core.files import file_lock\n"
         "with file_lock(Path(sys.argv[1]), 5):\n    print('held', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder
