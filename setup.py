"""Installs the project's top-level folders as subpackages of `rolloutq` (`broker/` -> `rolloutq.broker`),
so that nothing with a generic name lands at the top of site-packages. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

FOLDERS = ["broker", "policy_workers", "sim_workers", "controller", "monitoring"]

setup(
    packages=["rolloutq", *(f"rolloutq.{p}" for p in find_packages(include=[f"{f}*" for f in FOLDERS]))],
    package_dir={"rolloutq": "rolloutq", **{f"rolloutq.{f}": f for f in FOLDERS}},
)
