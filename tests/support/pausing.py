"""A checkpointer that pauses inside the final save, so a test can send a real signal while the
final checkpoint is half written (allowed with TUNELIB_ALLOW_MODULES=support, like faults.py).

    checkpointer={_component_: support.pausing.PauseInFinalSave, checkpoint_dir: ..., output_dir: ...,
                  pause_file: /tmp/x/saving, go_file: /tmp/x/go}
"""

from __future__ import annotations

import time
from pathlib import Path

from tunelib.training import HFCheckpointer


class PauseInFinalSave(HFCheckpointer):
    """Writes the final model, touches `pause_file`, then waits for `go_file` (at most `wait_s`)
    before writing the rest (the training state, the marker)."""

    def __init__(self, checkpoint_dir: str, output_dir: str, pause_file: str, go_file: str, wait_s: float = 120):
        super().__init__(checkpoint_dir, output_dir)
        self.pause_file, self.go_file, self.wait_s = Path(pause_file), Path(go_file), wait_s
        self._final = False

    def save(self, model, *, final: bool, **kwargs):
        self._final = final
        return super().save(model, final=final, **kwargs)

    def _write_model(self, model, folder, adapter_only, dist=None):
        super()._write_model(model, folder, adapter_only, dist)
        if self._final:
            self.pause_file.write_text(str(folder))
            end = time.monotonic() + self.wait_s
            while not self.go_file.exists() and time.monotonic() < end:
                time.sleep(0.05)
