"""A config built on another file finds it by path, from any working directory, and a missing one is
named with the file that asked for it."""

import pytest

from ia_jax import config_files


def test_a_sibling_config_is_loaded_from_the_callers_folder(tmp_path, monkeypatch):
    (tmp_path / "base.py").write_text("import ml_collections\n\ndef get_config():\n"
                                      "    return ml_collections.ConfigDict({'size': 3})\n")
    caller = tmp_path / "variant.py"
    monkeypatch.chdir("/")
    assert config_files.sibling_config(str(caller), "base.py").size == 3


def test_a_missing_sibling_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"variant.py: builds on .*absent.py, which does not exist"):
        config_files.sibling_config(str(tmp_path / "variant.py"), "absent.py")
