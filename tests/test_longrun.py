"""`python -m benchmarks.longrun` with tiny numbers, so the long-run benchmark cannot rot: two simulated
days through the sequencer into PostgreSQL, a fresh process recovering after each, every command of the
stream accepted, and the figures the benchmark promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exchange import store

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"days", "commands", "rss_mb_day1", "rss_mb_last", "snapshot_bytes_day1", "snapshot_bytes_last",
        "recovery_s_day1", "recovery_s_last", "statement_page_ms_last", "growth_ratio_rss",
        "growth_ratio_snapshot", "growth_ratio_recovery"}


def test_two_small_days_give_every_figure(postgres_server_url: str) -> None:
    env = {**os.environ, store.DATABASE_URL_ENV: postgres_server_url}
    done = subprocess.run([sys.executable, "-m", "benchmarks.longrun", "--days", "2", "--commands-per-day", "300",
                           "--window", "200", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["day   1", "day   2"]
    result = json.loads(lines[-1])
    assert set(result) >= KEYS
    assert result["days"] == 2
    assert result["rejected"] == 0  # the stream was valid for the scratch core, and is for the sequencer's
    assert result["commands"] >= 2 * 300
    assert result["snapshot_bytes_day1"] > 0 and result["snapshot_bytes_last"] > 0  # each restart had a snapshot
    assert result["rss_mb_day1"] > 0 and result["recovery_s_day1"] > 0 and result["statement_page_ms_last"] > 0
    assert result["growth_ratio_snapshot"] == round(result["snapshot_bytes_last"] / result["snapshot_bytes_day1"], 2)
    # recovery timed again at the end, the two restarts alternated, wall and this process's CPU
    assert result["recovery_cpu_s_day1"] > 0 and result["recovery_cpu_s_last"] > 0
    cpu_ratio = result["recovery_cpu_s_last"] / result["recovery_cpu_s_day1"]  # (of the figures rounded to 0.1 ms)
    assert result["growth_ratio_recovery_cpu"] == pytest.approx(cpu_ratio, abs=0.02)
    # what each restart held, by kind: after day 2 also day 1's night (payouts still inside their window)
    first, last = result["held_day1"], result["held_last"]
    assert set(first) == set(last) >= {"orders", "lots", "client_order_ids", "accounts", "trades", "payouts",
                                       "loans", "transfers", "index_entries"}
    assert first["participants"] == last["participants"] > 0 and last["trades"] > 0 and last["transfers"] > 0
