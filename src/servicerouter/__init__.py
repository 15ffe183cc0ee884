"""servicerouter: HAProxy in front of Marathon apps, with reloads as the exception."""

__version__ = "0.1.0"
