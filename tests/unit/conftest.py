"""Unit tests never reach the kernel: opening a netlink socket fails the test."""

import pytest

import domunet.kernel


class _NoNetlink:
    def __init__(self, *args, **kwargs):
        raise AssertionError("a unit test tried to open a netlink socket")


@pytest.fixture(autouse=True)
def no_netlink(monkeypatch):
    monkeypatch.setattr(domunet.kernel, "IPRoute", _NoNetlink)
