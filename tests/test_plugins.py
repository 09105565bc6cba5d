"""Plugin errors name the culprit: duplicates, unknown names, exceptions inside hooks, misspelled hooks."""
import types

import pytest

from harness import hookimpl
from harness.registry import PluginError, build_registry, components


def plugin(name, **hooks):
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def test_builtins_are_plugins():
    heads = components("heads")
    assert heads["identity"].plugin == "harness.plugins.heads.identity"
    assert components("encoders")["mpnet"].plugin == "harness.plugins.encoders"


def test_duplicate_name_names_both_plugins():
    def register_heads(register):
        register("identity", object)

    with pytest.raises(PluginError, match=r"head 'identity' is registered twice: by plugin 'harness.plugins.heads.identity' and by plugin 'my_heads'"):
        build_registry((plugin("my_heads", register_heads=register_heads),)).components("heads")


def test_unknown_name_lists_close_matches_and_what_exists():
    with pytest.raises(PluginError) as info:
        build_registry().get("encoders", "minlm")
    assert "Did you mean 'minilm'?" in str(info.value)
    assert "Registered encoders: minilm, mpnet" in str(info.value)


def test_a_misspelled_name_on_the_command_line_is_the_user_s_error_not_a_plugin_s(capsys):
    """`harness eval --encoder minlm` said "plugin error:", as if a plugin were broken; `harness train --head
    adaptor` said "error:". A typo is the user's error in every command."""
    from harness.cli import main

    assert main(["eval", "--encoder", "minlm", "--dataset", "scifact"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown encoder 'minlm'. Did you mean 'minilm'?"), err


def test_exception_inside_a_plugin_names_plugin_and_hook():
    def register_losses(register):
        raise RuntimeError("boom")

    with pytest.raises(PluginError, match=r"plugin 'broken_losses' raised RuntimeError in hook register_losses: boom"):
        build_registry((plugin("broken_losses", register_losses=register_losses),)).components("losses")


def test_misspelled_hook_is_reported_by_check_pending():
    def register_head(register):  # missing "s"
        register("x", object)

    with pytest.raises(PluginError, match=r"'typo_plugin' implements a hook that does not exist: register_head\. Did you mean register_heads\?"):
        build_registry((plugin("typo_plugin", register_head=register_head),))


def test_wrong_hook_arguments_are_reported():
    def register_heads(reg):
        pass

    with pytest.raises(PluginError, match=r"plugin 'bad_args' .* invalid hook implementation"):
        build_registry((plugin("bad_args", register_heads=register_heads),))


def test_unknown_entry_point_in_load_env(monkeypatch):
    monkeypatch.setenv("HARNESS_LOAD_PLUGINS", "no_such_plugin")
    with pytest.raises(PluginError, match="HARNESS_LOAD_PLUGINS names entry points that are not installed: no_such_plugin"):
        build_registry()
