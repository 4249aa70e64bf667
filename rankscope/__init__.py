"""RankScope: an automated interpretability agent for neural retrieval models.

The distribution installs one import name, ``rankscope``. Its subpackages live in the
repository's top-level folders and are mapped here by setuptools ``package-dir``:
``rankscope.agent`` (agent/), ``rankscope.tools`` (tools/), ``rankscope.experiments_db``
(experiments_db/) and ``rankscope.prompts`` (prompts/).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rankscope")
except PackageNotFoundError:  # pragma: no cover - running from a checkout that is not installed
    __version__ = "0+unknown"

SUBPACKAGES: tuple[str, ...] = ("agent", "tools", "experiments_db", "prompts")
"""The repository folders that install as ``rankscope.<name>``."""
