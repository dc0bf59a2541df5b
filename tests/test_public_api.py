import subprocess
import sys

import cryotune


def test_all_is_pinned():
    assert sorted(cryotune.__all__) == sorted([
        "BadConfig", "BadInput", "ChecksumMismatch", "CryotuneError", "Diverged",
        "MissingExtra", "Study", "TrainConfig", "load_study", "open_dataset",
    ])
    for name in cryotune.__all__:
        assert getattr(cryotune, name) is not None


def test_import_is_light():
    # `import cryotune` must not pull in torch or Ray: `cryotune --help` stays fast.
    code = "import sys, cryotune; print(any(m in sys.modules for m in ('torch', 'ray')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
