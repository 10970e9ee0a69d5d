"""The catalogue store on real backends: a local folder, memory:// and S3 (moto's server on loopback)."""

from __future__ import annotations

import json
import os
import pickle
import threading

import pytest

from medray import storage
from medray.catalog import Catalog, CatalogError, ModelCard
from medray.catalog import store as store_mod

# --------------------------------------------------------------------------------------------
# publish -> list / get (every backend)


def test_publish_list_get_by_name_version_alias(catalog_uri, cache_dir, make_card, make_weights):
    cat = Catalog(catalog_uri, cache_dir=cache_dir)
    assert cat.list() == []

    c1 = cat.publish(make_card(), {"weights": make_weights(1.0)}, alias="production")
    assert (c1.name, c1.version, c1.aliases) == ("fundus_dr", 1, ["production"])
    assert c1.files["weights"].path == "weights.safetensors"
    assert c1.checksum == c1.files["weights"].sha256 == storage.sha256_bytes(make_weights(1.0))
    assert c1.files["weights"].size == len(make_weights(1.0))
    assert c1.created_at.endswith("Z")

    c2 = cat.publish(make_card(metrics={"auc": 0.95}), {"weights": make_weights(2.0)})
    assert c2.version == 2 and c2.aliases == []

    listed = cat.list()
    assert [(c.name, c.version) for c in listed] == [("fundus_dr", 2)]
    assert [c.version for c in cat.list(all_versions=True)] == [1, 2]
    assert cat.list(all_versions=True)[0].aliases == ["production"]

    assert cat.get("fundus_dr").version == 2
    assert cat.get("fundus_dr@latest").version == 2
    assert cat.get("fundus_dr:1").metrics["auc"] == 0.91
    assert cat.get("fundus_dr:v0001").version == 1
    prod = cat.get("fundus_dr@production")
    assert prod.version == 1 and prod.checksum == c1.checksum
    assert cat.versions("fundus_dr") == [1, 2]
    assert cat.names() == ["fundus_dr"]

    assert cat.fetch(prod) == make_weights(1.0)
    assert cat.fetch("fundus_dr") == make_weights(2.0)
    path = cat.local_path("fundus_dr@production")
    assert path.startswith(cache_dir) and open(path, "rb").read() == make_weights(1.0)

    # a card passed on alone (e.g. to serving) still finds its catalogue
    assert prod.location == storage.join(cat.uri, "fundus_dr", "v0001")
    assert Catalog.of(prod, cache_dir=cache_dir).local_path(prod) == path
    assert Catalog.of(ModelCard.model_validate(prod.model_dump())).fetch(prod) == make_weights(1.0)


def test_card_json_round_trip_without_aliases(catalog_uri, make_card, make_weights):
    cat = Catalog(catalog_uri)
    card = cat.publish(make_card(metrics={"auc": 0.9, "ci": [0.85, 0.94], "note": "val", "nan": float("nan")}),
                       {"weights": make_weights()}, alias="staging")
    raw = storage.read_text(storage.join(cat.uri, "fundus_dr", "v0001", "card.json"))
    stored = json.loads(raw)
    assert "aliases" not in stored and "location" not in stored
    assert stored["version"] == 1 and stored["checksum"] == card.checksum
    assert json.loads(storage.read_text(storage.join(cat.uri, "fundus_dr", "aliases.json"))) == {"staging": 1}
    again = cat.get("fundus_dr:1")
    assert again.metrics["ci"] == [0.85, 0.94] and again.metrics["note"] == "val"
    assert again.metrics["nan"] != again.metrics["nan"]  # NaN survives the JSON round trip
    assert again.model_dump(exclude={"metrics"}) == card.model_dump(exclude={"metrics"})


