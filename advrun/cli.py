"""The ``advrun`` command: Hydra composes the config, :func:`advrun.experiment.run` runs it.

A mistake in the user's input (an invalid value, a missing data file) ends with one line
naming the key, exit status 2, and no result files that look like success; the run folder
gets an ``error.txt``. Set ``ADVRUN_DEBUG=1`` to see the Python traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from advrun.config import config_dir
from advrun.errors import AdvrunError

EXIT_USAGE = 2


def _debug() -> bool:
    return os.environ.get("ADVRUN_DEBUG", "").lower() not in ("", "0", "false", "no")


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    from advrun import experiment  # after Hydra has parsed the command line: keeps --help fast

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = experiment.run(cfg, output_dir)
    except AdvrunError as e:
        if _debug():
            raise
        from advrun import io

        io.write_text(output_dir / "error.txt", f"{e}\n")
        print(f"advrun: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    # The returned value is what Hydra sweepers (e.g. Optuna) optimise.
    return metrics.get("robust_accuracy", metrics["clean_accuracy"])


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
