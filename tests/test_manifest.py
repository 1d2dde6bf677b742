"""Manifest format: round trip, and malformed or unsafe manifests refused clearly."""

from __future__ import annotations

import copy
import json

import pytest

from grokfetch.errors import ManifestError
from grokfetch.format.manifest import Manifest, load_manifest, resolve_manifest, save_manifest


@pytest.fixture
def mini_dict(mini_ckpt):
    return json.loads((mini_ckpt / "grokfetch-manifest.json").read_text())


def test_synthesized_manifest_is_pinned_with_all_hashes(mini_ckpt):
    m = load_manifest(mini_ckpt / "grokfetch-manifest.json")
    assert m.pinned and len(m.files) == 146
    assert all(f.blake3 and f.chunks for f in m.files)
    big = m.file("ckpt-0/tensor00002_000")
    assert len(big.chunks) == -(-big.size // m.chunk_size) > 1
    assert big.param == "transformer/decoder_layer_0/moe/linear"


def test_round_trip(tmp_path, mini_ckpt):
    m = load_manifest(mini_ckpt / "grokfetch-manifest.json")
    save_manifest(m, tmp_path / "m.json")
    assert load_manifest(tmp_path / "m.json") == m
    assert Manifest.from_dict(m.to_dict()) == m


@pytest.mark.parametrize("path,why", [
    ("../etc/passwd", "'..'"),
    ("ckpt-0/../../x", "'..'"),
    ("/etc/passwd", "absolute"),
    ("ckpt-0\\tensor", "backslash"),
    ("ckpt-0/te\x00nsor", "NUL"),
    ("", "empty"),
    ("ckpt-0//tensor00000_000", "not normalised"),
])
def test_unsafe_paths_refused(tmp_path, mini_dict, path, why):
    d = copy.deepcopy(mini_dict)
    d["files"][3]["path"] = path
    p = tmp_path / "m.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="files\\[3\\]") as e:
        load_manifest(p)
    assert why in str(e.value)


@pytest.mark.parametrize("mutate,fragment", [
    (lambda d: d.pop("files"), "files: must be a list"),
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.update(format_version=99), "unsupported version"),
    (lambda d: d["files"][0].update(size=-1), "size must be"),
    (lambda d: d["files"][0].update(blake3="abc"), "blake3 must be"),
    (lambda d: d["files"][0].update(chunks=d["files"][0]["chunks"][:1]), "chunk hashes"),
    (lambda d: d["files"][1].update(path=d["files"][0]["path"]), "duplicate path"),
    (lambda d: d["files"][0].update(blake3=None), "pinned"),
    (lambda d: d["config"].update(emb_size="big"), "config"),
    (lambda d: d["sources"].update(info_hash="XYZ"), "info_hash"),
])
def test_malformed_manifests_refused(tmp_path, mini_dict, mutate, fragment):
    d = copy.deepcopy(mini_dict)
    mutate(d)
    p = tmp_path / "m.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ManifestError) as e:
        load_manifest(p)
    assert fragment in str(e.value)
    assert str(p) in str(e.value)


def test_not_json_names_line_and_column(tmp_path):
    p = tmp_path / "m.json"
    p.write_text('{"format": "grokfetch-manifest",\n "files": [}')
    with pytest.raises(ManifestError, match="not valid JSON \\(line 2"):
        load_manifest(p)


def test_model_names_resolve_to_packaged_manifests():
    assert resolve_manifest("grok-1").name == "grok-1.json"
    with pytest.raises(ManifestError, match="known models: .*grok-1"):
        resolve_manifest("grok-9")


def test_schema_file_describes_the_format():
    from pathlib import Path

    import grokfetch

    schema_path = Path(grokfetch.__file__).parent / "format" / "manifest.schema.json"
    schema = json.loads(schema_path.read_text())
    assert schema["properties"]["format"]["const"] == "grokfetch-manifest"
    shipped = load_manifest("grok-1").to_dict()
    # Every top-level key and file-entry key we write is described by the schema.
    assert set(shipped) <= set(schema["properties"])
    entry_keys = set().union(*(f.keys() for f in shipped["files"]))
    assert entry_keys <= set(schema["properties"]["files"]["items"]["properties"])
