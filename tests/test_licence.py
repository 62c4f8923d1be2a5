"""Licences and citation: LICENSE (MIT, code), LICENSE-CONTENT (CC BY 4.0, content) and CITATION.cff exist,
CITATION.cff is valid Citation File Format 1.2, and all of them agree with pyproject.toml, lora_edu and the
README (names, licence ids, version, title, repository URL).

The CFF check validates against a JSON Schema written here from the CFF 1.2.0 specification: its required
keys, its closed list of top-level keys (a misspelt key fails), the shapes of persons, entities, references
and identifiers, and the formats of dates and URLs. Licence ids are checked against the SPDX ids this
project could use, not the whole SPDX list.
"""
from __future__ import annotations

import copy
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

import lora_edu

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import install_cell  # noqa: E402

URL_PATTERN = r"^(https|http|ftp|sftp)://.+"
SPDX_IDS = ["MIT", "CC-BY-4.0", "CC-BY-SA-4.0", "CC0-1.0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause",
            "GPL-3.0-only", "GPL-3.0-or-later", "LGPL-3.0-only", "MPL-2.0"]
PERSON = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {k: {"type": "string", "minLength": 1} for k in (
        "address", "affiliation", "alias", "city", "country", "email", "family-names", "fax", "given-names",
        "name-particle", "name-suffix", "post-code", "region", "tel")} | {
        "orcid": {"type": "string", "pattern": r"^https://orcid\.org/[0-9]{4}-[0-9]{4}-[0-9]{4}-[0-9]{3}[0-9X]$"},
        "website": {"type": "string", "pattern": URL_PATTERN}},
}
DATE = {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
ENTITY = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {k: {"type": "string", "minLength": 1} for k in (
        "address", "alias", "city", "country", "email", "fax", "location", "name", "post-code", "region", "tel")} | {
        "date-start": DATE, "date-end": DATE, "website": {"type": "string", "pattern": URL_PATTERN},
        "orcid": PERSON["properties"]["orcid"]},
}
AUTHORS = {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"anyOf": [PERSON, ENTITY]}}
IDENTIFIERS = {"type": "array", "minItems": 1, "items": {
    "type": "object", "additionalProperties": False, "required": ["type", "value"],
    "properties": {"type": {"enum": ["doi", "url", "swh", "other"]}, "value": {"type": "string", "minLength": 1},
                   "description": {"type": "string", "minLength": 1}}}}
LICENSE = {"anyOf": [{"enum": SPDX_IDS}, {"type": "array", "minItems": 1, "uniqueItems": True,
                                          "items": {"enum": SPDX_IDS}}]}
REFERENCE = {
    "type": "object", "required": ["authors", "title", "type"],
    "properties": {
        "authors": AUTHORS, "title": {"type": "string", "minLength": 1},
        "type": {"enum": ["art", "article", "audiovisual", "bill", "blog", "book", "catalogue", "conference",
                          "conference-paper", "data", "database", "dictionary", "edited-work", "encyclopedia",
                          "film-broadcast", "generic", "government-document", "grant", "hearing",
                          "historical-work", "legal-case", "legal-rule", "magazine-article", "manual", "map",
                          "multimedia", "music", "newspaper-article", "pamphlet", "patent", "personal-communication",
                          "proceedings", "report", "serial", "slides", "software", "software-code",
                          "software-container", "software-executable", "software-virtual-machine",
                          "sound-recording", "standard", "statute", "thesis", "unpublished", "video", "website"]},
        "year": {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^-?[0-9]+$"}]},
        "conference": ENTITY, "identifiers": IDENTIFIERS, "url": {"type": "string", "pattern": URL_PATTERN},
        "doi": {"type": "string", "pattern": r"^10\.\d{4,9}(\.\d+)?/[A-Za-z0-9:/_;\-\.\(\)\[\]\\]+$"},
    },
}
CFF_1_2_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["authors", "cff-version", "message", "title"],
    "properties": {
        "abstract": {"type": "string", "minLength": 1},
        "authors": AUTHORS,
        "cff-version": {"type": "string", "pattern": r"^1\.2\.0$"},
        "commit": {"type": "string", "minLength": 1},
        "contact": AUTHORS,
        "date-released": DATE,
        "doi": REFERENCE["properties"]["doi"],
        "identifiers": IDENTIFIERS,
        "keywords": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "license": LICENSE,
        "license-url": {"type": "string", "pattern": URL_PATTERN},
        "message": {"type": "string", "minLength": 1},
        "preferred-citation": REFERENCE,
        "references": {"type": "array", "minItems": 1, "items": REFERENCE},
        "repository": {"type": "string", "pattern": URL_PATTERN},
        "repository-artifact": {"type": "string", "pattern": URL_PATTERN},
        "repository-code": {"type": "string", "pattern": URL_PATTERN},
        "title": {"type": "string", "minLength": 1},
        "type": {"enum": ["dataset", "software"]},
        "url": {"type": "string", "pattern": URL_PATTERN},
        "version": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "number"}]},
    },
}


