"""The exchange on an S3-compatible object store, for real: moto's S3 server on a loopback port, reached over HTTP
by s3fs exactly as a consortium's bucket would be (``FEDERATION_EXCHANGE=s3://bucket/prefix``, the endpoint and
credentials from the usual AWS_* variables). Each party opens its own filesystem, as separate processes would:
a document one party writes must be seen by another whatever the first had listed before."""
from __future__ import annotations

import json
import socket

import pytest
from moto.server import ThreadedMotoServer

from federation.exchange import ExchangeError, FsspecExchange, exchange_from_url
from federation.protocol import COORDINATOR, Coordinator, SiteNode, reply_name, result_name
from federation.verify import verify_document
from tests.federation.test_federation_protocol import DIGEST, FITS, REF, SIGNERS, SITE_KEYS, TOL
from tests.pooling_sites import site_tables

URL = "s3://iimild-consortium/exchange"


@pytest.fixture(scope="module")
def s3_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "consortium", "AWS_SECRET_ACCESS_KEY": "not-a-secret",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": s3_server}.items():
        monkeypatch.setenv(name, value)
    import boto3
    client = boto3.client("s3")
    client.create_bucket(Bucket="iimild-consortium")
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="iimild-consortium"):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket="iimild-consortium", Key=obj["Key"])
    client.delete_bucket(Bucket="iimild-consortium")


def party() -> FsspecExchange:
    """One party's own view of the bucket (its own filesystem object and listing cache)."""
    return FsspecExchange(URL, skip_instance_cache=True)


def test_the_s3_exchange_keeps_the_exchange_contract(s3):
    ex = exchange_from_url(URL)
    assert isinstance(ex, FsspecExchange)
    assert ex.list() == [] and ex.list("sessions") == [] and not ex.exists("aggregates/north.json")
    ex.put("sessions/s1/round-001/request.json", b"r")
    ex.put("aggregates/north.json", b"n")
    assert ex.get("aggregates/north.json") == b"n" and ex.exists("aggregates/north.json")
    assert ex.list() == ["aggregates/north.json", "sessions/s1/round-001/request.json"]
    assert ex.list("aggregates") == ["aggregates/north.json"] and ex.list("sessions/s1") == ["sessions/s1/round-001/request.json"]
    with pytest.raises(ExchangeError, match="write-once"):
        ex.put("aggregates/north.json", b"again")
    assert ex.get("aggregates/north.json") == b"n"
    ex.put("aggregates/north.json", b"n2", overwrite=True)
    assert ex.get("aggregates/north.json") == b"n2"
    for bad in ("../up.json", "/abs.json", "a/../../b", "a//b", ""):
        with pytest.raises(ExchangeError):
            ex.put(bad, b"x")
    # Only the prefix is used: nothing was written outside it.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="iimild-consortium")["Contents"]]
    assert sorted(keys) == ["exchange/aggregates/north.json", "exchange/sessions/s1/round-001/request.json"]


def test_a_document_another_party_writes_is_seen_after_a_listing(s3):
    coordinator, site = party(), party()
    coordinator.put("sessions/s1/round-001/request.json", b"r")
    assert coordinator.list("sessions") == ["sessions/s1/round-001/request.json"]
    assert not coordinator.exists("sessions/s1/round-001/reply-north.json")
    site.put("sessions/s1/round-001/reply-north.json", b"reply")
    assert coordinator.exists("sessions/s1/round-001/reply-north.json")
    assert coordinator.list("sessions") == ["sessions/s1/round-001/reply-north.json", "sessions/s1/round-001/request.json"]
    with pytest.raises(ExchangeError, match="write-once"):   # the write-once check sees the other party's write
        coordinator.put("sessions/s1/round-001/reply-north.json", b"forged")


def test_a_short_session_between_a_coordinator_and_two_sites_through_s3(s3, tmp_path):
    coordinator = Coordinator(party(), SIGNERS[COORDINATOR], SITE_KEYS, DIGEST, tmp_path / "coordinator")
    sites = {s: SiteNode(s, party(), SIGNERS[s], SIGNERS[COORDINATOR].key.public_key(), DIGEST, site_tables(s),
                         tmp_path / f"site-{s}") for s in ("north", "central")}
    fits = FITS[:1]
    coordinator.start("s3-session", list(sites), fits)
    for _ in range(15):
        for node in sites.values():
            node.handle_pending()
        state = coordinator.poll("s3-session")
        if state["status"] != "running":
            break
    assert state["status"] == "done"
    result = verify_document(party().get(result_name("s3-session")), "pooled_result",
                             {COORDINATOR: SIGNERS[COORDINATOR].key.public_key()}, expected_digest=DIGEST)
    (comparison, outcome), = fits
    got = result["fits"][f"{comparison}.{outcome}"]["result"]
    ref = REF["comparisons"][comparison]["outcomes"][outcome]["pooled_of_pairs"]["central,north"]
    for key in ("coef", "robust_se", "hazard_ratio", "p_value"):
        assert got[key] == pytest.approx(ref[key], abs=TOL, rel=TOL), key
    assert party().exists(reply_name("s3-session", result["rounds"], "central"))
    assert json.loads(s3.get_object(Bucket="iimild-consortium", Key="exchange/" + result_name("s3-session"))["Body"].read())