def test_versions_increment_per_name_and_filters(catalog_uri, make_card, make_weights):
    cat = Catalog(catalog_uri)
    cat.publish(make_card("fundus_dr"), {"weights": make_weights(1)})
    cat.publish(make_card("fundus_dr"), {"weights": make_weights(2)})
    cat.publish(make_card("fundus_dr"), {"weights": make_weights(3)})
    oct_card = cat.publish(make_card("oct_layers", task="oct_seg", modality="oct", labels=[],
                                     outputs=["mask"]), {"weights": make_weights(4)})
    cat.publish(make_card("skin_cls", task="skin_classify", modality="skin"), {"weights": make_weights(5)})
    assert oct_card.version == 1
    assert [(c.name, c.version) for c in cat.list()] == [("fundus_dr", 3), ("oct_layers", 1), ("skin_cls", 1)]
    assert [c.name for c in cat.list(task="oct_seg")] == ["oct_layers"]
    assert [c.name for c in cat.list(modality="skin")] == ["skin_cls"]
    assert [c.name for c in cat.list(task="classify", modality="fundus")] == ["fundus_dr"]
    assert cat.list(task="classify", modality="oct") == []
    assert [c.version for c in cat.list(name="fundus_dr", all_versions=True)] == [1, 2, 3]
    assert cat.list(name="nope") == []


def test_unknown_refs_name_what_exists(catalog_uri, make_card, make_weights):
    cat = Catalog(catalog_uri)
    with pytest.raises(CatalogError, match="is empty"):
        cat.get("fundus_dr")
    cat.publish(make_card(), {"weights": make_weights()}, alias="production")
    cat.publish(make_card("oct_layers", task="oct_seg", modality="oct", labels=[]), {"weights": make_weights()})
    with pytest.raises(CatalogError, match=r"no model 'skin'.*models: fundus_dr, oct_layers"):
        cat.get("skin")
    with pytest.raises(CatalogError, match=r"fundus_dr has no version 7; versions: 1"):
        cat.get("fundus_dr:7")
    with pytest.raises(CatalogError, match=r"fundus_dr has no alias 'prod'; aliases: production -> 1"):
        cat.get("fundus_dr@prod")
    with pytest.raises(CatalogError, match="no model 'skin'"):
        cat.get("skin@production")
    with pytest.raises(CatalogError, match="bad model reference"):
        cat.get("fundus_dr:three")
    with pytest.raises(CatalogError, match="bad model reference"):
        cat.get("../etc")


# --------------------------------------------------------------------------------------------
# card.json last; crashed publishes


def test_crashed_version_folder_is_ignored_and_not_reused(catalog_uri, make_card, make_weights):
    cat = Catalog(catalog_uri)
    # A publisher that died after uploading its weights, before card.json.
    storage.write_bytes(storage.join(cat.uri, "fundus_dr", "v0001", "weights.safetensors"), make_weights(9))
    assert cat.list() == [] and cat.names() == [] and cat.versions("fundus_dr") == []
    with pytest.raises(CatalogError, match="no model 'fundus_dr'"):
        cat.get("fundus_dr")

    card = cat.publish(make_card(), {"weights": make_weights(1)})
    assert card.version == 2
    assert [c.version for c in cat.list(all_versions=True)] == [2]
    # the half-written folder is left as it was: never overwritten
    assert storage.read_bytes(storage.join(cat.uri, "fundus_dr", "v0001", "weights.safetensors")) == make_weights(9)
    with pytest.raises(CatalogError, match="no version 1; versions: 2"):
        cat.get("fundus_dr:1")


def test_crash_before_card_json_leaves_no_visible_version(catalog_uri, make_card, make_weights, monkeypatch):
    cat = Catalog(catalog_uri)
    cat.publish(make_card(), {"weights": make_weights(1)})

    def crash(self, uri, data):
        raise RuntimeError("killed while publishing")

    with monkeypatch.context() as m:
        m.setattr(Catalog, "_write_card", crash)
        with pytest.raises(RuntimeError, match="killed"):
            cat.publish(make_card(), {"weights": make_weights(2)})
    # v2 has its files but no card: invisible
    assert storage.exists(storage.join(cat.uri, "fundus_dr", "v0002", "weights.safetensors"))
    assert not storage.exists(storage.join(cat.uri, "fundus_dr", "v0002", "card.json"))
    assert cat.get("fundus_dr").version == 1
    assert cat.versions("fundus_dr") == [1]

    card = cat.publish(make_card(), {"weights": make_weights(3)})
    assert card.version == 3
    assert cat.fetch(card) == make_weights(3)
    assert cat.versions("fundus_dr") == [1, 3]


