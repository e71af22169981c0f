"""Three synthetic hospitals pooled through a folder: the round-based protocol reproduces R's pooled
coxph(Surv(t, e) ~ treated + strata(site), weights = w, robust = TRUE) to 1e-6, and the meta-analysis of
the sites' signed packages reproduces metafor::rma; sites cap rounds, refuse, and reject what is not
authentic, and the coordinator reports what it cannot pool."""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from analytics.cohort.concepts import load_concept_map
from analytics.cohort.params import RuleParams
from federation.aggregate import aggregates_name, collect_packages, heterogeneity_table, meta_table, site_estimates, unpooled_sites
from federation.canonical import canonical_bytes, parse
from federation.consortium import ConsortiumError, load_consortium
from federation.contract import contract_digest, contract_terms
from federation.exchange import ExchangeError, FsspecExchange, LocalDirectoryExchange, exchange_from_url
from federation.package import build_site_package
from federation.protocol import COORDINATOR, Coordinator, SiteNode, SitePolicy, reply_name, request_name, result_name
from federation.schema import SCHEMA_VERSION
from federation.signing import Signer, public_pem
from federation.verify import verify_document
from tests.paths import FIXTURES
from tests.pooling_sites import SITES, WITHHELD_BY, pooled_reference, site_tables

REF = json.loads((FIXTURES / "pooling" / "reference.json").read_text())
FITS = [(c, o) for c in REF["comparisons"] for o in ("death", "relapse", "resp_relapse")]
TOL = 1e-6
SIGNERS = {p: Signer(p, Ed25519PrivateKey.generate()) for p in (*SITES, COORDINATOR)}
SITE_KEYS = {s: SIGNERS[s].key.public_key() for s in SITES}
DIGEST = contract_digest()


def network(tmp_path: Path, policies: dict[str, SitePolicy] | None = None, digests: dict[str, str] | None = None):
    exchange = LocalDirectoryExchange(tmp_path / "exchange")
    coordinator = Coordinator(exchange, SIGNERS[COORDINATOR], SITE_KEYS, DIGEST, tmp_path / "coordinator")
    sites = {s: SiteNode(s, exchange, SIGNERS[s], SIGNERS[COORDINATOR].key.public_key(), (digests or {}).get(s, DIGEST),
                         site_tables(s), tmp_path / f"site-{s}", (policies or {}).get(s, SitePolicy()),
                         consortium_sites=SITES) for s in SITES}
    return exchange, coordinator, sites


def run(coordinator: Coordinator, sites: dict[str, SiteNode], session: str, fits=FITS, max_turns: int = 60) -> dict:
    coordinator.start(session, list(sites), fits)
    for _ in range(max_turns):
        for site in sites.values():
            site.handle_pending()
        state = coordinator.poll(session)
        if state["status"] != "running":
            return state
    raise AssertionError("the session did not finish")


def reference_of(comparison: str, outcome: str) -> tuple[list[str], dict]:
    return pooled_reference(REF, comparison, outcome)


def test_three_sites_pooled_through_a_folder_equal_coxph_strata(tmp_path):
    exchange, coordinator, sites = network(tmp_path)
    state = run(coordinator, sites, "pooled-2026")
    assert state["status"] == "done"
    coordinator_key = {COORDINATOR: SIGNERS[COORDINATOR].key.public_key()}
    result = verify_document(exchange.get(result_name("pooled-2026")), "pooled_result", coordinator_key,
                             expected_signer=COORDINATOR, expected_digest=DIGEST)
    for comparison, outcome in FITS:
        fit = result["fits"][f"{comparison}.{outcome}"]
        got = fit["result"]
        pooled_sites, ref = reference_of(comparison, outcome)
        for key in ("coef", "robust_se", "se", "hazard_ratio", "ci_lower", "ci_upper", "p_value", "loglik"):
            assert got[key] == pytest.approx(ref[key], abs=TOL, rel=TOL), (comparison, outcome, key)
        assert got["iterations"] == ref["iterations"] and got["n_sites"] == len(pooled_sites)
        assert fit["sites"] == pooled_sites
        assert fit["left_out"] == ({WITHHELD_BY[(comparison, outcome)]: "withheld"} if len(pooled_sites) == 2 else {})
    # Rounds: the slowest fit's Newton rounds plus its variance round; every site answered each one once.
    assert result["rounds"] == max(reference_of(c, o)[1]["iterations"] for c, o in FITS) + 2
    for s, node in sites.items():
        ledger = node.ledger("pooled-2026")["rounds"]
        assert len(ledger) == result["rounds"] and all(r["outcome"] == "answered" for r in ledger.values())
        assert exchange.exists(reply_name("pooled-2026", 1, s))


