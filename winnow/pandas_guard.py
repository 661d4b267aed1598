"""Keep pandas out of a command that never uses it.

pyarrow imports pandas (0.25-0.35 s on the shared 2-core box, the largest import of a one-stage
command) the first time it converts a Python value, only to ask whether the value is a pandas
object: its Cython shim probes once per process and its C++ converter tries again on every call
until pandas loads. A command whose inputs and code hand pyarrow no pandas object (``winnow
contamination`` on Parquet or JSON Lines) can let both answers be "no pandas" instead:
:func:`kept_out` makes ``import pandas`` fail for its duration, and code that does need pandas (the
``datasets`` reader) opens :func:`allowed`. Either way pyarrow is told the truth as soon as pandas
is really imported, so later pandas objects convert as before.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
from typing import Any, Iterator


def _is_pandas(name: str) -> bool:
    return name == "pandas" or name.startswith("pandas.")


class _Refuse(importlib.abc.MetaPathFinder):
    """``import pandas`` raises ModuleNotFoundError, as if pandas were not installed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if _is_pandas(name):
            raise ModuleNotFoundError("pandas is kept out of this command (winnow.pandas_guard)", name=name)
        return None


class _TellPyarrow(importlib.abc.MetaPathFinder):
    """On the first real ``import pandas``, refresh pyarrow's answer once pandas has loaded."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "pandas":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRefresh(spec.loader)
        return spec


class _ThenRefresh(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _refresh_pyarrow()

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


_REFUSE = _Refuse()
_TELL = _TellPyarrow()


def _refresh_pyarrow() -> None:
    """Make pyarrow re-check for pandas (its shim's ``pd`` re-imports on demand, now found)."""
    shim = getattr(sys.modules.get("pyarrow.lib"), "_pandas_api", None)
    if shim is not None:
        with contextlib.suppress(ImportError):
            shim.pd  # noqa: B018  (the property's import is the point)


@contextlib.contextmanager
def kept_out() -> Iterator[None]:
    """For the duration: ``import pandas`` fails unless inside :func:`allowed`. A no-op when pandas
    is already imported (nothing left to save)."""
    if "pandas" in sys.modules or _REFUSE in sys.meta_path:
        yield
        return
    sys.meta_path.insert(0, _REFUSE)
    try:
        yield
    finally:
        if _REFUSE in sys.meta_path:
            sys.meta_path.remove(_REFUSE)
        if "pandas" not in sys.modules and _TELL not in sys.meta_path:
            sys.meta_path.insert(0, _TELL)  # pyarrow may have concluded "no pandas" meanwhile


@contextlib.contextmanager
def allowed() -> Iterator[None]:
    """Let code that needs pandas (``datasets``) import it inside a :func:`kept_out` command."""
    refusing = _REFUSE in sys.meta_path
    if refusing:
        sys.meta_path.remove(_REFUSE)
        import pandas  # noqa: F401  (now, so pyarrow is refreshed before the caller converts anything)

        _refresh_pyarrow()
    try:
        yield
    finally:
        if refusing and "pandas" not in sys.modules:
            sys.meta_path.insert(0, _REFUSE)
