"""edit-plugins: lifelong knowledge-editing methods and diagnostics for EasyEdit, as pluggy plugins."""
from __future__ import annotations

__version__ = "0.1.0"


def install() -> list[str]:
    """Register every plugin method in EasyEdit's ``ALG_DICT`` (idempotent).

    Returns the names newly added. Does nothing where easyeditor is not importable.
    """
    from . import easyedit_compat
    from .plugins import registry

    if not easyedit_compat.available():
        return []
    return easyedit_compat.register_methods(registry().methods.values())


def _bootstrap() -> None:
    # Where easyeditor is installed, importing it here (before our hparams classes exist) lets
    # those classes subclass its HyperParams; the autoload hook defers to us while we import it.
    from . import easyedit_compat
    from .env import flag

    if easyedit_compat.available() and not flag("EDIT_PLUGINS_NO_AUTOINSTALL"):
        install()


_bootstrap()