def test_each_request_says_what_it_will_learn_and_the_site_sees_what_it_sent(tmp_path):
    exchange, coordinator, sites = network(tmp_path)
    coordinator.start("s1", list(sites), FITS[:1])
    request = parse(exchange.get(request_name("s1", 1)))["payload"]
    assert "log partial likelihood, score and information" in request["reveals"] and "cap the rounds" in request["reveals"]
    handled = sites["north"].handle_pending()
    assert [h.outcome for h in handled] == ["answered"]
    assert handled[0].reveals == request["reveals"]
    assert set(handled[0].sent["tacrolimus_vs_conventional.death"]) == {"loglik", "score", "information"}
    assert sites["north"].handle_pending() == []  # answered once


def test_a_site_caps_the_rounds_it_answers(tmp_path):
    _, coordinator, sites = network(tmp_path, policies={"south": SitePolicy(max_rounds=2)})
    state = run(coordinator, sites, "capped")
    assert state["status"] == "failed"
    assert state["reason"] == ("south refused round 3: round_cap (limit 2): the site's cap on rounds per session is "
                               "reached (limit: the cap)")
    assert all(f["result"] is None and "round_cap" in f["reason"] for f in state["fits"].values())
    result = verify_document(coordinator.exchange.get(result_name("capped")), "pooled_result",
                             {COORDINATOR: SIGNERS[COORDINATOR].key.public_key()})
    assert all(f["result"] is None and "round_cap" in f["reason"] for f in result["fits"].values())  # reported, not pooled


def test_a_data_engineer_can_refuse_a_request(tmp_path):
    def engineer(request):
        return "not approved by the site's data engineer" if any(i["ask"] == "meat" for i in request["items"]) else None

    _, coordinator, sites = network(tmp_path, policies={"central": SitePolicy(approve=engineer)})
    state = run(coordinator, sites, "gated", fits=FITS[:1])
    assert state["status"] == "failed" and "central refused" in state["reason"] and "data engineer" in state["reason"]


def test_a_fit_with_a_small_arm_at_a_site_is_refused_and_not_pooled(tmp_path):
    _, coordinator, sites = network(tmp_path, policies={"north": SitePolicy(min_arm=40)})  # north has 35 CTX patients
    state = run(coordinator, sites, "small-arm")
    assert state["status"] == "done"
    ctx = state["fits"]["tacrolimus_vs_CTX.death"]
    assert ctx["phase"] == "failed" and ctx["reason"] == ("north refused: small_arm (limit 40): an arm of this fit has "
                                                          "fewer patients than the site's minimum (limit: the minimum)")
    assert sites["north"].ledger("small-arm")["rounds"]["1"]["not_answered"]["tacrolimus_vs_CTX.death"] == \
        "an arm has fewer than 40 patients at this site"   # the words stay in the site's own ledger
    assert state["fits"]["tacrolimus_vs_conventional.death"]["phase"] == "done"


def test_a_site_refuses_a_beta_where_its_likelihood_overflows(tmp_path):
    exchange, _, sites = network(tmp_path)
    payload = {"schema_version": SCHEMA_VERSION, "kind": "round_request", "session_id": "far", "round": 1, "contract_digest": DIGEST,
               "sites": list(SITES), "reveals": "terms", "items": [{"fit_id": "c.death", "comparison": "tacrolimus_vs_conventional",
                                                                   "outcome": "death", "ask": "terms", "beta": [1e6]}]}
    exchange.put(request_name("far", 1), canonical_bytes(SIGNERS[COORDINATOR].sign(payload)))
    handled = sites["north"].handle_pending()[0]
    assert handled.outcome == "answered" and not handled.sent
    reply = parse(exchange.get(reply_name("far", 1, "north")))["payload"]
    assert reply["answers"][0]["refused"] == {"code": "not_finite", "limit": None}
    assert handled.not_answered == {"c.death": "the likelihood is not finite at beta [1000000.0]"}


def assert_equals_r_on(result_fits: dict, pair: str) -> None:
    """Every fit pooled over exactly the sites of ``pair``, equal to R's coxph(... strata(site)) on their rows; a fit
    that one of them withholds is not pooled (one site's terms alone would be its own estimate)."""
    for comparison, outcome in FITS:
        fit = result_fits[f"{comparison}.{outcome}"]
        withholding = WITHHELD_BY.get((comparison, outcome))
        if withholding in pair.split(","):
            other = [s for s in pair.split(",") if s != withholding]
            assert fit["result"] is None and fit["left_out"] == {withholding: "withheld"} and fit["sites"] == other
            assert fit["reason"] == (f"fewer than 2 sites to pool (remaining: {other[0]}; withholding their own "
                                     f"estimate of this fit: {withholding})")
            continue
        ref = REF["comparisons"][comparison]["outcomes"][outcome]["pooled_of_pairs"][pair]
        assert fit["sites"] == pair.split(",") and fit["result"]["n_sites"] == 2, (comparison, outcome)
        for key in ("coef", "robust_se", "se", "hazard_ratio", "ci_lower", "ci_upper", "p_value", "loglik"):
            assert fit["result"][key] == pytest.approx(ref[key], abs=TOL, rel=TOL), (comparison, outcome, key)
        assert fit["result"]["iterations"] == ref["iterations"]


