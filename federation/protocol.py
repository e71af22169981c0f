"""The round-based protocol that fits the exact pooled stratified IPTW Cox model (analytics/pooling).

A session fits one model per comparison × outcome ("fit"). Each round the coordinator writes one signed
request naming, per fit, what it asks and at which beta; each site verifies it, checks its own policy (a
cap on rounds, a minimum arm size, a data engineer's approval), and writes one signed reply with, per fit,
only the sums of its own stratum:

- ``terms`` (Newton rounds): the stratum's log partial likelihood, score and information at beta;
- ``meat`` (the last round of a fit): the sum over its patients of (w_i U_i)(w_i U_i)' at the estimate.

The coordinator adds the replies up, takes coxfit6's next step (analytics/pooling/stratified_cox.py), and
writes the next request, until every fit has its estimate and robust variance; then it writes the signed
result. A site may refuse a round or a fit, with a reason code (schema.REFUSALS; the words stay in the site's own
run log): the fit then stops, reported, and is not pooled.

What a reply reveals, and to whom. Every party that can read the exchange reads every reply, and one site's
terms at a few betas are a few Newton steps on its own likelihood: they approximate its own estimate. So a
site answers ``withheld`` instead of terms for a fit whose own estimate its package withholds
(package.withheld_estimate, the one rule), and refuses a request naming fewer than MIN_SITES sites. The
coordinator leaves a withholding site out of that fit only: the fit is pooled from the others if at least
MIN_SITES remain (restarted from beta = 0 if their terms were already in its Newton path), else not pooled.

Who is pooled. A session pools at least MIN_SITES sites. Sites without an accepted package (another contract,
a rejected or missing package) are left out when the session starts, named with the reason; a site that
replies under another contract is left out then, and the fits still running restart from beta = 0 without
it, so each pooled estimate is the model on exactly the rows of the sites it names. A site that does not
reply within the round deadline ends the fits still waiting, not pooled, naming it: dropping it mid-Newton
would pool a model whose early steps used its stratum.

Documents, in the exchange (federation/exchange.py):
    sessions/<session>/round-<NNN>/request.json        signed by the coordinator
    sessions/<session>/round-<NNN>/reply-<site>.json   signed by the site
    sessions/<session>/result.json                     signed by the coordinator
Each side keeps its own state outside the exchange (the coordinator its Newton states, a site its ledger of
rounds answered), so nothing in the shared folder can make a site forget how many rounds it has answered.
One module on purpose: request, reply, ledger and coordinator loop are one protocol and read together.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from analytics.comparisons import OUTCOMES, RETROSPECTIVE_COMPARISONS
from analytics.cox import CoxConvergenceError
from analytics.pooling.stratified_cox import (
    MAX_ITER,
    NewtonState,
    StratumTerms,
    newton_start,
    newton_update,
    pooled_fit,
    possibly_infinite,
    site_meat,
    site_terms,
)

from .canonical import canonical_bytes
from .exchange import Exchange, ExchangeError
from .package import SiteTables, withheld_estimates
from .schema import FIT_REFUSALS, REFUSALS, SCHEMA_VERSION
from .signing import Signer
from .site import SiteDataError, comparison_rows, outcome_rows
from .suppression import DEFAULT_THRESHOLD
from .verify import PackageRejected, verify_document

COORDINATOR = "coordinator"
REVEALS = {
    "terms": "terms: for each fit, your stratum's log partial likelihood, score and information at the stated beta "
             "(3 numbers with the one coefficient, treatment). They are weighted sums over your risk sets; no count, "
             "time or patient row is sent, but many rounds at chosen betas describe your risk sets more and more "
             "closely, which is why you cap the rounds. Whoever can read the exchange reads them: the coordinator, "
             "and the other sites unless the exchange's permissions keep them out.",
    "meat": "meat: for each fit, the sum over your patients of their squared weighted score residuals at the final "
            "beta (1 number with one coefficient), for the pooled robust variance.",
}
DEFAULT_FITS = tuple((c, o) for c in RETROSPECTIVE_COMPARISONS for o in OUTCOMES)
MIN_SITES = 2                      # one site's stratum alone is that site's own estimate, not a pooled one
DEFAULT_ROUND_DEADLINE_HOURS = 72.0
_REQUEST = re.compile(r"^sessions/([A-Za-z0-9_.-]+)/round-(\d{3})/request\.json$")


def request_name(session: str, round_: int) -> str:
    return f"sessions/{session}/round-{round_:03d}/request.json"


def reply_name(session: str, round_: int, site: str) -> str:
    return f"sessions/{session}/round-{round_:03d}/reply-{site}.json"


def result_name(session: str) -> str:
    return f"sessions/{session}/result.json"


def reveals(items: Sequence[Mapping[str, Any]]) -> str:
    """What a request will learn, in words, for the site's data engineer (shown before it is answered)."""
    asks = sorted({i["ask"] for i in items})
    fits = ", ".join(i["fit_id"] for i in items)
    return " ".join(REVEALS[a] for a in asks) + f" Fits: {fits}."


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _left_out_text(left_out: Mapping[str, str]) -> str:
    return "; ".join(f"{site}: {reason}" for site, reason in sorted(left_out.items()))


