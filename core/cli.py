"""The one helper every ``python -m ...`` command line of the project is built with.

:func:`command` makes the parser: the module's docstring as its help, and the options the commands share
(``--config``, ``--set SECTION.FIELD=VALUE`` overrides).  :func:`load` loads the config those options name, once.
:func:`run` calls the command's body and turns a project error (:class:`core.types.EcomsearchError`: a bad
config, catalog, click log, missing index or model, ...) into ``error: <what and where>`` on stderr and exit
status 2, instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from core.types import EcomsearchError

DEMO_CONFIG = "configs/demo.yaml"


def command(
    prog: str, doc: str | None, config: str | None | bool = DEMO_CONFIG, overrides: bool = False
) -> argparse.ArgumentParser:
    """A parser for ``python -m <prog>`` described by ``doc``; with ``--config`` (default ``config``; None:
    required; False: none) and, with ``overrides``, the repeatable ``--set SECTION.FIELD=VALUE``."""
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc, formatter_class=_Formatter)
    if config is not False:
        if config is None:
            ap.add_argument("--config", required=True, help="the config file (configs/*.yaml)")
        else:
            ap.add_argument("--config", default=config, help="the config file (default: %(default)s)")
    if overrides:
        ap.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="SECTION.FIELD=VALUE",
            help="override a config field, e.g. --set rerank.depth=30 (repeatable)",
        )
    return ap


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The docstring as written (its lists and examples keep their lines)."""


def load(args: argparse.Namespace, **fixed: Any):
    """The config ``--config`` names, with ``--set`` overrides (when the command has them) over ``fixed``
    section overrides (e.g. ``rerank={"depth": 80}``)."""
    from core.config import load_config, parse_overrides

    over = dict(fixed)
    for section, values in parse_overrides(getattr(args, "set", None) or []).items():
        over[section] = {**over.get(section, {}), **values}
    return load_config(args.config, **over)


def run(body: Callable[[], int | None], errors: tuple[type[BaseException], ...] = ()) -> int:
    """``body()``'s exit status (None: 0); a project error, or one of ``errors``, is printed as ``error: ...``
    and gives 2."""
    try:
        return body() or 0
    except (EcomsearchError, *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
