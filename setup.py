"""Package layout that pyproject.toml cannot express alone.

recipes/ sits at the top of the repository (users read and copy it) but ships inside the
wheel as `tunelib.recipes`, so installing tunelib never claims a global `recipes` module.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["tunelib", "tunelib.*"]) + ["tunelib.recipes"],
    package_dir={"tunelib.recipes": "recipes"},
)
