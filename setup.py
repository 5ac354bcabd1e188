"""Build script. Metadata and configuration live in pyproject.toml.

The package list is computed here because `kernels/` (device code) is installed as the
subpackage `fused_gumbel.kernels` through a package-dir mapping; no top-level `kernels`
package is ever installed. setup.py also leaves room for an optional native extension
(the CUDA C++ twin of the Triton kernels) later.
"""
from setuptools import find_packages, setup

host_packages = find_packages(include=["fused_gumbel", "fused_gumbel.*"])
device_packages = ["fused_gumbel.kernels"] + [
    "fused_gumbel.kernels." + name for name in find_packages(where="kernels")
]

setup(
    packages=host_packages + device_packages,
    package_dir={"fused_gumbel.kernels": "kernels"},
)
