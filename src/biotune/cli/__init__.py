"""``biotune`` command line: a thin layer over the library API (see ``biotune --help``).

One module per family of commands: ``_train`` (search, finetune, compare), ``_model`` (blocks,
predict, export); the parser and the option → configuration mapping in ``_options``."""

from __future__ import annotations

import logging
import shlex
import signal
import sys
from typing import Sequence

from ..errors import BioTuneError, scrub
from ._model import cmd_blocks, cmd_export, cmd_predict
from ._options import build_parser
from ._train import cmd_compare, cmd_finetune, cmd_search

__all__ = ["main", "build_parser"]

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    verbose = getattr(args, "verbose", 0)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING if verbose < 2 else optuna.logging.INFO)
    commands = {"search": cmd_search, "finetune": cmd_finetune, "blocks": cmd_blocks, "compare": cmd_compare,
                "predict": cmd_predict, "export": cmd_export}
    storage = getattr(args, "storage", None)
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops like Ctrl-C
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return commands[args.command](args)
    except BioTuneError as err:  # what a user can cause; anything else is a bug and shows its traceback
        print(f"biotune: error: {scrub(str(err), storage)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "search":
            command = " ".join(shlex.quote(scrub(a, storage)) for a in ["biotune", *(sys.argv[1:] if argv is None else argv)])
            print("\nbiotune: interrupted; every finished evaluation is saved. Resume with the same command:\n"
                  f"  {command}", file=sys.stderr)
        else:
            print("\nbiotune: interrupted.", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
