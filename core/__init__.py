"""Shared plumbing of reidzoo: errors, the component registry and the config system."""