def test_a_site_replying_under_another_contract_is_left_out_and_the_others_pooled_from_the_start(tmp_path):
    other = contract_digest(contract_terms(RuleParams(followup_days=730)))
    exchange, coordinator, sites = network(tmp_path, digests={"central": other})
    state = run(coordinator, sites, "contracts")
    assert state["status"] == "done" and state["sites"] == ["north", "south"]
    assert list(state["left_out"]) == ["central"]
    assert "replied to round 1 under another contract" in state["left_out"]["central"]
    result = verify_document(exchange.get(result_name("contracts")), "pooled_result",
                             {COORDINATOR: SIGNERS[COORDINATOR].key.public_key()}, expected_digest=DIGEST)
    assert result["left_out"] == state["left_out"] and result["sites"] == ["north", "south"]
    assert_equals_r_on(result["fits"], "north,south")
    # Round 1 was spent finding out; round 2 restarted every fit at beta = 0 without central.
    round2 = parse(exchange.get(request_name("contracts", 2)))["payload"]
    assert round2["sites"] == ["north", "south"] and {i["beta"][0] for i in round2["items"]} == {0.0}
    slowest = max(REF["comparisons"][c]["outcomes"][o]["pooled_of_pairs"]["north,south"]["iterations"] for c, o in FITS)
    assert result["rounds"] == 1 + slowest + 2
    assert {r["outcome"] for r in sites["central"].ledger("contracts")["rounds"].values()} == {"refused", "not_for_us"}


def test_sites_without_an_accepted_package_are_left_out_when_the_session_starts(tmp_path):
    exchange, coordinator, sites = network(tmp_path)
    publish(exchange, "north")
    publish(exchange, "central")
    publish(exchange, "south", terms=contract_terms(RuleParams(followup_days=730)))
    left_out = unpooled_sites(collect_packages(exchange, SITE_KEYS, DIGEST), list(SITES))
    assert list(left_out) == ["south"] and left_out["south"].startswith("package rejected (contract_digest)")
    coordinator.start("screened", list(SITES), FITS, left_out=left_out)
    assert parse(exchange.get(request_name("screened", 1)))["payload"]["sites"] == ["north", "central"]
    for _ in range(30):
        for site in sites.values():
            site.handle_pending()
        state = coordinator.poll("screened")
        if state["status"] != "running":
            break
    assert state["status"] == "done" and state["left_out"] == left_out
    assert not exchange.exists(reply_name("screened", 1, "south"))   # never asked
    result = parse(exchange.get(result_name("screened")))["payload"]
    assert result["left_out"] == left_out
    assert_equals_r_on(result["fits"], "central,north")


def test_with_fewer_than_two_sites_left_no_fit_is_pooled(tmp_path):
    exchange, coordinator, _ = network(tmp_path)
    publish(exchange, "north")
    publish(exchange, "south", terms=contract_terms(RuleParams(followup_days=730)))
    left_out = unpooled_sites(collect_packages(exchange, SITE_KEYS, DIGEST), list(SITES))
    assert left_out["central"] == "no package in the exchange (aggregates/central.json)"
    state = coordinator.start("alone", list(SITES), FITS[:2], left_out=left_out)
    assert state["status"] == "failed" and state["sites"] == ["north"]
    assert state["reason"].startswith("fewer than 2 sites to pool (remaining: north; left out: central: no package")
    assert "south: package rejected (contract_digest)" in state["reason"]
    assert not exchange.exists(request_name("alone", 1))
    result = verify_document(exchange.get(result_name("alone")), "pooled_result",
                             {COORDINATOR: SIGNERS[COORDINATOR].key.public_key()})
    assert result["rounds"] == 0 and all(f["result"] is None and f["reason"] == state["reason"] for f in result["fits"].values())
    # The same when a second site turns out to work under another contract mid-session.
    other = contract_digest(contract_terms(RuleParams(followup_days=730)))
    _, coordinator, sites = network(tmp_path / "two", digests={"central": other})
    state = run(coordinator, {s: sites[s] for s in ("north", "central")}, "pair", fits=FITS[:1])
    assert state["status"] == "failed" and state["sites"] == ["north"] and "central: replied to round 1" in state["reason"]


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


def test_a_round_waits_until_its_deadline_then_ends_the_waiting_fits_naming_the_silent_sites(tmp_path):
    exchange, _, sites = network(tmp_path)
    clock = Clock(T0)
    coordinator = Coordinator(exchange, SIGNERS[COORDINATOR], SITE_KEYS, DIGEST, tmp_path / "coordinator", clock=clock)
    assert coordinator.round_deadline_hours == 72
    coordinator.start("slow", list(SITES), FITS[:2])
    sites["north"].handle_pending()
    clock.now = T0 + timedelta(hours=71, minutes=59)
    assert coordinator.poll("slow")["status"] == "running" and coordinator.overdue("slow") == []
    clock.now = T0 + timedelta(hours=72)
    assert coordinator.overdue("slow") == ["central", "south"]
    state = coordinator.poll("slow")
    assert state["status"] == "failed"
    assert state["reason"] == "no reply to round 1 within 72 h from central, south: not pooled"
    result = parse(exchange.get(result_name("slow")))["payload"]
    assert all(f["result"] is None and f["reason"] == state["reason"] for f in result["fits"].values())
    # A late reply changes nothing: the session has ended.
    sites["central"].handle_pending()
    assert coordinator.poll("slow")["status"] == "failed"