def refusal_text(refused: Mapping[str, Any]) -> str:
    """A reply's refusal in words, from its code (and the site's policy limit): nothing the site wrote."""
    limit = f" (limit {refused['limit']})" if refused.get("limit") is not None else ""
    return f"{refused['code']}{limit}: {REFUSALS[refused['code']]}"


def _refusal(code: str, limit: int | None = None) -> dict[str, Any]:
    if code not in REFUSALS:
        raise ValueError(f"not a refusal code: {code!r}")
    return {"code": code, "limit": limit}


# ---- coordinator ---------------------------------------------------------------------------------------------

class Coordinator:
    """Runs sessions: writes requests, verifies replies, keeps each fit's Newton state in ``state_dir``."""

    def __init__(self, exchange: Exchange, signer: Signer, site_keys: Mapping[str, Ed25519PublicKey], contract_digest: str,
                 state_dir: str | Path, *, max_iter: int = MAX_ITER,
                 round_deadline_hours: float = DEFAULT_ROUND_DEADLINE_HOURS, clock: Callable[[], datetime] = utc_now):
        """``round_deadline_hours``: how long a round waits for every site (a session may set its own);
        ``clock``: the time now, timezone-aware (injectable so the deadline can be tested)."""
        if signer.party != COORDINATOR:
            raise ValueError(f"the coordinator signs as {COORDINATOR!r}, not {signer.party!r}")
        if not round_deadline_hours > 0:
            raise ValueError(f"the round deadline must be positive, not {round_deadline_hours!r} hours")
        self.exchange, self.signer, self.site_keys = exchange, signer, dict(site_keys)
        self.digest, self.max_iter = contract_digest, max_iter
        self.round_deadline_hours, self.clock = float(round_deadline_hours), clock
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def _state_path(self, session: str) -> Path:
        if not re.match(r"^[A-Za-z0-9_.-]{1,80}$", session):
            raise ValueError(f"not a valid session id: {session!r}")
        return self.state_dir / f"{session}.json"

    def sessions(self) -> list[str]:
        return sorted(p.stem for p in self.state_dir.glob("*.json"))

    def state(self, session: str) -> dict[str, Any]:
        return json.loads(self._state_path(session).read_text())

    def _save(self, state: dict[str, Any]) -> None:
        path = self._state_path(state["session_id"])
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(path)

    def start(self, session: str, sites: Sequence[str], fits: Sequence[tuple[str, str]] = DEFAULT_FITS, *,
              left_out: Mapping[str, str] | None = None, round_deadline_hours: float | None = None) -> dict[str, Any]:
        """Open a session over ``sites`` and write its first request (every fit's terms at beta = 0).

        ``left_out``: sites named in ``sites`` that are not asked, with the reason (no accepted package: see
        aggregate.unpooled_sites); they are reported in the state and the result. With fewer than MIN_SITES
        left, the session ends at once, every fit not pooled, and no request is written."""
        if self._state_path(session).exists():
            raise ValueError(f"session {session!r} exists")
        unknown = [s for s in sites if s not in self.site_keys]
        if unknown or not sites:
            raise ValueError(f"no public key for sites {unknown}" if unknown else "a session needs at least one site")
        deadline = self.round_deadline_hours if round_deadline_hours is None else float(round_deadline_hours)
        if not deadline > 0:
            raise ValueError(f"the round deadline must be positive, not {round_deadline_hours!r} hours")
        left = {s: r for s, r in (left_out or {}).items() if s in sites}
        state = {"session_id": session, "started_at": self.clock().isoformat(),
                 "sites": [s for s in sites if s not in left], "left_out": left, "round": 1,
                 "status": "running", "reason": None, "round_deadline_hours": deadline, "round_started_at": None,
                 "fits": {f"{c}.{o}": {"comparison": c, "outcome": o, "phase": "terms", "newton": newton_start(1).to_dict(),
                                       "result": None, "reason": None, "sites": None, "left_out": {}} for c, o in fits}}
        if len(state["sites"]) < MIN_SITES:
            state["round"] = 0   # no request was written
            return self._fail(state, self._too_few(state))
        self._write_request(state)
        self._save(state)
        return state

    @staticmethod
    def _too_few(state: Mapping[str, Any]) -> str:
        remaining = ", ".join(state["sites"]) or "none"
        return (f"fewer than {MIN_SITES} sites to pool (remaining: {remaining}; left out: "
                f"{_left_out_text(state['left_out'])})")

    def _items(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        items = []
        for fit_id, f in state["fits"].items():
            if f["phase"] in ("terms", "meat"):
                newton = NewtonState.from_dict(f["newton"])
                beta = newton.proposal if f["phase"] == "terms" else newton.beta
                items.append({"fit_id": fit_id, "comparison": f["comparison"], "outcome": f["outcome"], "ask": f["phase"],
                              "beta": [float(b) for b in beta]})
        return items

    def _write_request(self, state: dict[str, Any]) -> None:
        items = self._items(state)
        payload = {"schema_version": SCHEMA_VERSION, "kind": "round_request", "session_id": state["session_id"],
                   "round": state["round"], "contract_digest": self.digest, "sites": state["sites"],
                   "reveals": reveals(items), "items": items}
        self.exchange.put(request_name(state["session_id"], state["round"]), canonical_bytes(self.signer.sign(payload)))
        state["round_started_at"] = self.clock().isoformat()

    def _fail(self, state: dict[str, Any], reason: str) -> dict[str, Any]:
        state["status"], state["reason"] = "failed", reason
        for f in state["fits"].values():
            if f["phase"] in ("terms", "meat"):
                f["phase"], f["reason"] = "failed", reason
        self._write_result(state)
        self._save(state)
        return state

    def _write_result(self, state: dict[str, Any]) -> None:
        """The signed outcome of every fit (pooled, or not and why), for pooled_effects and for the sites."""
        result = {"schema_version": SCHEMA_VERSION, "kind": "pooled_result", "session_id": state["session_id"],
                  "contract_digest": self.digest, "sites": state["sites"], "left_out": state.get("left_out", {}),
                  "rounds": state["round"],
                  "fits": {k: {"comparison": f["comparison"], "outcome": f["outcome"], "result": f["result"],
                               "reason": f["reason"], "sites": f.get("sites") or _fit_sites(state, f),
                               "left_out": f.get("left_out", {})}
                           for k, f in state["fits"].items()}}
        self.exchange.put(result_name(state["session_id"]), canonical_bytes(self.signer.sign(result)))

    def waiting_for(self, session: str) -> list[str]:
        state = self.state(session)
        if state["status"] != "running":
            return []
        return [s for s in state["sites"] if not self.exchange.exists(reply_name(session, state["round"], s))]

    def deadline(self, session: str) -> datetime | None:
        """When the current round stops waiting (None: the session is not running)."""
        state = self.state(session)
        if state["status"] != "running" or not state.get("round_started_at"):  # see poll: a session begun before
            return None                                                        # deadlines gets one at its next poll
        hours = state.get("round_deadline_hours", self.round_deadline_hours)
        return datetime.fromisoformat(state["round_started_at"]) + timedelta(hours=hours)

    def overdue(self, session: str) -> list[str]:
        """The sites that have not replied to the current round by its deadline (empty: none, or not yet due)."""
        due = self.deadline(session)
        return self.waiting_for(session) if due is not None and self.clock() >= due else []

    def poll(self, session: str) -> dict[str, Any]:
        """If every site has replied to the current round: verify the replies, advance each fit, and write the
        next request (or the result). Past the round's deadline, end the session with the sites that did not
        reply named. Returns the session state."""
        state = self.state(session)
        if state["status"] != "running":
            return state
        waiting = self.waiting_for(session)
        if waiting and not state.get("round_started_at"):
            # A session begun before rounds had deadlines: its current round's deadline counts from now.
            state["round_started_at"] = self.clock().isoformat()
            self._save(state)
            return state
        if waiting:
            if self.overdue(session):
                hours = state.get("round_deadline_hours", self.round_deadline_hours)
                return self._fail(state, f"no reply to round {state['round']} within {hours:g} h from "
                                         f"{', '.join(waiting)}: not pooled")
            return state
        round_ = state["round"]
        request_sha = _sha256(self.exchange.get(request_name(session, round_)))
        answers: dict[str, dict[str, dict[str, Any]]] = {}
        other_contract: dict[str, str] = {}
        for site in state["sites"]:
            try:
                reply = verify_document(self.exchange.get(reply_name(session, round_, site)), "round_reply", self.site_keys,
                                        expected_signer=site, expected_digest=self.digest)
            except PackageRejected as exc:
                if exc.code == "contract_digest":
                    other_contract[site] = f"replied to round {round_} under another contract ({exc.reason})"
                    continue
                return self._fail(state, f"the reply of {site} to round {round_} was rejected: {exc}")
            if (reply["session_id"], reply["round"], reply["request_sha256"]) != (session, round_, request_sha):
                return self._fail(state, f"the reply of {site} answers another request (session, round or request digest)")
            if reply["refused"]:
                return self._fail(state, f"{site} refused round {round_}: {refusal_text(reply['refused'])}")
            answers[site] = {a["fit_id"]: a for a in reply["answers"]}
        if other_contract:
            return self._leave_out(state, other_contract)
        for item in self._items(state):
            self._advance(state, state["fits"][item["fit_id"]], item, answers)
        self._next(state)
        return state

    def _next(self, state: dict[str, Any]) -> None:
        if any(f["phase"] in ("terms", "meat") for f in state["fits"].values()):
            state["round"] += 1
            self._write_request(state)
        else:
            state["status"] = "done"
            self._write_result(state)
        self._save(state)

    def _leave_out(self, state: dict[str, Any], sites: Mapping[str, str]) -> dict[str, Any]:
        """Leave out sites that work under another contract, and restart every running fit from beta = 0 without
        them: a Newton path begun on their strata is not the path of the model without them."""
        state["left_out"] = {**state["left_out"], **sites}
        state["sites"] = [s for s in state["sites"] if s not in sites]
        if len(state["sites"]) < MIN_SITES:
            return self._fail(state, self._too_few(state))
        for f in state["fits"].values():
            if f["phase"] in ("terms", "meat"):
                f["phase"], f["newton"] = "terms", newton_start(1).to_dict()
                f["left_out"] = {s: r for s, r in f.get("left_out", {}).items() if s in state["sites"]}
                if len(_fit_sites(state, f)) < MIN_SITES:
                    f["phase"], f["reason"] = "failed", _too_few_for_fit(state, f)
        self._next(state)
        return state

    def _advance(self, state: Mapping[str, Any], fit: dict[str, Any], item: Mapping[str, Any],
                 answers: Mapping[str, Mapping[str, Any]]) -> None:
        fit_id = item["fit_id"]
        fit.setdefault("left_out", {})
        got, withheld = {}, []
        for site, by_fit in answers.items():
            if site in fit["left_out"]:
                continue   # withholds its own estimate of this fit: not asked to count in it
            a = by_fit.get(fit_id)
            if a is None or a["ask"] != item["ask"]:
                fit["phase"], fit["reason"] = "failed", f"{site} did not answer {item['ask']} for {fit_id}"
                return
            if a["refused"] and a["refused"]["code"] == "withheld":
                withheld.append(site)
            elif a["refused"]:
                fit["phase"], fit["reason"] = "failed", f"{site} refused: {refusal_text(a['refused'])}"
                return
            else:
                got[site] = a
        if withheld:
            fresh = item["ask"] == "terms" and NewtonState.from_dict(fit["newton"]).iteration == -1  # nothing summed yet
            fit["left_out"].update({s: "withheld" for s in withheld})
            if len(got) < MIN_SITES:
                fit["phase"], fit["reason"] = "failed", _too_few_for_fit(state, fit)
                return
            if not fresh:  # the left-out sites' terms are in this Newton path: start it again without them
                fit["phase"], fit["newton"] = "terms", newton_start(1).to_dict()
                return
        newton = NewtonState.from_dict(fit["newton"])
        try:
            if item["ask"] == "terms":
                newton = newton_update(newton, [StratumTerms.from_dict(a["terms"]) for a in got.values()], max_iter=self.max_iter)
                fit["newton"] = newton.to_dict()
                if newton.done:
                    fit["phase"] = "meat"
            else:
                cox = pooled_fit(newton, [np.asarray(a["meat"], dtype=float) for a in got.values()])
                warning = ("max_iter" if newton.status == "max_iter"
                           else "possibly_infinite" if possibly_infinite(newton) else None)   # R's two warnings
                fit["result"] = {**cox.summary()[0], "se": float(np.sqrt(cox.naive_var[0, 0])), "loglik": cox.loglik,
                                 "iterations": cox.iterations, "n_sites": len(got), "warning": warning}
                fit["phase"], fit["sites"] = "done", sorted(got)
        except (CoxConvergenceError, ValueError, np.linalg.LinAlgError) as exc:
            fit["phase"], fit["reason"] = "failed", f"{type(exc).__name__}: {exc}"


def _fit_sites(state: Mapping[str, Any], fit: Mapping[str, Any]) -> list[str]:
    return [s for s in state["sites"] if s not in fit.get("left_out", {})]


def _too_few_for_fit(state: Mapping[str, Any], fit: Mapping[str, Any]) -> str:
    withholding = ", ".join(sorted(fit.get("left_out", {}))) or "none"
    return (f"fewer than {MIN_SITES} sites to pool (remaining: {', '.join(_fit_sites(state, fit)) or 'none'}; "
            f"withholding their own estimate of this fit: {withholding})")


# ---- site ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SitePolicy:
    """What a site agrees to answer. ``approve`` is the data engineer's gate: given the verified request, a
    reason to refuse it, or None to answer.

    The caps bound what a coordinator can learn by asking: rounds per session (one fit's Newton path),
    evaluations per session (fits × rounds: one request can carry many fits), and sessions per rolling window
    (a coordinator could otherwise open sessions without end). All are counted from the site's own ledger,
    which lives outside the exchange."""

    max_rounds: int = MAX_ITER + 5        # per session: coxph needs at most 21 likelihood rounds and 1 variance round
    min_arm: int = 5                      # refuse a fit whose smaller arm has fewer patients (the suppression threshold)
    suppression_threshold: int = DEFAULT_THRESHOLD   # its package's: a fit whose estimate the package withholds is withheld
    approve: Callable[[Mapping[str, Any]], str | None] | None = None
    max_evaluations: int = 300            # fits × rounds per session: 12 fits (every comparison × outcome) × 25 rounds
    max_sessions: int = 5                 # sessions answered per window
    session_window_days: float = 30.0


@dataclass
class Handled:
    """What a site did with one request, for its data engineer (the Dagster run shows this)."""

    request: str
    outcome: str                          # answered | refused | rejected | not_for_us | already_answered
    reason: str | None = None             # in words, for the site's own run log (the reply carries only ``code``)
    reveals: str | None = None
    sent: dict[str, Any] = field(default_factory=dict)   # fit_id -> the numbers that left the site
    code: str | None = None               # the refusal code the reply carries (schema.REFUSALS)
    not_answered: dict[str, str] = field(default_factory=dict)   # fit_id -> why, in words (the site's log only)


def read_ledger(ledger_dir: Path, session: str) -> dict[str, Any]:
    path = Path(ledger_dir) / f"{session}.json"
    return json.loads(path.read_text()) if path.exists() else {"session_id": session, "rounds": {}}


def _answered(ledger: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [r for r in ledger["rounds"].values() if r.get("outcome") == "answered"]


def sessions_answered_since(ledger_dir: Path, since: datetime, *, besides: str) -> list[str]:
    """The sessions (other than ``besides``) this site first answered at or after ``since``. A round recorded
    without a time (an older ledger) counts as recent: a cap errs towards refusing."""
    out = []
    for path in sorted(Path(ledger_dir).glob("*.json")):
        if path.stem == besides:
            continue
        times = [r.get("at") for r in _answered(json.loads(path.read_text()))]
        if times and (None in times or min(datetime.fromisoformat(t) for t in times) >= since):
            out.append(path.stem)
    return out


def pending_requests(exchange: Exchange, ledger_dir: str | Path) -> list[str]:
    """Requests in the exchange a site (with this ledger) has not handled yet, oldest first."""
    out = []
    for name in exchange.list("sessions"):
        m = _REQUEST.match(name)
        if m and str(int(m.group(2))) not in read_ledger(Path(ledger_dir), m.group(1))["rounds"]:
            out.append(name)
    return sorted(out, key=lambda n: (n.split("/")[1], n))


def read_request(exchange: Exchange, name: str, coordinator_key: Ed25519PublicKey) -> dict[str, Any]:
    """A request verified as the coordinator's (signature, schema): what a site shows its data engineer before
    answering. Raises PackageRejected."""
    return verify_document(exchange.get(name), "round_request", {COORDINATOR: coordinator_key}, expected_signer=COORDINATOR)


def waiting_message(exchange: Exchange, names: Sequence[str], coordinator_key: Ed25519PublicKey) -> str:
    """Every waiting request with what it would reveal, for a site that answers by hand."""
    lines = [f"{len(names)} request(s) wait for the data engineer (auto_answer is off): launch answer_round_job with "
             "request = <name> and decision = answer or refuse."]
    for name in names:
        try:
            text = read_request(exchange, name, coordinator_key)["reveals"]
        except PackageRejected as exc:
            text = f"not a valid request from the coordinator ({exc.code}): refuse or ignore it"
        lines.append(f"- {name}: {text}")
    return "\n".join(lines)


class SiteNode:
    """One hospital's side of the protocol: answers verified requests from its own tables, within its policy."""

    def __init__(self, site_id: str, exchange: Exchange, signer: Signer, coordinator_key: Ed25519PublicKey,
                 contract_digest: str, tables: SiteTables | Callable[[], SiteTables], ledger_dir: str | Path,
                 policy: SitePolicy = SitePolicy(), clock: Callable[[], datetime] = utc_now,
                 consortium_sites: Collection[str] | None = None):
        """``tables`` may be a function that reads them: only a request that is answered needs them. ``clock``:
        the time now, timezone-aware (the session cap's window; injectable for tests). ``consortium_sites``: the
        site ids of the key list. Without it the site can count the names a request gives but not tell a real
        site from a name the coordinator made up, so the two-site rule would rest on the coordinator's word."""
        if signer.party != site_id:
            raise ValueError(f"the key of {signer.party!r} cannot answer for {site_id!r}")
        self.site_id, self.exchange, self.signer = site_id, exchange, signer
        self.trusted = {COORDINATOR: coordinator_key}
        self.digest, self.policy, self.clock = contract_digest, policy, clock
        self.consortium_sites = None if consortium_sites is None else frozenset(consortium_sites)
        self._tables = tables
        self.ledger_dir = Path(ledger_dir)
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, Any] = {}
        self._withheld: dict[tuple[str, str], str] | None = None

    # The ledger: this site's own record of the requests it has handled, per session.
    def ledger(self, session: str) -> dict[str, Any]:
        return read_ledger(self.ledger_dir, session)

    def _record(self, session: str, round_: int, entry: dict[str, Any]) -> None:
        ledger = self.ledger(session)
        ledger["rounds"][str(round_)] = {**entry, "at": self.clock().isoformat()}
        (self.ledger_dir / f"{session}.json").write_text(json.dumps(ledger, indent=1))

    def pending(self) -> list[str]:
        return pending_requests(self.exchange, self.ledger_dir)

    def handle_pending(self) -> list[Handled]:
        return [self.handle(name) for name in self.pending()]

    def handle(self, name: str) -> Handled:
        m = _REQUEST.match(name)
        if not m:
            return Handled(name, "rejected", "not a request name")
        session, round_ = m.group(1), int(m.group(2))
        if str(round_) in self.ledger(session)["rounds"]:
            return Handled(name, "already_answered")
        data = self.exchange.get(name)
        try:
            request = verify_document(data, "round_request", self.trusted, expected_signer=COORDINATOR)
        except PackageRejected as exc:
            self._record(session, round_, {"outcome": "rejected", "reason": str(exc)})
            return Handled(name, "rejected", str(exc))
        if (request["session_id"], request["round"]) != (session, round_):
            reason = "the request's session or round does not match its name"
            self._record(session, round_, {"outcome": "rejected", "reason": reason})
            return Handled(name, "rejected", reason)
        if self.site_id not in request["sites"]:
            self._record(session, round_, {"outcome": "not_for_us"})
            return Handled(name, "not_for_us")
        refusal, detail = self._refusal(request)
        answers, sent, not_answered = ([], {}, {}) if refusal else self._answers(request["items"])
        reply = {"schema_version": SCHEMA_VERSION, "kind": "round_reply", "session_id": session, "round": round_,
                 "site_id": self.site_id, "contract_digest": self.digest, "request_sha256": _sha256(data),
                 "refused": refusal, "answers": answers}
        try:
            self.exchange.put(reply_name(session, round_, self.site_id), canonical_bytes(self.signer.sign(reply)))
        except ExchangeError:  # a reply is already there (this site's ledger was lost): it counts as answered
            self._record(session, round_, {"outcome": "answered", "reason": "reply found in the exchange",
                                           "asks": [{k: i[k] for k in ("fit_id", "ask", "beta")} for i in request["items"]]})
            return Handled(name, "already_answered", "a reply to this request is already in the exchange")
        outcome = "refused" if refusal else "answered"
        self._record(session, round_, {"outcome": outcome, "reason": detail, "request_sha256": _sha256(data),
                                       "not_answered": not_answered,
                                       "asks": [{k: i[k] for k in ("fit_id", "ask", "beta")} for i in request["items"]]})
        return Handled(name, outcome, detail, request["reveals"], sent, refusal["code"] if refusal else None, not_answered)

    def _refusal(self, request: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """The reply's refusal (a code, a policy limit) and the same in words for the site's own log."""
        if request["contract_digest"] != self.digest:
            return _refusal("other_contract"), (f"this site works under contract {self.digest[:12]}…, the request under "
                                                f"{request['contract_digest'][:12]}…")
        if len(set(request["sites"])) < MIN_SITES:
            return _refusal("too_few_sites", MIN_SITES), (f"the request names {len(set(request['sites']))} site(s): "
                                                          f"terms of fewer than {MIN_SITES} are one site's own estimate")
        if self.consortium_sites is not None and not set(request["sites"]) <= self.consortium_sites:
            return _refusal("unknown_site"), "the request names a site outside the consortium's key list"
        answered = _answered(self.ledger(request["session_id"]))
        if len(answered) >= self.policy.max_rounds:
            return _refusal("round_cap", self.policy.max_rounds), \
                f"round cap reached: this site answers at most {self.policy.max_rounds} rounds per session"
        evaluations = sum(len(r.get("asks", ())) for r in answered) + len(request["items"])
        if evaluations > self.policy.max_evaluations:
            return _refusal("evaluation_cap", self.policy.max_evaluations), (
                f"evaluation cap reached: this request would make {evaluations} fit evaluations in this session; "
                f"this site answers at most {self.policy.max_evaluations} per session")
        if not answered:
            window = timedelta(days=self.policy.session_window_days)
            recent = sessions_answered_since(self.ledger_dir, self.clock() - window, besides=request["session_id"])
            if len(recent) >= self.policy.max_sessions:
                return _refusal("session_cap", self.policy.max_sessions), (
                    f"session cap reached: this site answers at most {self.policy.max_sessions} sessions per "
                    f"{self.policy.session_window_days:g} days ({len(recent)} answered in that window)")
        if self.policy.approve is not None:
            reason = self.policy.approve(request)
            if reason is not None:
                return _refusal("declined"), reason
        return None, None

    @property
    def tables(self) -> SiteTables:
        if callable(self._tables):
            self._tables = self._tables()
        return self._tables

    def _comparison_rows(self, comparison: str):
        if comparison not in self._rows:
            self._rows[comparison] = comparison_rows(self.tables.cohort, self.tables.iptw_weights, comparison)
        return self._rows[comparison]

    def withheld(self) -> dict[tuple[str, str], str]:
        """The fits whose own estimate this site's package withholds (package.withheld_estimates)."""
        if self._withheld is None:
            self._withheld = withheld_estimates(self.tables, self.policy.suppression_threshold)
        return self._withheld

    def _answers(self, items: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, str]]:
        answers, sent, not_answered = [], {}, {}
        for item in items:
            answer: dict[str, Any] = {"fit_id": item["fit_id"], "ask": item["ask"], "terms": None, "meat": None, "refused": None}
            try:
                if len(item["beta"]) != 1:
                    raise _NotAnswered("bad_request", None, "the model has one coefficient (treatment)")
                why = self.withheld().get((item["comparison"], item["outcome"]))
                if why is not None:
                    raise _NotAnswered("withheld", None, f"this site's package withholds its own estimate ({why})")
                rows = self._comparison_rows(item["comparison"])
                if rows.empty:
                    raise _NotAnswered("no_weights", None, "no weights for this comparison at this site "
                                                           "(its propensity model could not be fitted)")
                arms = int(rows["treated"].sum()), int((~rows["treated"]).sum())
                if min(arms) < self.policy.min_arm:
                    raise _NotAnswered("small_arm", self.policy.min_arm,
                                       f"an arm has fewer than {self.policy.min_arm} patients at this site")
                data = outcome_rows(rows, item["outcome"]).arrays()
                if item["ask"] == "terms":
                    terms = site_terms(*data, item["beta"])
                    if not (np.isfinite(terms.loglik) and np.all(np.isfinite(terms.information))):
                        raise _NotAnswered("not_finite", None, f"the likelihood is not finite at beta {item['beta']}")
                    answer["terms"] = terms.to_dict()
                else:
                    answer["meat"] = site_meat(*data, item["beta"]).tolist()
                sent[item["fit_id"]] = answer["terms"] or answer["meat"]
            except _NotAnswered as exc:
                answer["refused"], not_answered[item["fit_id"]] = _refusal(exc.code, exc.limit), exc.detail
            except SiteDataError as exc:  # its message may name the site's values: it stays in the site's log
                answer["refused"], not_answered[item["fit_id"]] = _refusal("site_data_error"), str(exc)
            answers.append(answer)
        return answers, sent, not_answered


class _NotAnswered(Exception):
    def __init__(self, code: str, limit: int | None, detail: str):
        if code not in FIT_REFUSALS:
            raise ValueError(f"not a per-fit refusal code: {code!r}")
        super().__init__(detail)
        self.code, self.limit, self.detail = code, limit, detail
