import subprocess
import sys

import cryotune


def test_all_is_pinned():
    assert sorted(cryotune.__all__) == sorted([
        "BadConfig", "BadInput", "ChecksumMismatch", "Comparison", "CryotuneError", "Diverged",
        "MissingExtra", "Selection", "Study", "SweepSpec", "TrainConfig", "__version__", "build_report",
        "extend_study", "load_spec", "load_study", "open_dataset", "run_baselines", "run_sweep", "train",
        "validate_study",
    ])
    for name in cryotune.__all__:
        assert getattr(cryotune, name) is not None


def test_names_come_from_their_rooms():
    from cryotune.runs.train import train
    from cryotune.study.tables import load_study

    assert cryotune.train is train and cryotune.load_study is load_study
    from cryotune.study.compare import Comparison
    from cryotune.study.select import Selection

    assert cryotune.Comparison is Comparison and cryotune.Selection is Selection


def test_import_is_light():
    # `import cryotune` must not pull in torch or Ray: `cryotune --help` stays fast.
    code = "import sys, cryotune; print(any(m in sys.modules for m in ('torch', 'ray')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_help_loads_neither_torch_nor_ray():
    code = ("import sys; from cryotune import cli; cli.build_parser(); "
            "print(any(m in sys.modules for m in ('torch', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