def test_the_deadline_counts_from_each_round_and_a_session_may_set_its_own(tmp_path):
    exchange, _, sites = network(tmp_path)
    clock = Clock(T0)
    coordinator = Coordinator(exchange, SIGNERS[COORDINATOR], SITE_KEYS, DIGEST, tmp_path / "coordinator", clock=clock)
    coordinator.start("brisk", list(SITES), FITS[:1], round_deadline_hours=2)
    for site in sites.values():
        site.handle_pending()
    clock.now = T0 + timedelta(hours=1, minutes=30)
    assert coordinator.poll("brisk")["round"] == 2          # round 2 asked at 10:30, due at 12:30
    clock.now = T0 + timedelta(hours=3)
    assert coordinator.overdue("brisk") == []
    clock.now = T0 + timedelta(hours=3, minutes=30)
    assert coordinator.poll("brisk")["reason"] == "no reply to round 2 within 2 h from north, central, south: not pooled"
    with pytest.raises(ValueError, match="deadline must be positive"):
        coordinator.start("never", list(SITES), FITS[:1], round_deadline_hours=0)


def test_a_session_begun_before_rounds_had_deadlines_gets_one_from_its_next_poll(tmp_path):
    exchange, _, _ = network(tmp_path)
    clock = Clock(T0)
    coordinator = Coordinator(exchange, SIGNERS[COORDINATOR], SITE_KEYS, DIGEST, tmp_path / "coordinator", clock=clock)
    coordinator.start("older", list(SITES), FITS[:1])
    path = tmp_path / "coordinator" / "older.json"
    state = json.loads(path.read_text())
    del state["round_started_at"], state["round_deadline_hours"]
    path.write_text(json.dumps(state))
    clock.now = T0 + timedelta(days=10)
    assert coordinator.overdue("older") == [] and coordinator.poll("older")["status"] == "running"
    clock.now = T0 + timedelta(days=13)
    assert coordinator.poll("older")["reason"] == "no reply to round 1 within 72 h from north, central, south: not pooled"


def test_a_site_caps_the_evaluations_a_session_asks_of_it(tmp_path):
    # 6 fits a round: round 1 makes 6 evaluations, round 2 would make 12.
    _, coordinator, sites = network(tmp_path, policies={"south": SitePolicy(max_evaluations=10)})
    state = run(coordinator, sites, "wide")
    assert state["status"] == "failed" and "south refused round 2" in state["reason"]
    assert "evaluation_cap (limit 10)" in state["reason"]
    assert sites["south"].ledger("wide")["rounds"]["2"]["reason"] == (
        "evaluation cap reached: this request would make 12 fit evaluations in this session; this site answers at most "
        "10 per session")


def test_a_site_caps_the_sessions_it_answers_in_a_rolling_window_from_its_own_ledger(tmp_path):
    exchange, coordinator, _ = network(tmp_path)
    clock = Clock(T0)
    policy = SitePolicy(max_sessions=1, session_window_days=30)

    def south():  # a fresh node each time: the cap lives in the ledger folder, not in the object
        return SiteNode("south", exchange, SIGNERS["south"], SIGNERS[COORDINATOR].key.public_key(), DIGEST,
                        site_tables("south"), tmp_path / "site-south", policy, clock=clock)

    coordinator.start("first", list(SITES), FITS[:1])
    assert [h.outcome for h in south().handle_pending()] == ["answered"]
    clock.now = T0 + timedelta(days=29)
    coordinator.start("second", list(SITES), FITS[:1])
    handled = south().handle_pending()
    assert [h.outcome for h in handled] == ["refused"]
    assert handled[0].reason == "session cap reached: this site answers at most 1 sessions per 30 days (1 answered in that window)"
    assert parse(exchange.get(reply_name("second", 1, "south")))["payload"]["refused"] == {"code": "session_cap", "limit": 1}
    clock.now = T0 + timedelta(days=30, hours=1)
    coordinator.start("third", list(SITES), FITS[:1])
    assert [h.outcome for h in south().handle_pending()] == ["answered"]


def test_a_request_not_signed_by_the_coordinator_is_not_answered(tmp_path):
    exchange, _, sites = network(tmp_path)
    impostor = Signer(COORDINATOR, Ed25519PrivateKey.generate())
    payload = {"schema_version": SCHEMA_VERSION, "kind": "round_request", "session_id": "probe", "round": 1, "contract_digest": DIGEST,
               "sites": list(SITES), "reveals": "nothing", "items": [{"fit_id": "x.death", "comparison": "tacrolimus_vs_conventional",
                                                                     "outcome": "death", "ask": "terms", "beta": [0.3]}]}
    exchange.put(request_name("probe", 1), canonical_bytes(impostor.sign(payload)))
    handled = sites["north"].handle_pending()
    assert handled[0].outcome == "rejected" and "bad_signature" in handled[0].reason
    assert not exchange.exists(reply_name("probe", 1, "north"))
    assert sites["north"].handle_pending() == []  # recorded, not retried


