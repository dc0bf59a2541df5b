from dataclasses import dataclass, field

import pytest

from cryotune.config import from_dict, load_yaml, to_dict
from cryotune.errors import BadConfig, CryotuneError


@dataclass
class Inner:
    alpha: float = field(default=0.0, metadata={"range": (-1, 1)})
    method: str = field(default="beta_gan", metadata={"choices": ("beta_gan", "l1_ae")})


@dataclass
class Outer:
    lam: float = field(default=10.0, metadata={"alias": "lambda", "range": (0, None)})
    methods: list[Inner] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    name: str | None = None


def test_builds_nested_with_alias():
    cfg = from_dict(Outer, {"lambda": "1e-3", "methods": [{"alpha": 0.5}], "seeds": [1, 2]})
    assert cfg.lam == 1e-3 and cfg.methods[0].alpha == 0.5 and cfg.seeds == [1, 2]
    assert to_dict(cfg)["lambda"] == 1e-3


@pytest.mark.parametrize("data, where, text", [
    ({"methods": [{}, {}, {"alpha": 1.5}]}, "methods[2].alpha", "1.5 is outside [-1, 1]"),
    ({"lambda": -1}, "lambda", "outside [0, inf]"),
    ({"lamda": 1}, "lamda", "unknown key"),
    ({"seeds": [1, "x"]}, "seeds[1]", "expected an integer"),
    ({"methods": [{"method": "gan"}]}, "methods[0].method", "not one of"),
    ({"methods": {"alpha": 1}}, "methods", "expected a list"),
])
def test_errors_name_the_key_path(data, where, text):
    with pytest.raises(BadConfig) as err:
        from_dict(Outer, data)
    assert err.value.where == where
    assert text in err.value.what
    assert str(err.value).startswith(err.value.what)


def test_load_yaml_is_safe_and_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(BadConfig) as err:
        load_yaml(bad)
    assert str(bad) in err.value.where
    evil = tmp_path / "evil.yaml"
    evil.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(BadConfig):
        load_yaml(evil)
    with pytest.raises(BadConfig, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_error_pickles_with_its_parts():
    import pickle

    err = pickle.loads(pickle.dumps(BadConfig("x is bad", "a.b", "fix it")))
    assert isinstance(err, CryotuneError) and str(err) == "x is bad, a.b: fix it"


_BOMB = "\n".join(
    ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n"


def test_alias_bomb_refused_in_bounded_memory(tmp_path):
    """A billion-laughs spec grew `cryotune status` to 17 GB; now it is refused while composed.

    Run in a subprocess capped at 1 GB of address space; its peak RSS (VmHWM) must stay under
    200 MB.
    """
    import subprocess
    import sys

    bomb = tmp_path / "spec.yaml"
    bomb.write_text(_BOMB)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from cryotune.config import load_yaml\n"
        "from cryotune.errors import BadConfig\n"
        "try:\n"
        "    load_yaml(sys.argv[1])\n"
        "except BadConfig as err:\n"
        "    print('refused:', err)\n"
        # VmHWM is this program's own peak: ru_maxrss also counts the forked parent's pages
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print('rss_mb', int(hwm.split()[1]) / 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(bomb)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("refused: YAML aliases expand to more than"), proc.stdout
    assert str(bomb) in lines[0]
    assert float(lines[1].split()[1]) < 200


def test_many_aliases_refused(tmp_path):
    from cryotune.config import MAX_ALIASES, load_yaml_text

    text = "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    with pytest.raises(BadConfig, match=f"more than {MAX_ALIASES} aliases, s.yaml:2"):
        load_yaml_text(text, "s.yaml")


@pytest.mark.parametrize("text, tag", [
    ("x: !!python/object/apply:os.system ['true']\n", "!!python/object/apply:os.system"),
    ("x: !!python/name:os.system\n", "!!python/name:os.system"),
    ("x: !custom 1\n", "!custom"),
    ("x: !!binary aGk=\n", "!!binary"),
])
def test_tags_refused_in_one_line(tmp_path, text, tag):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(BadConfig) as info:
        load_yaml(path)
    message = str(info.value)
    assert f"YAML tag {tag} is not allowed" in message and f"{path}:1" in message
    assert "\n" not in message


def test_plain_yaml_and_unicode_still_load(tmp_path):
    from cryotune.config import load_yaml_text, parse_yaml

    path = tmp_path / "spec.yaml"
    path.write_text("name: étude-ℓ1 ✓\nbase: &b {lr: 1.0e-3, width: 16}\n"
                    "methods: [*b, *b]\nflags: !!str 12\nempty: null\nlist: !!seq [1, 2]\n",
                    encoding="utf-8")
    data = load_yaml(path)
    assert data["name"] == "étude-ℓ1 ✓"
    assert data["methods"] == [{"lr": 1e-3, "width": 16}] * 2
    assert data["flags"] == "12" and data["empty"] is None and data["list"] == [1, 2]
    assert load_yaml_text("", "x") == {}
    assert parse_yaml("[1, 2]", "--set x") == [1, 2]
    with pytest.raises(BadConfig, match="must be a mapping"):
        load_yaml_text("[1, 2]", "x")
    with pytest.raises(BadConfig, match="recursive alias"):
        load_yaml_text("a: &a [1, *a]\n", "x")
