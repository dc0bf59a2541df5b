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
