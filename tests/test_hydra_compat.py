"""What advrun assumes of Hydra beyond its public API (advrun/hydra_compat.py). A failure here
means a Hydra release changed one of these: adapt advrun/hydra_compat.py."""

from __future__ import annotations

import inspect

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from omegaconf import OmegaConf

from advrun.config import config_dir
from advrun.hydra_compat import APPLY_OVERRIDES, OVERRIDE_LOCAL, Abort, failing_override


def test_hydra_still_applies_overrides_where_failing_override_looks():
    function = getattr(ConfigLoaderImpl, APPLY_OVERRIDES, None)
    assert function is not None, f"Hydra no longer has ConfigLoaderImpl.{APPLY_OVERRIDES}"
    assert OVERRIDE_LOCAL in function.__code__.co_varnames, inspect.getsource(function)


def test_the_override_hydra_could_not_apply_is_named():
    """OmegaConf's ValueError for a key below a list escapes Hydra without the override's name."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        with pytest.raises(Exception) as info:
            compose(config_name="config", overrides=["eval.epsilons=[0.1]", "eval.epsilons.x=1"])
    assert failing_override(info.value.__traceback__) == "eval.epsilons.x"


class _Refuses:
    def on_run_start(self, config, **kwargs):
        raise Abort(ValueError("refused"))


class _Fails:
    def on_run_start(self, config, **kwargs):
        raise ValueError("failed")


def test_an_exception_in_a_callback_does_not_stop_hydra_and_abort_does():
    """Why Abort exists: Hydra turns a callback's Exception into a warning and goes on. When this
    changes (the first assertion fails), AdvrunCallback can raise AdvrunError itself."""
    callbacks = Callbacks(OmegaConf.create({}))
    callbacks.callbacks = [_Fails()]
    with pytest.warns(UserWarning, match="raised ValueError: failed"):
        callbacks.on_run_start(config=OmegaConf.create({}))
    callbacks.callbacks = [_Refuses()]
    with pytest.raises(Abort) as info:
        callbacks.on_run_start(config=OmegaConf.create({}))
    assert str(info.value.error) == "refused"


@pytest.mark.parametrize("overrides", [
    ["attack.eps=0.05,0.1", "seed=0,1,2"],
    ["seed=0,1,2", "model=logreg,mlp", "seed=3,4", "train.epochs=2"],
    ["+experiment=x", "attack.eps=0.5,1", "eval.epsilons=[0,0.1]", "attack.eps=2"],
    ["hydra.sweep.dir='/a b/c'", "dataset.root='x,y'", "model=choice(logreg,mlp)"],
])
def test_sweeps_expand_into_the_jobs_of_hydras_basic_sweeper(overrides):
    """advrun.sweep.expand_sweep (public override API) numbers the jobs as Hydra's BasicSweeper does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from advrun.sweep import expand_sweep

    parsed = OverridesParser.create().parse_overrides(overrides)
    assert expand_sweep(overrides) == BasicSweeper.split_arguments(parsed, None)[0]