def test_card_json_is_the_last_write(tmp_path, make_card, make_weights, monkeypatch):
    cat = Catalog(str(tmp_path / "catalog"))
    writes: list[str] = []
    real_write, real_excl = storage.write_bytes, Catalog._create_exclusive

    def spy_write(uri, data, s3=None):
        writes.append(storage.basename(uri))
        return real_write(uri, data, s3)

    def spy_excl(self, uri, data):
        writes.append(storage.basename(uri))
        return real_excl(self, uri, data)

    monkeypatch.setattr(store_mod.storage, "write_bytes", spy_write)
    monkeypatch.setattr(Catalog, "_create_exclusive", spy_excl)
    cat.publish(make_card(), {"weights": make_weights(), "labels.json": b'["none", "mild", "severe"]'})
    assert writes[0] == "_publish.json"
    assert sorted(writes[1:3]) == ["labels.json", "weights.safetensors"]
    assert writes[3] == "card.json" and len(writes) == 4


def test_lost_claim_is_detected_before_card_json(tmp_path, make_card, make_weights, monkeypatch):
    """A store that ignored the exclusive create: another publisher overwrote our claim mid-publish."""
    cat = Catalog(str(tmp_path / "catalog"))
    real_write = storage.write_bytes

    def racing_write(uri, data, s3=None):
        out = real_write(uri, data, s3)
        if uri.endswith("weights.safetensors"):
            real_write(storage.join(storage.parent(uri), "_publish.json"), b'{"token": "someone-else"}')
        return out

    monkeypatch.setattr(store_mod.storage, "write_bytes", racing_write)
    with pytest.raises(CatalogError, match="claim lost to a concurrent publisher"):
        cat.publish(make_card(), {"weights": make_weights()})
    monkeypatch.undo()
    assert not os.path.exists(tmp_path / "catalog" / "fundus_dr" / "v0001" / "card.json")
    assert cat.publish(make_card(), {"weights": make_weights()}).version == 2


def test_existing_card_json_is_never_overwritten(tmp_path, make_card, make_weights, monkeypatch):
    cat = Catalog(str(tmp_path / "catalog"))
    first = cat.publish(make_card(), {"weights": make_weights(1)})
    # force the next publish onto v0001 again, as a racing publisher on a non-atomic store might
    monkeypatch.setattr(Catalog, "_claim", lambda self, name: (1, "tok"))
    monkeypatch.setattr(Catalog, "_holds", lambda self, uri, token: True)
    with pytest.raises(CatalogError, match="another publisher completed this version first"):
        cat.publish(make_card(), {"weights": make_weights(1)})
    assert cat.get("fundus_dr:1").checksum == first.checksum


