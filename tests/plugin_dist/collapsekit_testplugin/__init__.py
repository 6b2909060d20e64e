"""A tiny third-party collapsekit plugin distribution used by collapsekit's tests."""
