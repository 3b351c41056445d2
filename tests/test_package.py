"""Package-level contracts: importing does nothing heavy, the public surface is what __all__ says."""

import subprocess
import sys

import imagerec


def test_import_is_light_and_side_effect_free(tmp_path):
    code = "import sys, imagerec, imagerec.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert list(tmp_path.iterdir()) == []  # no files, no logs, no settings written


def test_public_names_resolve():
    for name in imagerec.__all__:
        assert getattr(imagerec, name) is not None
    for verb in (imagerec.train, imagerec.evaluate, imagerec.load):
        assert callable(verb)


def test_option_names_are_unique_across_config_sections():
    """imagerec.train(**options) routes each keyword to its section by name, so no name may repeat."""
    from imagerec.config import SECTIONS

    names = [name for section in SECTIONS.values() for name in section.model_fields]
    assert len(names) == len(set(names))


def test_documented_config_example_is_valid(tmp_path):
    """The YAML example in docs/classification.md must load as it stands."""
    import re
    from pathlib import Path

    from imagerec.api import resolve_config

    guide = (Path(__file__).resolve().parents[1] / "docs" / "classification.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", guide, re.S).group(1)
    config = tmp_path / "run.yaml"
    config.write_text(example)
    cfg = resolve_config(None, config=config)
    assert cfg.model.name == "resnet18"
    assert cfg.train.ema == 0.999
