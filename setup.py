"""Map the top-level folders onto subpackages of the one `auditcast` distribution.

DESIGN.md §1: `access/` installs as `auditcast.access`, `collectors/kube/` as
`auditcast.collectors.kube`, and so on, so nothing generic like `storage` lands in
site-packages. Sub-folders are discovered, so adding a module never touches this file.
"""

from setuptools import find_packages, setup

PARTS = ["access", "collectors", "streams", "storage", "replay"]

package_dir = {"auditcast": "auditcast"}
packages = ["auditcast", *(f"auditcast.{p}" for p in find_packages("auditcast"))]
for part in PARTS:
    package_dir[f"auditcast.{part}"] = part
    packages.append(f"auditcast.{part}")
    for sub in find_packages(part):
        packages.append(f"auditcast.{part}.{sub}")

setup(package_dir=package_dir, packages=packages)
