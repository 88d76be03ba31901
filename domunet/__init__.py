"""domunet: per-interface policy routing for Xen guests, and its dom0 companion."""

__version__ = "0.3.0"
