"""Package set-up read from settings.ini (nbdev's single source of project metadata)."""
from configparser import ConfigParser

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    license=cfg["license"],
    python_requires=">=" + cfg["min_python"],
    packages=setuptools.find_packages(include=["pipeline", "pipeline.*"]),
    install_requires=cfg["requirements"].split(),
    extras_require={"dev": cfg["dev_requirements"].split()},
    entry_points={"console_scripts": cfg.get("console_scripts", "").split(),
                  "nbdev": [f"{cfg['lib_path']}=pipeline._modidx:d"]},
    include_package_data=True,
    zip_safe=False,
)
