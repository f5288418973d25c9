"""Backends as loader -> runner pairs, each with one ``infer(feed) -> outputs`` interface."""

from polynl_deploy.backends.base import Runner, TensorSpec

__all__ = ["Runner", "TensorSpec"]
