"""SDK layers: by url + sha256, by version through a local layer index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.api.spec import SdkLayer
from runtime.errors import ChecksumMismatch, FetchError, HostSetupError, LayerNotFound
from runtime.images.layers import LAYER_INDEX_ENV, index_document_url, resolve_sdk
from runtime.settings import RuntimeSettings
from tests.fixtures.mirror import make_layer_index, serve_directory, unused_local_url


def make_tree(root: Path, version: str) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python3").write_text(f"#!/bin/sh\necho Python {version}\n")
    (root / "bin" / "python3").chmod(0o755)
    (root / "VERSION").write_text(f"{version}\n")
    return root


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    trees = tmp_path / "trees"
    index = tmp_path / "index"
    make_layer_index(
        index,
        {
            "python": {
                "3.12": make_tree(trees / "py312", "3.12"),
                "3.11": make_tree(trees / "py311", "3.11"),
            },
            "node": {"20": make_tree(trees / "node20", "20")},
        },
    )
    return index


@pytest.fixture
def index_url(index_dir: Path) -> Iterator[str]:
    with serve_directory(index_dir) as url:
        yield url


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def index_entry(index_dir: Path, name: str, version: str) -> dict[str, str]:
    document = json.loads((index_dir / "index.json").read_text())
    entry: dict[str, str] = document["layers"][name][version]
    return entry


def test_layer_by_url_and_sha256(cache: Path, index_dir: Path, index_url: str) -> None:
    entry = index_entry(index_dir, "python", "3.12")
    layer = SdkLayer(name="python", url=f"{index_url}/{entry['url']}", sha256=entry["sha256"])
    root = resolve_sdk(layer, cache)
    assert root == cache / "layers" / f"python-{entry['sha256'][:16]}"
    assert (root / "VERSION").read_text() == "3.12\n"
    assert (root / "bin" / "python3").stat().st_mode & 0o111


def test_layer_by_url_is_reused_without_network(
    cache: Path, index_dir: Path, index_url: str
) -> None:
    entry = index_entry(index_dir, "python", "3.12")
    first = resolve_sdk(
        SdkLayer(name="python", url=f"{index_url}/{entry['url']}", sha256=entry["sha256"]), cache
    )
    offline = SdkLayer(
        name="python", url=f"{unused_local_url()}/gone.tar.gz", sha256=entry["sha256"]
    )
    assert resolve_sdk(offline, cache) == first


def test_layer_by_version_through_the_index(cache: Path, index_url: str) -> None:
    py312 = resolve_sdk(SdkLayer(name="python", version="3.12"), cache, index_url=index_url)
    py311 = resolve_sdk(SdkLayer(name="python", version="3.11"), cache, index_url=index_url)
    assert py312 != py311
    assert (py312 / "VERSION").read_text() == "3.12\n"
    assert (py311 / "VERSION").read_text() == "3.11\n"


def test_index_comes_from_the_environment(cache: Path, index_url: str) -> None:
    settings = RuntimeSettings.from_environ({LAYER_INDEX_ENV: index_url + "/"})
    root = resolve_sdk(SdkLayer(name="node", version="20"), cache, index_url=settings.layer_index)
    assert (root / "VERSION").read_text() == "20\n"


def test_absolute_urls_in_the_index(cache: Path, tmp_path: Path, index_url: str) -> None:
    entry = index_entry(tmp_path / "index", "python", "3.11")
    other = tmp_path / "other-index"
    other.mkdir()
    (other / "index.json").write_text(
        json.dumps(
            {
                "layers": {
                    "py": {
                        "3.11": {
                            "url": f"{index_url}/{entry['url']}",
                            "sha256": entry["sha256"],
                            "size": 1,
                        }
                    }
                }
            }
        )
    )
    with serve_directory(other) as url:
        root = resolve_sdk(SdkLayer(name="py", version="3.11"), cache, index_url=url)
    assert (root / "VERSION").read_text() == "3.11\n"


def test_missing_version_lists_what_is_offered(cache: Path, index_url: str) -> None:
    with pytest.raises(LayerNotFound, match=r"versions offered: 3\.11, 3\.12") as caught:
        resolve_sdk(SdkLayer(name="python", version="2.7"), cache, index_url=index_url)
    assert (caught.value.name, caught.value.version) == ("python", "2.7")
    with pytest.raises(LayerNotFound, match="versions offered: none"):
        resolve_sdk(SdkLayer(name="ruby", version="3.3"), cache, index_url=index_url)


def test_no_index_configured_says_to_set_it(cache: Path) -> None:
    with pytest.raises(HostSetupError, match=LAYER_INDEX_ENV) as caught:
        resolve_sdk(SdkLayer(name="python", version="3.12"), cache)
    assert "docs/layers.md" in caught.value.fix
    assert not cache.exists()


def test_wrong_sha256_caches_nothing(cache: Path, index_dir: Path, index_url: str) -> None:
    entry = index_entry(index_dir, "python", "3.12")
    layer = SdkLayer(name="python", url=f"{index_url}/{entry['url']}", sha256="0" * 64)
    with pytest.raises(ChecksumMismatch):
        resolve_sdk(layer, cache)
    assert not (cache / "layers").exists()
    assert list((cache / "downloads").iterdir()) == []


def test_malformed_index_is_a_fetch_error(cache: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad-index"
    bad.mkdir()
    (bad / "index.json").write_text('{"layers": {"python": {"3.12": {"url": "x"}}}}')
    with serve_directory(bad) as url, pytest.raises(FetchError, match="not a valid layer index"):
        resolve_sdk(SdkLayer(name="python", version="3.12"), cache, index_url=url)


def test_url_without_sha256_is_refused(cache: Path) -> None:
    with pytest.raises(ValueError, match="together"):
        resolve_sdk(SdkLayer(name="python", url="http://127.0.0.1:9/x.tar.gz"), cache)


def test_index_document_url() -> None:
    assert index_document_url("http://h/base") == "http://h/base/index.json"
    assert index_document_url("http://h/base/") == "http://h/base/index.json"
    assert index_document_url("http://h/custom.json") == "http://h/custom.json"