def test_a_tampered_reply_fails_the_session_with_the_reason(tmp_path):
    exchange, coordinator, sites = network(tmp_path)
    coordinator.start("t1", list(sites), FITS[:1])
    for site in sites.values():
        site.handle_pending()
    path = exchange.root / reply_name("t1", 1, "south")
    envelope = parse(path.read_bytes())
    envelope["payload"]["answers"][0]["terms"]["score"][0] += 1.0
    path.write_bytes(canonical_bytes(envelope))
    state = coordinator.poll("t1")
    assert state["status"] == "failed" and "reply of south" in state["reason"] and "bad_signature" in state["reason"]


def test_a_site_that_lost_its_ledger_does_not_answer_twice(tmp_path):
    exchange, coordinator, sites = network(tmp_path)
    coordinator.start("l1", list(sites), FITS[:1])
    sites["north"].handle_pending()
    for f in (tmp_path / "site-north").glob("*.json"):
        f.unlink()
    again = sites["north"].handle_pending()
    assert [h.outcome for h in again] == ["already_answered"]
    assert sites["north"].ledger("l1")["rounds"]["1"]["outcome"] == "answered"  # still counts toward the cap


def test_the_coordinator_waits_for_every_site(tmp_path):
    _, coordinator, sites = network(tmp_path)
    coordinator.start("w1", list(sites), FITS[:1])
    sites["north"].handle_pending()
    assert coordinator.waiting_for("w1") == ["central", "south"]
    assert coordinator.poll("w1")["round"] == 1


# ---- meta-analysis of the sites' packages --------------------------------------------------------------------

def publish(exchange, site: str, terms=None) -> None:
    payload = build_site_package(site, site_tables(site), terms=terms or contract_terms(), concepts=load_concept_map(),
                                 data_cutoff=date(2026, 1, 1))
    exchange.put(aggregates_name(site), canonical_bytes(SIGNERS[site].sign(payload)), overwrite=True)


def test_meta_analysis_of_the_sites_packages_equals_metafor(tmp_path):
    exchange, _, _ = network(tmp_path)
    for s in SITES:
        publish(exchange, s)
    collected = collect_packages(exchange, SITE_KEYS, DIGEST)
    assert set(collected.accepted) == set(SITES) and not collected.rejected
    table = meta_table(site_estimates(collected.accepted)).set_index(["comparison", "outcome", "method", "test"])
    pairs = 0
    for comparison, outcome in FITS:
        # A site whose package withholds its estimate (a suppressed event count) is not in the meta-analysis:
        # R's reference for the sites that publish one.
        ref_fit = REF["comparisons"][comparison]["outcomes"][outcome]
        publishing = sorted(s for s in SITES if collected.accepted[s]["comparisons"][comparison]["outcomes"][outcome]["estimate"])
        refs = ref_fit["meta"] if len(publishing) == 3 else ref_fit["meta_of_pairs"][",".join(publishing)]
        pairs += len(publishing) == 2
        for key, ref in refs.items():
            if key == "REML_exact_z":
                continue
            method, test = key.split("_")
            row = table.loc[(comparison, outcome, method, test)]
            assert row["k"] == len(publishing) and row["sites"] == ",".join(publishing)
            for field in ("estimate", "se", "ci_lower", "ci_upper", "p_value", "q", "i2", "tau2"):
                assert row[field] == pytest.approx(ref[field], abs=TOL, rel=TOL), (comparison, outcome, key, field)
            if method != "FE":
                assert (row["pi_lower"], row["pi_upper"]) == pytest.approx((ref["pi_lower"], ref["pi_upper"]), abs=TOL)
    assert 0 < pairs < len(FITS)
    het = heterogeneity_table(site_estimates(collected.accepted))
    one = het[(het["comparison"] == "tacrolimus_vs_CTX") & (het["outcome"] == "resp_relapse")]
    assert (one["z_residual"] ** 2).sum() == pytest.approx(one["q"].iloc[0], rel=1e-12)
    assert one["weight_fe"].sum() == pytest.approx(1) and one["weight_re"].sum() == pytest.approx(1)


def test_a_site_with_another_contract_is_reported_not_pooled(tmp_path):
    exchange, _, _ = network(tmp_path)
    publish(exchange, "north")
    publish(exchange, "central")
    publish(exchange, "south", terms=contract_terms(RuleParams(followup_days=730)))
    collected = collect_packages(exchange, SITE_KEYS, DIGEST)
    assert set(collected.accepted) == {"north", "central"}
    code, reason = collected.rejected["aggregates/south.json"]
    assert code == "contract_digest" and "expected" in reason
    table = meta_table(site_estimates(collected.accepted))
    assert table["k"].max() == 2 and all(set(s.split(",")) <= {"central", "north"} for s in table["sites"] if s)
    main = table[table["comparison"] == "tacrolimus_vs_conventional"]
    assert (main["k"] == 2).all() and main["note"].isna().all()


