"""Unit tests never reach the kernel: opening a netlink socket fails the test."""

import os

import pytest

import domunet.core.kernel


class _NoNetlink:
    def __init__(self, *args, **kwargs):
        raise AssertionError("a unit test tried to open a netlink socket")


@pytest.fixture(autouse=True)
def no_netlink(monkeypatch):
    monkeypatch.setattr(domunet.core.kernel, "IPRoute", _NoNetlink)


# CI runs the same generated examples every time (no flaky red from a new random draw);
# run with HYPOTHESIS_PROFILE=explore locally to search afresh.
try:
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None)
    settings.register_profile("explore", derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is only needed by test_fuzz.py
    pass
