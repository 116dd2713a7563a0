"""Progress without a terminal: `bsynth train` in a log file or pipe prints a line per ~5 % with the ETA."""
from __future__ import annotations

import io

from bsynth_hpc.engine.monitor import MetricsLogger, ProgressLines, format_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_five_percent_with_rate_and_time_left():
    clock = FakeClock()
    progress = ProgressLines(total_steps=100, start_step=0, lines=20, clock=clock)
    lines = []
    for _ in range(100):
        clock.now += 0.5                     # 2 steps per second
        line = progress.advance(1, {"loss": 0.25})
        if line:
            lines.append(line)
    assert len(lines) == 20
    assert lines[0] == "train step 5/100 (5%), 2 step/s, ~48 s left, loss 0.25"
    assert lines[9].startswith("train step 50/100 (50%)") and "~25 s left" in lines[9]
    assert lines[-1].startswith("train step 100/100 (100%)") and "~0 s left" in lines[-1]


def test_resumed_run_counts_from_its_start_and_always_reports_the_end():
    clock = FakeClock()
    progress = ProgressLines(total_steps=1000, start_step=990, lines=20, clock=clock)
    seen = []
    for _ in range(10):
        clock.now += 1.0
        seen.append(progress.advance(1))
    assert all(line is not None for line in seen)            # 10 steps left, one line each
    assert seen[-1].startswith("train step 1000/1000")


def test_format_seconds():
    assert format_seconds(59.4) == "59 s"
    assert format_seconds(75) == "1 min 15 s"
    assert format_seconds(3725) == "1 h 2 min"
    assert format_seconds(float("inf")) == "? s"


def test_logger_uses_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    logger = MetricsLogger(tmp_path, enabled=True, total_steps=4, start_step=0, tensorboard=False, progress=True)
    assert logger.bar is None and logger.lines is not None   # pytest's capture is not a terminal
    for _ in range(4):
        logger.advance(1, {"loss": 1.0})
    logger.close()
    err = capsys.readouterr().err
    assert "[bsynth] train step 4/4 (100%)" in err and "left" in err


def test_logger_uses_tqdm_on_a_terminal(tmp_path, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    logger = MetricsLogger(tmp_path, enabled=True, total_steps=4, start_step=0, tensorboard=False, progress=True)
    assert logger.bar is not None and logger.lines is None
    logger.close()


def test_disabled_logger_on_other_ranks_ignores_progress(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=False, total_steps=4, start_step=0, progress=True)
    logger.advance(1, {"loss": 1.0})      # rank != 0: nothing printed, nothing raised
    logger.close()