def test_a_site_cut_off_at_another_date_is_reported_when_the_consortium_names_one(tmp_path):
    exchange, _, _ = network(tmp_path)
    for s in SITES:
        publish(exchange, s)  # cut off at 2026-01-01
    assert not collect_packages(exchange, SITE_KEYS, DIGEST).rejected  # the consortium names no cut-off
    collected = collect_packages(exchange, SITE_KEYS, DIGEST, data_cutoff=date(2025, 7, 1))
    assert not collected.accepted and {code for code, _ in collected.rejected.values()} == {"data_cutoff"}
    assert "2025-07-01" in collected.rejected["aggregates/north.json"][1]
    keys = tmp_path / "consortium.yaml"
    pem = "coordinator: |\n  " + public_pem(SIGNERS[COORDINATOR].key).replace("\n", "\n  ") + "\nsites: {}\n"
    keys.write_text(pem + "data_cutoff: 2025-07-01\n")
    assert load_consortium(keys).data_cutoff == date(2025, 7, 1)
    keys.write_text(pem + "data_cutoff: pt-000123\n")
    with pytest.raises(ConsortiumError, match="data_cutoff must be a date"):
        load_consortium(keys)


# ---- the exchange ---------------------------------------------------------------------------------------------

def test_local_exchange_is_write_once_and_keeps_names_inside_its_root(tmp_path):
    ex = exchange_from_url(str(tmp_path / "x"))
    ex.put("a/b.json", b"1")
    assert ex.get("a/b.json") == b"1" and ex.list() == ["a/b.json"] and ex.list("a") == ["a/b.json"]
    with pytest.raises(ExchangeError, match="write-once"):
        ex.put("a/b.json", b"2")
    ex.put("a/b.json", b"2", overwrite=True)
    assert ex.get("a/b.json") == b"2"
    for bad in ("../up.json", "/abs.json", "a/../../b", "a//b", ""):
        with pytest.raises(ExchangeError):
            ex.put(bad, b"x")
    assert isinstance(exchange_from_url(f"file://{tmp_path / 'y'}"), LocalDirectoryExchange)


def test_fsspec_exchange_creates_the_folders_a_file_system_needs(tmp_path):
    """Unlike an object store, a file system (file://, sftp://) needs a name's parent folders before a write."""
    ex = FsspecExchange(f"file://{tmp_path / 'exchange'}")
    ex.put("sessions/s/round-001/request.json", b"r")
    ex.put("aggregates/north.json", b"n")
    assert (tmp_path / "exchange" / "sessions" / "s" / "round-001" / "request.json").read_bytes() == b"r"
    assert ex.list() == ["aggregates/north.json", "sessions/s/round-001/request.json"]
    assert ex.get("aggregates/north.json") == b"n"


def test_fsspec_exchange_has_the_same_behaviour(tmp_path):
    ex = exchange_from_url("memory://federation-test")
    assert isinstance(ex, FsspecExchange)
    ex.put("sessions/s/round-001/request.json", b"r")
    ex.put("aggregates/north.json", b"n")
    assert ex.list("aggregates") == ["aggregates/north.json"]
    assert ex.list() == ["aggregates/north.json", "sessions/s/round-001/request.json"]
    assert ex.get("aggregates/north.json") == b"n" and ex.exists("aggregates/north.json")
    with pytest.raises(ExchangeError, match="write-once"):
        ex.put("aggregates/north.json", b"again")


# ---- what a reply may reveal (review of issue 18, F1) -------------------------------------------------------

def _request(session: str, sites: list[str], fits=FITS[:1], round_: int = 1) -> dict:
    return {"schema_version": SCHEMA_VERSION, "kind": "round_request", "session_id": session, "round": round_,
            "contract_digest": DIGEST, "sites": sites, "reveals": "terms",
            "items": [{"fit_id": f"{c}.{o}", "comparison": c, "outcome": o, "ask": "terms", "beta": [0.0]} for c, o in fits]}


def test_a_site_refuses_a_request_naming_fewer_than_two_sites(tmp_path):
    """Terms summed over one site are that site's own likelihood: a one-site "pool" is its estimate."""
    exchange, _, sites = network(tmp_path)
    exchange.put(request_name("solo", 1), canonical_bytes(SIGNERS[COORDINATOR].sign(_request("solo", ["north"]))))
    handled = sites["north"].handle_pending()
    assert [(h.outcome, h.code) for h in handled] == [("refused", "too_few_sites")]
    reply = parse(exchange.get(reply_name("solo", 1, "north")))["payload"]
    assert reply["refused"] == {"code": "too_few_sites", "limit": 2} and reply["answers"] == []
    exchange.put(request_name("twice", 1), canonical_bytes(SIGNERS[COORDINATOR].sign(_request("twice", ["north", "north"]))))
    with pytest.raises(Exception, match="non-unique|unique"):   # the schema refuses a site named twice
        verify_document(exchange.get(request_name("twice", 1)), "round_request", {COORDINATOR: SIGNERS[COORDINATOR].key.public_key()})


