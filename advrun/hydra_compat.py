"""The places advrun relies on Hydra's behaviour beyond its public API.

Hydra applies the command line's overrides in ``ConfigLoaderImpl._apply_overrides_to_config``
and wraps only OmegaConf's own errors there in an exception that names the override; any other
error (e.g. OmegaConf's ``ValueError`` for ``eval.epsilons.x=1``) escapes without it. To still
name the key in one line, :func:`failing_override` reads the override from that function's frame
in the traceback. ``tests/test_hydra_compat.py`` fails when a Hydra release renames the
function or its local, so that this is noticed at once rather than as a vaguer message.

:class:`Abort` carries an error out of a Hydra callback, which Hydra would otherwise turn into a
warning; the same test module checks that it still stops Hydra before the run.
"""

from __future__ import annotations

from types import TracebackType

#: Hydra's function (``hydra._internal.config_loader_impl.ConfigLoaderImpl``) applying the overrides,
#: and its local variable holding the override being applied.
APPLY_OVERRIDES = "_apply_overrides_to_config"
OVERRIDE_LOCAL = "override"


def failing_override(tb: TracebackType | None) -> str | None:
    """The key of the override Hydra was applying when the traceback ``tb`` was raised, if it was."""
    while tb is not None:
        if tb.tb_frame.f_code.co_name == APPLY_OVERRIDES:
            return getattr(tb.tb_frame.f_locals.get(OVERRIDE_LOCAL), "key_or_group", None)
        tb = tb.tb_next
    return None


class Abort(BaseException):
    """An error in a Hydra callback that must end the command (``error``: the one-line cause).

    Hydra turns an ``Exception`` raised by a callback into a warning and goes on with the run
    (``hydra/_internal/callbacks.py``), which would then write into a folder the callback refused.
    A ``BaseException`` passes through; :func:`advrun.cli.main` reports ``error`` in one line.
    """

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error
