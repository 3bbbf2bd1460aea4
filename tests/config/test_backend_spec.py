"""The spec's `backend` and `ray` keys (CONTRACT.md sections 1 and 7): defaults, good and
bad values with their key path and line, overrides, and the GPU list refused with ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from foldrunner.config.fields import parse_host_port
from foldrunner.config.spec import RaySpec, ResourcesSpec, Spec, load_spec
from foldrunner.errors import SpecError

pytestmark = pytest.mark.timeout(30)

HEAD = "name: t\nentrypoint: m:f\n"  # two lines: what a case adds starts at line 3

# the end of CONTRACT.md section 1's example, verbatim
CONTRACT_TAIL = """\
output:
  dir: runs/{name}               # run directory; relative to the working directory
backend: local                   # local | ray
ray:                             # with `backend: ray` (`pip install foldrunner[ray]`)
  address: auto                  # auto | HOST:PORT | local (a private cluster on this machine)
  namespace: foldrunner
"""

GPUS_MESSAGE = ("an explicit list of GPUs ([0, 1]) cannot be used with backend: ray, where Ray"
                " assigns each fold its GPU on its node: write auto (the GPUs Ray assigns) or none")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, overrides: Any = ()) -> Spec:
    return load_spec(write(tmp_path, HEAD + text), overrides)


def problems(tmp_path: Path, text: str, overrides: Any = ()) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(tmp_path, text, overrides)
    return info.value.problems


# ---------------------------------------------------------------- good values
def test_defaults(tmp_path: Path) -> None:
    spec = load(tmp_path, "")
    assert spec.backend == "local"
    assert spec.ray == RaySpec(address="auto", namespace="foldrunner", cpus_per_fold=1.0)
    assert spec.to_dict()["backend"] == "local"
    assert spec.to_dict()["ray"] == {"address": "auto", "namespace": "foldrunner", "cpus_per_fold": 1.0}


@pytest.mark.parametrize("text, cpus", [("0.5", 0.5), ("4", 4.0), ("1024", 1024.0)])
def test_cpus_per_fold(tmp_path: Path, text: str, cpus: float) -> None:
    assert load(tmp_path, f"ray:\n  cpus_per_fold: {text}\n").ray.cpus_per_fold == cpus


def test_the_contract_example_tail_loads(tmp_path: Path) -> None:
    spec = load(tmp_path, CONTRACT_TAIL)
    assert (spec.backend, spec.ray.address, spec.ray.namespace) == ("local", "auto", "foldrunner")


@pytest.mark.parametrize("address", [
    "auto", "local", "10.0.0.5:6379", "127.0.0.1:1", "localhost:65535", "head.example.org:6379",
    "ray-head_0:6380", "[::1]:6379", "[fe80::1]:10001",
])
def test_good_addresses(tmp_path: Path, address: str) -> None:
    spec = load(tmp_path, f"backend: ray\nray:\n  address: '{address}'\n  namespace: my.ns-1_x\n")
    assert (spec.backend, spec.ray.address, spec.ray.namespace) == ("ray", address, "my.ns-1_x")
    again = load_spec(write(tmp_path, spec.to_yaml()))  # the resolved spec reads back equal
    assert again == spec


def test_ray_section_left_empty_means_its_defaults(tmp_path: Path) -> None:
    spec = load(tmp_path, "backend: ray\nray:\n  # address: 10.0.0.5:6379\n")
    assert spec.ray == RaySpec()


def test_overrides(tmp_path: Path) -> None:
    spec = load(tmp_path, "", ["backend=ray", "ray.address=10.0.0.5:6379", "ray.namespace=sweeps"])
    assert (spec.backend, spec.ray.address, spec.ray.namespace) == ("ray", "10.0.0.5:6379", "sweeps")
    spec = load_spec({"name": "t", "entrypoint": "m:f"}, {"backend": "ray", "ray.address": "local"})
    assert (spec.backend, spec.ray.address) == ("ray", "local")


def test_gpus_with_ray_auto_or_none_and_local_with_a_list(tmp_path: Path) -> None:
    assert load(tmp_path, "backend: ray\nresources: {gpus: auto}\n").resources.gpus == "auto"
    assert load(tmp_path, "backend: ray\nresources: {gpus: none}\n").resources.gpus == "none"
    local = load(tmp_path, "backend: local\nresources: {gpus: [0, 1]}\n")
    assert local.resources == ResourcesSpec(gpus=[0, 1])  # the local backend: as before


def test_parse_host_port() -> None:
    assert parse_host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert parse_host_port(" head:1 ") == ("head", 1)
    assert parse_host_port("[::1]:6379") == ("::1", 6379)


# ---------------------------------------------------------------- bad values
BAD = [
    ("backend unknown", "backend: rey\n", "backend (line 3): expected 'local' or 'ray', got 'rey' (a string)"),
    ("backend capital", "backend: Ray\n", "backend (line 3): expected 'local' or 'ray', got 'Ray' (a string)"),
    ("backend bool", "backend: true\n", "backend (line 3): expected 'local' or 'ray', got true (a boolean)"),
    ("ray not a mapping", "ray: 10.0.0.5:6379\n", "ray (line 3): expected a mapping, got '10.0.0.5:6379' (a string)"),
    ("ray unknown key", "ray:\n  adress: auto\n", "ray.adress (line 4): unknown key; did you mean 'address'?"),
    ("ray unknown key, no match", "ray:\n  zzz: 1\n",
     "ray.zzz (line 4): unknown key; expected one of: address, namespace, cpus_per_fold"),
    ("address no port", "ray:\n  address: head\n",
     "ray.address (line 4): invalid address 'head': the port is missing, e.g. head:6379 (Ray's"
     " default); or write auto or local"),
    ("address port 0", "ray:\n  address: head:0\n",
     "ray.address (line 4): invalid address 'head:0': the port must be 1 to 65535, got 0; or write"
     " auto or local"),
    ("address port too big", "ray:\n  address: head:65536\n",
     "ray.address (line 4): invalid address 'head:65536': the port must be 1 to 65535, got 65536;"
     " or write auto or local"),
    ("address port not a number", "ray:\n  address: head:http\n",
     "ray.address (line 4): invalid address 'head:http': expected HOST:PORT, e.g. 10.0.0.5:6379 or"
     " headnode:6379; or write auto or local"),
    ("address bare ipv6", "ray:\n  address: '::1:6379'\n",
     "ray.address (line 4): invalid address '::1:6379': write an IPv6 address in brackets, e.g."
     " [::1]:6379; or write auto or local"),
    ("address url", "ray:\n  address: ray://head:10001\n",
     "ray.address (line 4): 'ray://head:10001' is a URL (ray://...); give the Ray head's address as"
     " HOST:PORT, e.g. 10.0.0.5:6379 (Ray Client addresses, ray://..., are not supported)"),
    ("address an integer", "ray:\n  address: 6379\n",
     "ray.address (line 4): expected auto, local or HOST:PORT such as 10.0.0.5:6379; got 6379 (an"
     " integer); for a port on this machine write 127.0.0.1:6379"),
    ("address empty", "ray:\n  address: ''\n",
     "ray.address (line 4): expected auto, local or HOST:PORT such as 10.0.0.5:6379; got '' (a string)"),
    ("address null", "ray:\n  address: null\n",
     "ray.address (line 4): expected auto, local or HOST:PORT such as 10.0.0.5:6379; got null"),
    ("namespace empty", "ray:\n  namespace: ''\n",
     "ray.namespace (line 4): invalid namespace '': use letters, digits, '.', '_' and '-'"),
    ("namespace spaces", "ray:\n  namespace: my sweeps\n",
     "ray.namespace (line 4): invalid namespace 'my sweeps': use letters, digits, '.', '_' and '-'"),
    ("namespace int", "ray:\n  namespace: 3\n", "ray.namespace (line 4): expected a string, got 3 (an integer)"),
    ("namespace too long", f"ray:\n  namespace: {'n' * 101}\n",
     "ray.namespace (line 4): must be at most 100 characters, got '" + "n" * 101 + "'"),
    ("cpus zero", "ray:\n  cpus_per_fold: 0\n", "ray.cpus_per_fold (line 4): expected a number of CPUs above 0 and at most 1024, e.g. 1, 0.5 or 4; got 0 (an integer)"),
    ("cpus negative", "ray:\n  cpus_per_fold: -1.5\n", "ray.cpus_per_fold (line 4): expected a number of CPUs above 0 and at most 1024, e.g. 1, 0.5 or 4; got -1.5 (a number)"),
    ("cpus too many", "ray:\n  cpus_per_fold: 2000\n", "ray.cpus_per_fold (line 4): expected a number of CPUs above 0 and at most 1024, e.g. 1, 0.5 or 4; got 2000 (an integer)"),
    ("cpus text", "ray:\n  cpus_per_fold: two\n", "ray.cpus_per_fold (line 4): expected a number of CPUs above 0 and at most 1024, e.g. 1, 0.5 or 4; got 'two' (a string)"),
    ("cpus bool", "ray:\n  cpus_per_fold: true\n", "ray.cpus_per_fold (line 4): expected a number of CPUs above 0 and at most 1024, e.g. 1, 0.5 or 4; got true (a boolean)"),
    ("cpus nan", "ray:\n  cpus_per_fold: .nan\n", "ray.cpus_per_fold (line 4): expected a number of CPUs above 0 and at most 1024, e.g. 1, 0.5 or 4; got nan (a number)"),
    ("gpu list with ray", "backend: ray\nresources:\n  gpus: [0, 1]\n", f"resources.gpus (line 5): {GPUS_MESSAGE}"),
    ("gpu list with ray, flow style", "resources: {gpus: [0, 1]}\nbackend: ray\n",
     f"resources.gpus (line 3): {GPUS_MESSAGE}"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_value_is_named_with_path_and_line(tmp_path: Path, text: str, expected: str) -> None:
    assert problems(tmp_path, text) == [expected]


def test_gpu_list_refused_whichever_side_an_override_is_on(tmp_path: Path) -> None:
    # backend from an override, the list from the file: located at the file's line
    assert problems(tmp_path, "resources:\n  gpus: [0, 1]\n", ["backend=ray"]) == [
        f"resources.gpus (line 4): {GPUS_MESSAGE}"]
    # the list from an override: located at it
    assert problems(tmp_path, "backend: ray\n", ["resources.gpus=[0,1]"]) == [
        f"resources.gpus (from -o resources.gpus=[0,1]): {GPUS_MESSAGE}"]
    # a mapping spec: the key path, no line
    with pytest.raises(SpecError) as info:
        load_spec({"name": "t", "entrypoint": "m:f", "backend": "ray", "resources": {"gpus": [0, 1]}})
    assert info.value.problems == [f"resources.gpus: {GPUS_MESSAGE}"]


def test_bad_override_values_name_the_override(tmp_path: Path) -> None:
    assert problems(tmp_path, "", ["backend=slurm"]) == [
        "backend (from -o backend=slurm): expected 'local' or 'ray', got 'slurm' (a string)"]
    assert problems(tmp_path, "", ["ray.address=head"]) == [
        "ray.address (from -o ray.address=head): invalid address 'head': the port is missing, e.g."
        " head:6379 (Ray's default); or write auto or local"]


def test_several_problems_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, "backend: rey\nray:\n  address: x\n  namespace: 'a b'\n")
    assert [p.split(":")[0] for p in found] == [
        "backend (line 3)", "ray.address (line 5)", "ray.namespace (line 6)"]


def test_a_gpu_list_problem_waits_for_the_spec_to_be_otherwise_valid(tmp_path: Path) -> None:
    """The refusal is the whole spec's check: with other problems it is not reported."""
    found = problems(tmp_path, "backend: ray\nresources: {gpus: [0, 1]}\ncv: {folds: 0}\n")
    assert found == ["cv.folds (line 5): must be at least 1, got 0"]


def test_the_docs_ray_example_loads_and_the_docs_list_no_ray_key_as_planned() -> None:
    import re

    from foldrunner.config.yamlload import parse_yaml

    doc = (Path(__file__).resolve().parents[2] / "docs" / "spec.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- spec-example: ray -->\s*```yaml\n(.*?)\n```", doc, re.S)
    assert match, "docs/spec.md has no yaml block marked <!-- spec-example: ray -->"
    data, _, found = parse_yaml(match.group(1))
    assert not found, found
    spec = load_spec({"name": "t", "entrypoint": "m:f", **data})
    assert (spec.backend, spec.ray.address, spec.resources.workers) == ("ray", "10.0.0.5:6379", 32)
    planned = doc.partition("## Not yet available")[2].split("\n## ", 1)[0]  # none left: empty
    assert "`backend`" not in planned and "`ray`" not in planned
