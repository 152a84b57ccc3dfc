"""The CLI picks OpenMP's wait policy from the machine's load before torch loads."""

from __future__ import annotations

import os

import pytest

from raysynth.cli import openmp_wait_policy


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})


@pytest.mark.parametrize(("load", "want"), [(0.0, None), (0.9, None), (1.0, "PASSIVE"),
                                            (35.0, "PASSIVE")])
def test_busy_machine_gets_passive_idle_one_keeps_the_default(two_cores, monkeypatch, load, want):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    openmp_wait_policy()
    assert os.environ.get("OMP_WAIT_POLICY") == want


def test_the_users_setting_wins(two_cores, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(os, "getloadavg", lambda: (35.0, 0.0, 0.0))
    openmp_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
