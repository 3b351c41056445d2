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