def test_sequential_publishers_on_two_handles_never_collide(catalog_uri, make_card, make_weights):
    a, b = Catalog(catalog_uri), Catalog(catalog_uri)
    got = []
    for i in range(3):
        got.append(a.publish(make_card(), {"weights": make_weights(i)}).version)
        got.append(b.publish(make_card(), {"weights": make_weights(10 + i)}).version)
    assert got == [1, 2, 3, 4, 5, 6]
    for v in got:
        card = a.get(f"fundus_dr:{v}")
        assert a.fetch(card) == make_weights((v - 1) // 2 + (10 if v % 2 == 0 else 0))


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_concurrent_publishers_get_distinct_versions(backend, tmp_path, request, make_card, make_weights):
    uri = str(tmp_path / "catalog") if backend == "local" else request.getfixturevalue("s3_bucket") + "/catalog"
    results: list[int] = []
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        cat = Catalog(uri)
        try:
            for j in range(2):
                results.append(cat.publish(make_card(), {"weights": make_weights(100 * k + j)}).version)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == list(range(1, 9))
    cat = Catalog(uri)
    for card in cat.list(all_versions=True):
        assert cat.fetch(card)  # every version's weights match its own card


# --------------------------------------------------------------------------------------------
# checksums and the local cache


def test_tampered_weights_fail_checksum(catalog_uri, cache_dir, make_card, make_weights):
    cat = Catalog(catalog_uri, cache_dir=cache_dir)
    card = cat.publish(make_card(), {"weights": make_weights(1)})
    storage.write_bytes(storage.join(cat.uri, "fundus_dr", "v0001", "weights.safetensors"), make_weights(666))
    with pytest.raises(CatalogError, match="checksum mismatch: catalogue file was modified or corrupted"):
        cat.fetch(card)
    with pytest.raises(CatalogError, match="checksum mismatch"):
        cat.local_path(card)
    assert not any(f.endswith(".safetensors") for _, _, fs in os.walk(cache_dir) for f in fs)


def test_missing_file_and_unknown_key(catalog_uri, make_card, make_weights):
    cat = Catalog(catalog_uri)
    card = cat.publish(make_card(), {"weights": make_weights()})
    with pytest.raises(CatalogError, match=r"fundus_dr:1 has no file 'onnx'; files: weights"):
        cat.fetch(card, "onnx")
    storage.remove(storage.join(cat.uri, "fundus_dr", "v0001", "weights.safetensors"))
    with pytest.raises(CatalogError, match="catalogue file missing"):
        cat.fetch(card)


def test_local_path_caches_and_reverifies(catalog_uri, cache_dir, make_card, make_weights, monkeypatch):
    cat = Catalog(catalog_uri, cache_dir=cache_dir)
    card = cat.publish(make_card(), {"weights": make_weights(1), "labels.json": b'["a"]'})
    path = cat.local_path(card)
    assert path == os.path.join(cache_dir, "fundus_dr", "v0001", card.checksum[:16], "weights.safetensors")
    assert open(path, "rb").read() == make_weights(1)

    # a matching cached copy is reused without touching the catalogue
    def no_download(*a, **k):
        raise AssertionError("downloaded again")

    with monkeypatch.context() as m:
        m.setattr(store_mod.storage, "open_read", no_download)
        assert cat.local_path(card) == path

    # a corrupted cached copy is replaced by a verified download
    with open(path, "wb") as f:
        f.write(b"garbage")
    assert open(cat.local_path(card), "rb").read() == make_weights(1)
    assert open(cat.local_path(card, "labels.json"), "rb").read() == b'["a"]'


# --------------------------------------------------------------------------------------------
# refused files


def test_pickle_and_non_safetensors_weights_are_refused(tmp_path, make_card, make_weights):
    uri = str(tmp_path / "catalog")
    cat = Catalog(uri)
    for fname in ("model.pt", "model.pth", "model.pkl", "pytorch_model.bin"):
        p = tmp_path / fname
        p.write_bytes(pickle.dumps({"w": [0.0, 0.0]}))
        with pytest.raises(CatalogError, match=rf"{fname} is a pickle-based file.*refuses pickles"):
            cat.publish(make_card(), {"weights": str(p)})
    with pytest.raises(CatalogError, match="looks like a torch.save/pickle file"):
        cat.publish(make_card(), {"weights": pickle.dumps({"w": 1})})
    with pytest.raises(CatalogError, match="not a safetensors file"):
        cat.publish(make_card(), {"weights": b"definitely not tensors"})
    with pytest.raises(CatalogError, match="pickle-based"):
        cat.publish(make_card(), {"weights": make_weights(), "optimizer.pt": b"\x80\x04"})
    npz = tmp_path / "weights.npz"
    npz.write_bytes(make_weights())
    with pytest.raises(CatalogError, match="must be a .safetensors file"):
        cat.publish(make_card(), {"weights": str(npz)})
    with pytest.raises(CatalogError, match="needs files=\\{'weights'"):
        cat.publish(make_card(), {"labels.json": b"[]"})
    with pytest.raises(CatalogError, match="no such file"):
        cat.publish(make_card(), {"weights": str(tmp_path / "missing.safetensors")})
    # nothing was claimed or written by any refused publish
    assert not os.path.exists(uri)


def test_publish_from_paths_and_uris(tmp_path, s3_bucket, make_card, make_weights):
    src = tmp_path / "model.safetensors"
    src.write_bytes(make_weights(5))
    remote = f"{s3_bucket}/runs/fundus_dr/export/weights.safetensors"
    storage.write_bytes(remote, make_weights(6))
    cat = Catalog(f"{s3_bucket}/catalog")
    c1 = cat.publish(make_card(), {"weights": str(src)})
    assert c1.files["weights"].path == "model.safetensors"
    c2 = cat.publish(make_card(), {"weights": remote})
    assert cat.fetch(c1) == make_weights(5) and cat.fetch(c2) == make_weights(6)


def test_promote_a_card_between_catalogues(tmp_path, s3_bucket, make_card, make_weights):
    staging = Catalog(str(tmp_path / "staging"))
    for i in range(3):
        staging.publish(make_card(), {"weights": make_weights(i)})
    card = staging.get("fundus_dr")
    prod = Catalog(f"{s3_bucket}/catalog")
    promoted = prod.publish(card, {"weights": staging.fetch(card)}, alias="production")
    assert (promoted.version, promoted.aliases) == (1, ["production"])
    assert promoted.checksum == card.checksum and promoted.source == card.source
    read_time = {"version", "aliases", "created_at", "location"}
    assert promoted.model_dump(exclude=read_time) == card.model_dump(exclude=read_time)
    assert promoted.location.startswith(f"{s3_bucket}/catalog/")


def test_invalid_card_is_refused_before_anything_is_written(tmp_path, make_card, make_weights):
    cat = Catalog(str(tmp_path / "catalog"))
    with pytest.raises(CatalogError, match=r"invalid card for 'Fundus DR': name"):
        cat.publish(make_card("Fundus DR"), {"weights": make_weights()})
    with pytest.raises(CatalogError, match=r"invalid card for 'fundus_dr': colour: Extra inputs"):
        cat.publish(make_card(colour="red"), {"weights": make_weights()})
    with pytest.raises(CatalogError, match="alias 'latest' is reserved"):
        cat.publish(make_card(), {"weights": make_weights()}, alias="latest")
    assert not os.path.exists(tmp_path / "catalog")


def test_corrupt_card_json_is_reported_with_its_path(catalog_uri, make_card, make_weights):
    cat = Catalog(catalog_uri)
    cat.publish(make_card(), {"weights": make_weights()})
    card_uri = storage.join(cat.uri, "fundus_dr", "v0001", "card.json")
    storage.write_text(card_uri, '{"name": "fundus_dr"}')
    with pytest.raises(CatalogError, match=r"v0001/card.json: invalid card"):
        cat.list()


# --------------------------------------------------------------------------------------------
# aliases and delete


def test_aliases_set_move_remove(catalog_uri, make_card, make_weights):
    cat = Catalog(catalog_uri)
    cat.publish(make_card(), {"weights": make_weights(1)}, alias="production")
    cat.publish(make_card(), {"weights": make_weights(2)})
    cat.set_alias("fundus_dr", "staging", 2)
    assert cat.aliases("fundus_dr") == {"production": 1, "staging": 2}
    assert cat.get("fundus_dr:2").aliases == ["staging"]
    cat.set_alias("fundus_dr", "production", 2)
    assert cat.get("fundus_dr@production").version == 2
    assert cat.get("fundus_dr:2").aliases == ["production", "staging"]
    assert cat.get("fundus_dr:1").aliases == []
    cat.remove_alias("fundus_dr", "staging")
    assert cat.aliases("fundus_dr") == {"production": 2}
    with pytest.raises(CatalogError, match="has no alias 'staging'; aliases: production"):
        cat.remove_alias("fundus_dr", "staging")
    with pytest.raises(CatalogError, match="fundus_dr has no version 9"):
        cat.set_alias("fundus_dr", "production", 9)
    with pytest.raises(CatalogError, match="no model 'skin'"):
        cat.set_alias("skin", "production", 1)
    with pytest.raises(CatalogError, match="reserved"):
        cat.set_alias("fundus_dr", "latest", 1)
    with pytest.raises(CatalogError, match="lowercase slug"):
        cat.set_alias("fundus_dr", "Prod!", 1)


def test_delete_keeps_the_number_retired(catalog_uri, make_card, make_weights):
    cat = Catalog(catalog_uri)
    cat.publish(make_card(), {"weights": make_weights(1)})
    cat.publish(make_card(), {"weights": make_weights(2)}, alias="production")
    with pytest.raises(CatalogError, match="aliased as production; remove the alias"):
        cat.delete("fundus_dr", 2)
    cat.remove_alias("fundus_dr", "production")
    cat.delete("fundus_dr", 2)
    assert cat.versions("fundus_dr") == [1]
    assert cat.get("fundus_dr").version == 1
    assert not storage.exists(storage.join(cat.uri, "fundus_dr", "v0002", "weights.safetensors"))
    assert cat.publish(make_card(), {"weights": make_weights(3)}).version == 3
    with pytest.raises(CatalogError, match="no version 2"):
        cat.delete("fundus_dr", 2)


# --------------------------------------------------------------------------------------------
# the CLI (medray catalog list / show)


def test_cli_catalog_list_and_show(catalog_uri, cli, make_card, make_weights):
    code, out, err = cli("catalog", "list", "--catalog", catalog_uri)
    assert code == 0 and "is empty" in out

    cat = Catalog(catalog_uri)
    cat.publish(make_card(), {"weights": make_weights(1)}, alias="production")
    cat.publish(make_card(metrics={"auc": 0.95}), {"weights": make_weights(2)})
    cat.publish(make_card("oct_layers", task="oct_seg", modality="oct", labels=[], metrics={"dice": 0.8}),
                {"weights": make_weights(3)})

    code, out, err = cli("catalog", "list", "--catalog", catalog_uri)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines == ["fundus_dr:2\tclassify\tfundus\tauc=0.950", "oct_layers:1\toct_seg\toct\tdice=0.800"]

    code, out, _ = cli("catalog", "list", "--catalog", catalog_uri, "--modality", "oct")
    assert code == 0 and out.strip().splitlines() == ["oct_layers:1\toct_seg\toct\tdice=0.800"]

    code, out, err = cli("catalog", "show", "fundus_dr@production", "--catalog", catalog_uri)
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["name"], shown["version"], shown["aliases"]) == ("fundus_dr", 1, ["production"])
    assert shown["metrics"]["auc"] == 0.91 and shown["files"]["weights"]["path"] == "weights.safetensors"
    ModelCard.model_validate(shown)

    code, out, err = cli("catalog", "show", "skin_cls", "--catalog", catalog_uri)
    assert code == 2 and out == ""
    assert "medray: error: no model 'skin_cls'" in err and "fundus_dr, oct_layers" in err
    assert "Traceback" not in err


