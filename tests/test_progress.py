"""One progress mechanism (cordsnet.progress): a log reader never sees a silence longer than its interval."""

from __future__ import annotations

import logging
import time

import pytest

from cordsnet.progress import Progress


def test_log_style_reports_start_regularly_and_end(caplog):
    with caplog.at_level(logging.INFO, logger="cordsnet"):
        with Progress("epoch 1/2", total=5, style="log", every_s=0.05) as bar:
            for _ in range(5):
                time.sleep(0.06)
                bar.advance(loss=0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "epoch 1/2: started (5)"
    assert len(lines) >= 5 and all(line.startswith("epoch 1/2: ") for line in lines)
    assert lines[-1].startswith("epoch 1/2: 5/5") and "loss 0.5" in lines[-1] and lines[-1].endswith("(done)")


def test_bytes_and_unknown_totals_and_styles(caplog):
    with caplog.at_level(logging.INFO, logger="cordsnet"):
        with Progress("model.pth", style="log", unit="bytes", every_s=0.0) as bar:
            bar.set_total(4 << 20, 1 << 20)
            bar.update(3 << 20)
    assert any("3.0 MiB/4.0 MiB" in r.getMessage() for r in caplog.records)
    with Progress("quiet", 3, style="none") as bar:  # nothing shown, nothing raised
        bar.advance(3)
    with pytest.raises(ValueError, match="style: expected one of bar, log, none"):
        Progress("x", style="fancy")