def test_a_site_refuses_a_request_naming_a_site_outside_the_key_list(tmp_path):
    """A made-up second name would turn a one-site "pool" into two on paper: the site checks the names against
    its own copy of the key list."""
    exchange, _, sites = network(tmp_path)
    exchange.put(request_name("puppet", 1), canonical_bytes(SIGNERS[COORDINATOR].sign(_request("puppet", ["central", "sockpuppet"]))))
    exchange.put(request_name("real", 1), canonical_bytes(SIGNERS[COORDINATOR].sign(_request("real", ["central", "south"]))))
    handled = {h.request: (h.outcome, h.code) for h in sites["central"].handle_pending()}
    assert handled == {request_name("puppet", 1): ("refused", "unknown_site"), request_name("real", 1): ("answered", None)}
    reply = parse(exchange.get(reply_name("puppet", 1, "central")))["payload"]
    assert reply["refused"] == {"code": "unknown_site", "limit": None} and reply["answers"] == []


def test_a_site_does_not_send_terms_for_a_fit_whose_own_estimate_its_package_withholds(tmp_path):
    exchange, _, sites = network(tmp_path)
    fits = [("tacrolimus_vs_CTX", "death"), ("tacrolimus_vs_conventional", "death")]
    exchange.put(request_name("w", 1), canonical_bytes(SIGNERS[COORDINATOR].sign(_request("w", list(SITES), fits))))
    handled = sites["central"].handle_pending()[0]
    reply = parse(exchange.get(reply_name("w", 1, "central")))["payload"]
    assert reply["refused"] is None
    assert reply["answers"][0] == {"fit_id": "tacrolimus_vs_CTX.death", "ask": "terms", "terms": None, "meat": None,
                                   "refused": {"code": "withheld", "limit": None}}
    assert reply["answers"][1]["refused"] is None and set(reply["answers"][1]["terms"]) == {"loglik", "score", "information"}
    assert list(handled.sent) == ["tacrolimus_vs_conventional.death"]
    assert handled.not_answered == {"tacrolimus_vs_CTX.death": "this site's package withholds its own estimate (events_withheld)"}
    # The package of the same site withholds the same estimate (one rule).
    package = build_site_package("central", site_tables("central"), terms=contract_terms(), concepts=load_concept_map(),
                                 data_cutoff=date(2026, 1, 1))
    assert package["comparisons"]["tacrolimus_vs_CTX"]["outcomes"]["death"]["estimate"] is None


def test_a_site_withholding_a_fit_after_round_one_restarts_that_fit_from_zero_without_it(tmp_path):
    """Its terms are already in the fit's Newton path: the fit starts again at beta = 0 on the other sites, so the
    estimate is R's on exactly their rows; the other fits go on with all three sites."""
    exchange, coordinator, sites = network(tmp_path)
    fits = [("tacrolimus_vs_conventional", "death"), ("tacrolimus_vs_conventional", "relapse")]
    coordinator.start("late", list(SITES), fits)
    for site in sites.values():
        site.handle_pending()
    assert coordinator.poll("late")["round"] == 2
    sites["central"]._withheld = {("tacrolimus_vs_conventional", "death"): "events_withheld"}  # as if its data changed
    state = coordinator.poll("late")
    for _ in range(30):
        for site in sites.values():
            site.handle_pending()
        state = coordinator.poll("late")
        if state["status"] != "running":
            break
    assert state["status"] == "done"
    round3 = parse(exchange.get(request_name("late", 3)))["payload"]
    assert [i["beta"] for i in round3["items"] if i["fit_id"] == "tacrolimus_vs_conventional.death"] == [[0.0]]
    result = parse(exchange.get(result_name("late")))["payload"]
    death, relapse = result["fits"]["tacrolimus_vs_conventional.death"], result["fits"]["tacrolimus_vs_conventional.relapse"]
    assert death["sites"] == ["north", "south"] and death["left_out"] == {"central": "withheld"}
    ref = REF["comparisons"]["tacrolimus_vs_conventional"]["outcomes"]["death"]["pooled_of_pairs"]["north,south"]
    for key in ("coef", "robust_se", "se", "p_value", "loglik"):
        assert death["result"][key] == pytest.approx(ref[key], abs=TOL, rel=TOL), key
    assert death["result"]["iterations"] == ref["iterations"]
    full = REF["comparisons"]["tacrolimus_vs_conventional"]["outcomes"]["relapse"]["pooled"]
    assert relapse["sites"] == sorted(SITES) and relapse["result"]["coef"] == pytest.approx(full["coef"], abs=TOL)


