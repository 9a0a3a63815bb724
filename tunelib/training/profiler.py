"""torch.profiler around the training loop: torchtune's `profiler:` config node.

    profiler:
      _component_: tunelib.training.setup_torch_profiler   # or torchtune.training.setup_torch_profiler
      enabled: true
      output_dir: ${output_dir}/profiling_outputs

The loop calls `step()` after each optimizer step. With `wait_steps` W, `warmup_steps` U and
`active_steps` A, steps W+U+1 .. W+U+A are recorded (repeated `num_cycles` times), and each
recorded window is written as a Chrome trace, `output_dir/iteration_<step>/rank<R>_trace.json`
(open it in chrome://tracing or https://ui.perfetto.dev).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from tunelib.errors import ConfigError


def setup_torch_profiler(enabled: bool = False, cpu: bool = True, cuda: bool = True, xpu: bool = False,
                         profile_memory: bool = False, with_stack: bool = False, record_shapes: bool = True,
                         with_flops: bool = False, wait_steps: int = 5, warmup_steps: int = 3, active_steps: int = 2,
                         num_cycles: int = 1, output_dir: str = "profiler_output") -> TraceWriter | None:
    """A `torch.profiler.profile` that the loop steps once per optimizer step, or None when not enabled.

    Args:
        enabled: False profiles nothing (the other settings are then unused).
        cpu, cuda, xpu: activities to record; those the machine does not have are left out.
        profile_memory, with_stack, record_shapes, with_flops: passed to torch.profiler.profile.
        wait_steps, warmup_steps, active_steps, num_cycles: torch.profiler.schedule's wait,
            warmup, active and repeat.
        output_dir: where each recorded window's trace is written.

    Raises:
        ConfigError: no activity left to record, or a negative or zero step count.
    """
    if not enabled:
        return None
    activities = _activities(cpu, cuda, xpu)
    if active_steps < 1 or min(wait_steps, warmup_steps, num_cycles) < 0:
        raise ConfigError("profiler: active_steps must be 1 or more, and wait_steps, warmup_steps and num_cycles "
                          "0 or more")
    return TraceWriter(Path(output_dir), wait_steps + warmup_steps + 1, activities=activities,
                       profile_memory=profile_memory, with_stack=with_stack, record_shapes=record_shapes,
                       with_flops=with_flops,
                       schedule=schedule(wait=wait_steps, warmup=warmup_steps, active=active_steps, repeat=num_cycles))


class TraceWriter(profile):
    """A torch.profiler.profile that writes each recorded window as a Chrome trace into `folder`
    and, when it stops, says where the traces are, or that the run ended before step
    `first_step`, the first one recorded."""

    def __init__(self, folder: Path, first_step: int, **options):
        super().__init__(on_trace_ready=self._write, **options)
        self.folder, self.first_step, self.written = folder, first_step, []

    def _write(self, prof: profile) -> None:
        out = self.folder / f"iteration_{prof.step_num}"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"rank{os.environ.get('RANK', 0)}_trace.json"
        prof.export_chrome_trace(str(path))
        self.written.append(path)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        if int(os.environ.get("RANK", 0)) != 0:
            return
        if self.written:
            print(f"Profiler traces: {', '.join(str(p) for p in self.written)} (open in https://ui.perfetto.dev)",
                  flush=True)
        else:
            print(f"Profiler: nothing recorded; the run ended before step {self.first_step}, the first one the "
                  "profiler records (lower profiler.wait_steps or warmup_steps)", flush=True)


def _activities(cpu: bool, cuda: bool, xpu: bool) -> list[ProfilerActivity]:
    wanted = [(cpu, ProfilerActivity.CPU, True), (cuda, ProfilerActivity.CUDA, torch.cuda.is_available()),
              (xpu, getattr(ProfilerActivity, "XPU", None), hasattr(torch, "xpu") and torch.xpu.is_available())]
    chosen = [activity for asked, activity, present in wanted if asked and present and activity is not None]
    if not chosen:
        raise ConfigError("profiler: none of the asked activities (cpu, cuda, xpu) exists on this machine; "
                          "set profiler.cpu=True")
    return chosen
