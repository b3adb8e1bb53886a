"""Registers edit-plugins' methods in EasyEdit's ALG_DICT as soon as ``easyeditor`` is imported.

Loaded at interpreter start by ``edit_plugins_autoload.pth``. It imports nothing heavy and does
nothing until ``easyeditor`` itself is imported. Opt out with ``EDIT_PLUGINS_NO_AUTOINSTALL=1``.
"""
import os
import sys

OPT_OUT_ENV = "EDIT_PLUGINS_NO_AUTOINSTALL"


def _opted_out() -> bool:
    # The rule of edit_plugins.env.flag, which this module may not import at interpreter start.
    return os.environ.get(OPT_OUT_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _after_easyeditor_import():
    if _opted_out():
        return
    package = sys.modules.get("edit_plugins")
    if package is not None and not hasattr(package, "install"):
        return  # edit_plugins is importing easyeditor itself and installs when it is done
    try:
        import edit_plugins

        edit_plugins.install()
    except Exception as error:  # never break the user's `import easyeditor`
        print(f"edit-plugins: could not register methods in EasyEdit: {error!r}", file=sys.stderr)


class _EasyEditorFinder:
    """A meta-path finder that only wraps the loader of the top-level ``easyeditor`` package."""

    def find_spec(self, name, path=None, target=None):
        if name != "easyeditor":
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            _after_easyeditor_import()

        spec.loader.exec_module = exec_module
        return spec


def _install_finder():
    if _opted_out():
        return
    if "easyeditor" in sys.modules:
        _after_easyeditor_import()
    elif not any(isinstance(f, _EasyEditorFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _EasyEditorFinder())


_install_finder()
