"""The gateway's core: on-chain requests in, commands out; every skip reason;
max_open; each way a request ends; and a restart (through the real SQLite
store) that neither places twice nor forgets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ledger.zkchain import Requested
from maskd.gateway_core import (
    Cancel,
    Fulfil,
    GatewayCore,
    GatewayRules,
    KnownCircuit,
    Place,
    RequestRecord,
    Save,
    State,
    record_from_json,
    record_json,
)
from maskd.gateway_store import GatewayStore

STATS_ID = "5a" * 32
STATS = KnownCircuit(
    circuit_id=STATS_ID,
    name="private_stats",
    path="/circuits/private_stats",
    n_outputs=3,
    public_inputs=("threshold", "commitment"),
)
RULES = GatewayRules(min_payment=100, max_open=2, fulfil_margin_s=60, min_time_left_s=180)
NOW = 5000.0  # the node's clock (records' updated_at)
T = 1_700_000_000  # chain time
DAPP = "0x" + "da" * 20
PROVIDER = "0x" + "11" * 20
OTHER = "0x" + "22" * 20
CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def event(request_id: int, **change) -> Requested:
    base = dict(
        request_id=request_id,
        requester=DAPP,
        circuit_id=STATS_ID,
        inputs=(5000, 2**250 + 1),
        n_outputs=3,
        input_cid=CID,
        payment=10**18,
        deadline=T + 3600,
        callback=DAPP,
        block_number=10 + request_id,
        tx_hash="0x" + f"{request_id:064x}",
    )
    return Requested(**{**base, **change})


def core(**rules) -> GatewayCore:
    return GatewayCore(replace(RULES, **rules), {STATS_ID: STATS})


def kinds(cmds) -> list[str]:
    return [type(c).__name__ for c in cmds]


def saved(cmds) -> list[RequestRecord]:
    return [c.record for c in cmds if isinstance(c, Save)]


def state(c: GatewayCore, rid: int) -> State:
    return c.get(rid).state


def run_to_placed(c: GatewayCore, rid: int, job: str = "ab" * 32) -> None:
    cmds = c.requested(event(rid), T, NOW)
    assert isinstance(cmds[-1], Place)
    c.placed(rid, job, NOW)


# --- requests in ---------------------------------------------------------------------


def test_a_request_it_can_place_is_saved_then_placed_with_its_time_less_the_margin():
    c = core()
    cmds = c.requested(event(1), T, NOW)
    assert kinds(cmds) == ["Save", "Save", "Place"]
    first, placing = saved(cmds)
    assert (first.state, placing.state) == (State.WAITING, State.PLACING)
    place = cmds[-1]
    assert place.circuit == STATS and place.record == placing and not place.adopt
    assert place.job_deadline_s == 3600 - 60  # the fulfil needs the margin
    assert first.circuit == "private_stats" and first.inputs == (5000, 2**250 + 1)
    assert c.requested(event(1), T, NOW) == []  # read again after a restart: ignored
    assert c.counters["requested_again"] == 1


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        ({"circuit_id": "77" * 32}, "unknown_circuit", "77777777"),
        ({"n_outputs": 2}, "layout_mismatch", "2 outputs"),
        ({"inputs": (1, 2, 3)}, "layout_mismatch", "3 inputs"),
        ({"payment": 99}, "payment_too_low", "below gateway.min_payment 100"),
        ({"deadline": T + 179}, "deadline_too_close", "179 s left"),
        ({"deadline": T - 5}, "deadline_too_close", "0 s left"),
    ],
)
def test_every_request_it_will_not_place_is_recorded_with_its_reason(change, reason, words):
    c = core()
    cmds = c.requested(event(1, **change), T, NOW)
    [record] = saved(cmds)
    assert kinds(cmds) == ["Save"]  # nothing else: no job, no retry
    assert (record.state, record.reason) == (State.SKIPPED, reason)
    assert words in record.detail
    assert c.tick(T + 1, NOW) == []  # and it stays so
    assert c.counters[f"skipped_{reason}"] == 1


def test_at_most_max_open_at_once_the_rest_wait_oldest_first():
    c = core()
    places = []
    for rid in (3, 1, 2):
        places += [cmd for cmd in c.requested(event(rid), T, NOW) if isinstance(cmd, Place)]
    assert [p.record.request_id for p in places] == [3, 1]  # 2 arrived when both were taken
    assert state(c, 2) is State.WAITING and c.open_count() == 2
    assert [x for x in c.tick(T + 1, NOW) if isinstance(x, Place)] == []
    c.placed(3, "aa" * 32, NOW)
    c.place_failed(1, "input_unavailable", "no peer has it", NOW)  # frees a slot
    cmds = c.tick(T + 2, NOW)
    assert [p.record.request_id for p in cmds if isinstance(p, Place)] == [2]


def test_a_request_that_waited_past_its_time_is_not_placed():
    c = core(max_open=1)
    c.requested(event(1), T, NOW)
    c.requested(event(2, deadline=T + 400), T, NOW)
    c.placed(1, "aa" * 32, NOW)
    c.job_ended(1, completed=False, provider="", output_cid="", error="timeout", now=NOW)
    cmds = c.tick(T + 300, NOW)  # 100 s left: under min_time_left_s
    assert not [x for x in cmds if isinstance(x, Place)]
    assert (state(c, 2), c.get(2).reason) == (State.EXPIRED, "deadline_too_close")


# --- a request's life -------------------------------------------------------------------


def test_placed_verified_fulfilled():
    c = core()
    run_to_placed(c, 1, "ab" * 32)
    assert [r.request_id for r in c.placed_jobs()] == [1] and c.get(1).job_id == "ab" * 32
    cmds = c.job_ended(
        1, completed=True, provider=PROVIDER, output_cid="bafyout", error="", now=NOW
    )
    [verified] = saved(cmds)
    assert (verified.state, verified.provider, verified.output_cid) == (
        State.VERIFIED,
        PROVIDER,
        "bafyout",
    )
    [fulfil] = c.tick(T + 10, NOW)
    assert isinstance(fulfil, Fulfil) and fulfil.record == verified
    assert c.tick(T + 11, NOW) == []  # one fulfil at a time
    cmds = c.fulfilled(1, by_us=True, tx_hash="0xfeed", provider=PROVIDER, now=NOW)
    [done] = saved(cmds)
    assert (done.state, done.by_us, done.tx_hash, done.reason) == (
        State.FULFILLED,
        True,
        "0xfeed",
        "",
    )
    # its Fulfilled event, read later, changes nothing
    assert c.fulfilled(1, by_us=False, tx_hash="0xfeed", provider=PROVIDER, now=NOW) == []
    assert c.open_count() == 0


def test_a_failed_job_fails_the_request_with_its_reason_and_is_not_placed_again():
    c = core()
    run_to_placed(c, 1)
    cmds = c.job_ended(
        1, completed=False, provider="", output_cid="", error="deadline_passed: late", now=NOW
    )
    [failed] = saved(cmds)
    assert (failed.state, failed.reason, failed.detail) == (
        State.FAILED,
        "job_failed",
        "deadline_passed: late",
    )
    assert c.tick(T + 10, NOW) == []


def test_an_input_that_cannot_be_read_fails_the_request_once():
    c = core()
    c.requested(event(1), T, NOW)
    cmds = c.place_failed(1, "input_too_large", "over 8388608 bytes", NOW)
    [failed] = saved(cmds)
    assert (failed.state, failed.reason) == (State.FAILED, "input_too_large")
    assert c.place_failed(1, "input_too_large", "again", NOW) == []  # stale
    assert c.tick(T + 1, NOW) == []


def test_a_transient_fulfil_error_is_retried_a_bounded_number_of_times():
    c = core(max_fulfil_attempts=3)
    run_to_placed(c, 1)
    c.job_ended(1, completed=True, provider=PROVIDER, output_cid="bafyout", error="", now=NOW)
    for attempt in (1, 2):
        [fulfil] = c.tick(T + attempt, NOW)
        assert isinstance(fulfil, Fulfil)
        [kept] = saved(c.fulfil_failed(1, "chain_error", "timed out", transient=True, now=NOW))
        assert (kept.state, kept.attempts) == (State.VERIFIED, attempt)
    [fulfil] = c.tick(T + 3, NOW)
    [failed] = saved(c.fulfil_failed(1, "chain_error", "timed out", transient=True, now=NOW))
    assert (failed.state, failed.reason, failed.attempts) == (State.FAILED, "chain_error", 3)


def test_a_refused_fulfil_fails_at_once_with_the_contracts_reason():
    c = core()
    run_to_placed(c, 1)
    c.job_ended(1, completed=True, provider=PROVIDER, output_cid="bafyout", error="", now=NOW)
    c.tick(T + 1, NOW)
    cmds = c.fulfil_failed(1, "binding_mismatch", "BindingMismatch(1, 2)", transient=False, now=NOW)
    assert (saved(cmds)[0].state, saved(cmds)[0].reason) == (State.FAILED, "binding_mismatch")


def test_another_gateway_answering_first_is_recorded_and_our_job_stopped():
    c = core()
    run_to_placed(c, 1, "ab" * 32)
    cmds = c.fulfilled(1, by_us=False, tx_hash="0xbeef", provider=OTHER, now=NOW)
    assert kinds(cmds) == ["Save", "Cancel"]
    assert cmds[1] == Cancel("ab" * 32, "fulfilled_elsewhere")
    done = saved(cmds)[0]
    assert (done.state, done.by_us, done.reason, done.tx_hash) == (
        State.FULFILLED,
        False,
        "fulfilled_elsewhere",
        "0xbeef",
    )
    # a job that still reports its end afterwards changes nothing
    assert (
        c.job_ended(1, completed=True, provider=PROVIDER, output_cid="x", error="", now=NOW) == []
    )


def test_a_fulfilment_found_on_chain_paying_our_provider_counts_as_ours():
    # our fulfil landed, then the daemon died before recording it: after the
    # restart the request's status says fulfilled, and its event names our provider
    c = core()
    run_to_placed(c, 1)
    c.job_ended(1, completed=True, provider=PROVIDER, output_cid="bafyout", error="", now=NOW)
    c.tick(T + 1, NOW)
    [first] = saved(c.fulfilled(1, by_us=False, tx_hash="", provider="", now=NOW))
    assert (first.state, first.by_us) == (State.FULFILLED, False)
    [later] = saved(c.fulfilled(1, by_us=False, tx_hash="0xfeed", provider=PROVIDER, now=NOW))
    assert (later.by_us, later.tx_hash, later.reason) == (True, "0xfeed", "")


def test_past_its_deadline_or_refunded_a_request_expires_and_its_job_is_stopped():
    c = core()
    run_to_placed(c, 1, "ab" * 32)
    c.requested(event(2), T, NOW)  # placing when the deadline passes: expired once placed
    cmds = c.tick(T + 3600, NOW)
    assert Cancel("ab" * 32, "request_expired") in cmds
    assert (state(c, 1), c.get(1).reason) == (State.EXPIRED, "expired")
    assert state(c, 2) is State.PLACING
    c.placed(2, "cd" * 32, NOW)
    assert Cancel("cd" * 32, "request_expired") in c.tick(T + 3601, NOW)
    assert state(c, 2) is State.EXPIRED
    c.requested(event(5), T, NOW)
    c.fulfilled(5, by_us=False, tx_hash="0xbeef", provider=OTHER, now=NOW)  # while placing
    assert c.placed(5, "ee" * 32, NOW) == [Cancel("ee" * 32, "request_closed")]
    c.requested(event(3), T, NOW)
    c.expired(3, "refunded", NOW)
    assert (state(c, 3), c.get(3).detail) == (State.EXPIRED, "refunded")
    assert c.expired(3, "refunded", NOW) == []  # final


# --- restarts ---------------------------------------------------------------------------


def test_records_round_trip_through_json_with_uint256_values():
    r = RequestRecord(
        request_id=2**255,
        requester=DAPP,
        circuit_id=STATS_ID,
        inputs=(2**254, 0),
        n_outputs=3,
        input_cid="\x1b[31mnot a cid",
        payment=2**256 - 1,
        deadline=T,
        callback=DAPP,
        block_number=7,
        state=State.FULFILLED,
        updated_at=NOW,
        circuit="private_stats",
        reason="fulfilled_elsewhere",
        tx_hash="0xfeed",
        attempts=2,
    )
    doc = record_json(r)
    assert doc["request_id"] == str(2**255) and doc["payment"] == str(2**256 - 1)
    assert record_from_json(doc) == r


def test_a_restart_neither_places_twice_nor_forgets(tmp_path):
    store = GatewayStore.for_contract(tmp_path, DAPP)
    c = core(max_open=4)

    def apply(cmds):
        for cmd in cmds:
            if isinstance(cmd, Save):
                store.save(cmd.record)

    apply(c.requested(event(1), T, NOW))
    apply(c.placed(1, "ab" * 32, NOW))
    apply(c.requested(event(2), T, NOW))  # placing when the daemon dies
    apply(c.requested(event(3, payment=1), T, NOW))  # skipped
    apply(c.requested(event(4), T, NOW))
    apply(c.placed(4, "ef" * 32, NOW))
    apply(c.job_ended(4, completed=True, provider=PROVIDER, output_cid="b", error="", now=NOW))
    apply(c.tick(T + 1, NOW))  # 4's fulfil starts ...
    apply(c.fulfilled(4, by_us=True, tx_hash="0xfeed", provider=PROVIDER, now=NOW))
    store.set_next_block(42)
    store.close()

    store = GatewayStore.for_contract(tmp_path, DAPP.upper().replace("0X", "0x"))
    again = core(max_open=4)
    again.load(store.records())
    assert store.next_block() == 42
    assert {rid: r.state for rid, r in again.records.items()} == {
        1: State.PLACED,
        2: State.WAITING,  # its job may exist: adopted first, not submitted again blindly
        3: State.SKIPPED,
        4: State.FULFILLED,
    }
    assert again.get(2).adopt
    # the blocks after the cursor are read again: known requests are ignored
    for rid in (1, 2, 3, 4):
        assert again.requested(event(rid), T, NOW) == []
    cmds = again.tick(T + 2, NOW)
    [place] = [x for x in cmds if isinstance(x, Place)]
    assert place.record.request_id == 2 and place.adopt
    assert not [x for x in cmds if isinstance(x, Fulfil)]  # 4 is done
    assert [r.request_id for r in again.placed_jobs()] == [1]  # its job is watched again
    assert GatewayStore.for_contract(tmp_path, OTHER).records() == []  # another contract


def test_only_the_newest_finished_requests_stay_in_memory(tmp_path):
    c = core(max_final_kept=2)
    store = GatewayStore(tmp_path / "g.db")
    for rid in (1, 2, 3, 4):
        for cmd in c.requested(event(rid, payment=1), T, NOW):  # skipped: final at once
            store.save(cmd.record)
    c.requested(event(5), T, NOW)  # open: never forgotten
    c.tick(T + 1, NOW)
    assert sorted(c.records) == [3, 4, 5]
    # a forgotten one is still in the store, which the shell asks before taking
    # a request read again for new
    assert store.has(1) and not store.has(99)
    again = core(max_final_kept=2)
    again.load(store.records())
    assert sorted(again.records) == [3, 4]