def test_a_site_left_out_for_another_contract_after_round_one_restarts_every_fit_from_zero(tmp_path):
    exchange, coordinator, sites = network(tmp_path)
    coordinator.start("switch", list(SITES), FITS[:1])
    for site in sites.values():
        site.handle_pending()
    assert coordinator.poll("switch")["round"] == 2
    sites["central"].digest = contract_digest(contract_terms(RuleParams(followup_days=730)))
    for _ in range(30):
        for site in sites.values():
            site.handle_pending()
        state = coordinator.poll("switch")
        if state["status"] != "running":
            break
    assert state["status"] == "done" and list(state["left_out"]) == ["central"]
    assert "replied to round 2 under another contract" in state["left_out"]["central"]
    assert parse(exchange.get(request_name("switch", 3)))["payload"]["items"][0]["beta"] == [0.0]
    fit = parse(exchange.get(result_name("switch")))["payload"]["fits"]["tacrolimus_vs_conventional.death"]
    ref = REF["comparisons"]["tacrolimus_vs_conventional"]["outcomes"]["death"]["pooled_of_pairs"]["north,south"]
    assert fit["sites"] == ["north", "south"] and fit["result"]["coef"] == pytest.approx(ref["coef"], abs=TOL, rel=TOL)
    assert fit["result"]["robust_se"] == pytest.approx(ref["robust_se"], abs=TOL, rel=TOL)


def test_a_reply_bound_to_another_request_fails_the_session(tmp_path):
    exchange, coordinator, sites = network(tmp_path)
    coordinator.start("bound", list(SITES), FITS[:1])
    for site in sites.values():
        site.handle_pending()
    forged = parse(exchange.get(reply_name("bound", 1, "north")))["payload"]
    forged["request_sha256"] = "0" * 64   # signed by north, but answering another request
    exchange.put(reply_name("bound", 1, "north"), canonical_bytes(SIGNERS["north"].sign(forged)), overwrite=True)
    state = coordinator.poll("bound")
    assert state["status"] == "failed"
    assert state["reason"] == "the reply of north answers another request (session, round or request digest)"


def test_a_site_rejects_a_request_whose_session_or_round_is_not_its_name(tmp_path):
    exchange, _, sites = network(tmp_path)
    exchange.put(request_name("named", 2), canonical_bytes(SIGNERS[COORDINATOR].sign(_request("named", list(SITES)))))
    handled = sites["north"].handle_pending()
    assert [(h.outcome, h.reason) for h in handled] == [("rejected", "the request's session or round does not match its name")]
    assert not exchange.exists(reply_name("named", 2, "north"))


def test_out_of_newton_rounds_a_fit_is_reported_like_r_with_a_warning(tmp_path):
    """coxph(..., control = coxph.control(iter.max = 1)) warns "Ran out of iterations and did not converge" and
    reports the last beta: the coordinator with max_iter = 1 reports the same numbers, flagged, not an error."""
    exchange = LocalDirectoryExchange(tmp_path / "exchange")
    coordinator = Coordinator(exchange, SIGNERS[COORDINATOR], SITE_KEYS, DIGEST, tmp_path / "coordinator", max_iter=1)
    sites = {s: SiteNode(s, exchange, SIGNERS[s], SIGNERS[COORDINATOR].key.public_key(), DIGEST, site_tables(s),
                         tmp_path / f"ledger-{s}") for s in SITES}
    fit_id = "tacrolimus_vs_conventional.death"
    state = run(coordinator, sites, "capped-newton", fits=[("tacrolimus_vs_conventional", "death")])
    assert state["status"] == "done"
    got = state["fits"][fit_id]["result"]
    ref = REF["comparisons"]["tacrolimus_vs_conventional"]["outcomes"]["death"]["pooled_iter_max_1"]
    for key in ("coef", "robust_se", "se", "p_value", "loglik"):
        assert got[key] == pytest.approx(ref[key], abs=TOL, rel=TOL), key
    assert got["iterations"] == ref["iterations"] == 2 and got["warning"] == "max_iter"
    full = run(*network(tmp_path / "full")[1:], "full", fits=[("tacrolimus_vs_conventional", "death")])
    assert full["fits"][fit_id]["result"]["warning"] is None


def test_a_coefficient_that_may_be_infinite_is_flagged(tmp_path):
    """No tacrolimus patient dies at any site: the log HR runs off to minus infinity and R warns that the
    coefficient may be infinite; the pooled result says so."""
    def no_treated_deaths(site):
        t = site_tables(site)
        cohort = t.cohort.copy()
        cohort.loc[cohort["group"].eq("tacrolimus"), "death_event"] = 0
        return type(t)(cohort, t.cohort_attrition, t.iptw_weights, t.covariate_balance)

    exchange, coordinator, _ = network(tmp_path)
    sites = {s: SiteNode(s, exchange, SIGNERS[s], SIGNERS[COORDINATOR].key.public_key(), DIGEST, no_treated_deaths(s),
                         tmp_path / f"ledger-{s}") for s in SITES}
    state = run(coordinator, sites, "infinite", fits=[("tacrolimus_vs_conventional", "death")])
    got = state["fits"]["tacrolimus_vs_conventional.death"]["result"]
    assert got["warning"] == "possibly_infinite" and got["coef"] < -5