def cff() -> dict:
    # dates stay quoted in the file: YAML would read an unquoted 2026-11-29 as a date, not CFF's string
    return yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_citation_cff_is_valid_cff_1_2():
    jsonschema.validate(cff(), CFF_1_2_SCHEMA)


@pytest.mark.parametrize("breakage, message", [
    (lambda c: c.pop("authors"), "'authors' is a required property"),
    (lambda c: c.update({"cff-version": "1.1.0"}), "does not match"),
    (lambda c: c.update({"date-released": "29/11/2026"}), "does not match"),
    (lambda c: c.update({"licence": "MIT"}), "Additional properties are not allowed"),
    (lambda c: c.update({"license": "MIT License"}), "is not valid under any of the given schemas"),
    (lambda c: c.update({"repository-code": "github.com/x/y"}), "does not match"),
    (lambda c: c["authors"].append({"given-names": "A", "nickname": "b"}), "is not valid under any"),
    (lambda c: c["references"][0].pop("type"), "'type' is a required property"),
])
def test_the_cff_schema_rejects_broken_files(breakage, message):
    broken = copy.deepcopy(cff())
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        jsonschema.validate(broken, CFF_1_2_SCHEMA)


def test_licence_files_say_what_they_are():
    code = (ROOT / "LICENSE").read_text()
    content = (ROOT / "LICENSE-CONTENT").read_text()
    assert code.startswith("MIT License\n") and "Permission is hereby granted, free of charge" in code
    assert content.startswith("Creative Commons Attribution 4.0 International (CC BY 4.0)")
    assert "CC-BY-4.0" in content and "https://creativecommons.org/licenses/by/4.0/legalcode" in content
    holder = project()["authors"][0]["name"]
    assert f"Copyright (c) 2026 {holder}" in code and f"Copyright (c) 2026 {holder}" in content


def test_pyproject_cff_and_readme_agree():
    meta, citation, text = project(), cff(), readme()
    ids = set(meta["license"].split(" AND "))
    assert ids == {"MIT", "CC-BY-4.0"} == set(citation["license"])
    assert set(meta["license-files"]) == {"LICENSE", "LICENSE-CONTENT"}
    assert all((ROOT / f).is_file() for f in meta["license-files"])
    assert meta["version"] == citation["version"] == lora_edu.__version__
    title = text.splitlines()[0].removeprefix("# ")
    assert citation["title"] == title == "Rank to LoRA"
    assert citation["authors"] == [{"name": meta["authors"][0]["name"]}]
    assert citation["repository-code"] == meta["urls"]["Repository"] == install_cell.repository_url()
    for needed in ("](LICENSE)", "](LICENSE-CONTENT)", "MIT", "CC BY 4.0", "CITATION.cff", "## Cite this course"):
        assert needed in text, f"README.md does not mention {needed!r}"
    cite = text.split("## Cite this course", 1)[1]
    assert f"(version {meta['version']})" in cite and meta["urls"]["Repository"] in cite


def test_every_repository_url_in_the_docs_is_pyprojects():
    """The repository URL lives in pyproject.toml; the links to this repository in README, CITATION.cff and
    CONTRIBUTING (launch links, badges, files on the repository) must use the same one."""
    url = install_cell.repository_url()
    owner_repo = url.split("/", 3)[3]
    ours = [r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/", r"mybinder\.org/v2/gh/([\w.-]+/[\w.-]+)/",
            r"github\.com/([\w.-]+/[\w.-]+)/(?:actions|blob|tree)/", r"repository-code: \"https://github\.com/([^\"]+)\""]
    for name in ("README.md", "CITATION.cff", "CONTRIBUTING.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        for pattern in ours:
            for found in re.findall(pattern, text):
                assert found == owner_repo, f"{name} links {found}, but pyproject.toml's repository is {url}"


def test_readme_has_badges_and_a_launch_link_per_chapter():
    text = readme()
    head = text.split("## ", 1)[0]
    owner_repo = install_cell.repository_url().split("/", 3)[3]
    assert "actions/workflows/ci.yml/badge.svg" in head, "a CI badge"
    assert "](LICENSE)" in head and "](LICENSE-CONTENT)" in head, "licence badges"
    assert "colab-badge.svg" in head and "mybinder.org/badge_logo.svg" in head, "launch badges"
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        colab = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{nb.name}"
        binder = f"https://mybinder.org/v2/gh/{owner_repo}/main?labpath=notebooks%2F{nb.name}"
        assert colab in text, f"README has no Colab launch link for {nb.name}"
        assert binder in text, f"README has no Binder launch link for {nb.name}"
    assert (ROOT / ".github" / "workflows" / "ci.yml").is_file(), "the CI badge's workflow"
    assert "bash .ci/run" in (ROOT / ".github" / "workflows" / "ci.yml").read_text()
