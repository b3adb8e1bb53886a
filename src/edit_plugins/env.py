"""The one reading of yes/no environment variables (``EDIT_PLUGINS_*``, ``HF_HUB_OFFLINE``).

Set means on, except for the off values below: ``EDIT_PLUGINS_NO_ENTRY_POINTS=false`` is off.
(``_edit_plugins_autoload.py`` carries the same rule: it runs at interpreter start and may not import
this package.)
"""
import os

OFF_VALUES = ("", "0", "false", "no", "off")


def flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in OFF_VALUES
