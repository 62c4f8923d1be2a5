"""lora_edu.results finds the recorded benchmark results from a checkout, an override, or package data."""
from __future__ import annotations

import json

import pytest

from lora_edu import results


def test_checkout_results_are_found():
    assert results.results_dir().name == "results"
    runs = results.load_results("nvidia-h200*.json")
    assert runs and all(r["_file"].startswith("nvidia-h200") for r in runs)


def test_override_folder(tmp_path, monkeypatch):
    (tmp_path / "b.json").write_text(json.dumps({"x": 2}))
    (tmp_path / "a.json").write_text(json.dumps({"x": 1}))
    monkeypatch.setenv("LORA_EDU_RESULTS", str(tmp_path))
    assert [r["x"] for r in results.load_results()] == [1, 2]
    assert results.load_result("b.json") == {"x": 2, "_file": "b.json"}
    assert results.load_results("nothing_*.json") == []
    with pytest.raises(FileNotFoundError, match=r"files there: a.json, b.json"):
        results.load_result("c.json")


def test_missing_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_EDU_RESULTS", str(tmp_path / "nowhere"))
    monkeypatch.setattr(results, "_CHECKOUT", tmp_path / "no_checkout")
    monkeypatch.setattr(results, "_PACKAGED", tmp_path / "no_package")
    with pytest.raises(FileNotFoundError, match="LORA_EDU_RESULTS"):
        results.results_dir()


@pytest.mark.parametrize("bad", ["", "../x.json", "a/b.json", 3, None])
def test_bad_names(bad):
    with pytest.raises(ValueError, match="pattern must be"):
        results.load_results(bad)
    with pytest.raises(ValueError, match="name must be"):
        results.load_result(bad)