def test_s3_writes_by_another_process_are_seen(s3_bucket, s3_endpoint, make_card, make_weights):
    """s3fs caches listings per filesystem; objects another process PUTs must still show up."""
    import boto3

    cat = Catalog(f"{s3_bucket}/catalog")
    card = cat.publish(make_card(), {"weights": make_weights(1)})
    assert [c.version for c in cat.list()] == [1]  # listings are now cached in this process

    # another process publishes v2 (plain boto3 PUTs, bypassing this process's s3fs)
    bucket = s3_bucket.split("://", 1)[1]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    w2 = make_weights(2)
    v2 = card.model_copy(update={"version": 2, "aliases": []}).model_dump(mode="json", exclude={"aliases"})
    v2["files"]["weights"]["sha256"] = v2["checksum"] = storage.sha256_bytes(w2)
    s3.put_object(Bucket=bucket, Key="catalog/fundus_dr/v0002/weights.safetensors", Body=w2)
    s3.put_object(Bucket=bucket, Key="catalog/fundus_dr/v0002/card.json", Body=json.dumps(v2).encode())
    s3.put_object(Bucket=bucket, Key="catalog/fundus_dr/aliases.json", Body=b'{"production": 2}')

    assert cat.get("fundus_dr").version == 2
    assert cat.get("fundus_dr@production").version == 2
    assert cat.fetch("fundus_dr@production") == w2
    assert cat.publish(make_card(), {"weights": make_weights(3)}).version == 3
