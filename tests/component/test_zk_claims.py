"""The provider's on-chain claim for a zk job nobody paid, on the embedded EVM.

The real ledger service (``ledger/service.py``) over a SQLite file, the real
claim link (``maskd/zk_claims.py``) reading the provider's job rows and stored
result CARs, and SettlementEscrow on py-evm; the clock is trio's MockClock,
jumped past ``voucher_timeout_s``. What is checked: a zk job whose voucher is
missing, or whose requester refused it, is paid by the contract once (the
circuit registered first, once); each refusal is recorded with its reason and
never sent again; a claim interrupted by a crash is finished after a restart
without a second payment; the requester sees the ProofClaimed event and
counts the job in its channel.

Proofs come from zkp.testing.TrapdoorSetup (valid for any public signals).
py-evm takes ~1 s per pairing (a claim's dry run and its transaction each run
one), so the tests make few paid claims.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import trio
import trio.testing
from eth_account import Account

from ledger.agreement import sign_agreement
from ledger.chain import EmbeddedChain
from ledger.core import ClaimState, LedgerConfig, Standing
from ledger.deploy import deploy, deposit, fund
from ledger.escrow import ChainEscrow
from ledger.service import LedgerService
from ledger.store import InlineLedgerStore, LedgerStore
from ledger.zkchain import ZkChain
from maskd.jobfiles import PrivateFiles
from maskd.zk_claims import ClaimLink, ClaimWatcher
from protocol.market import Agreement, AgreementTerms, encode_market
from scheduler.async_store import InlineStore
from scheduler.store import JobStore
from zkp.binding import job_binding
from zkp.formats import proof_to_json, public_to_json, vk_id, vk_to_json
from zkp.testing import TrapdoorSetup

PRICE = 7 * 10**18
TIMEOUT_S = 60.0
CLAIM_WINDOW = 30 * 24 * 3600
SETUP = TrapdoorSetup.new(2, seed=21)  # public signals: one output, the binding
CIRCUIT = vk_id(SETUP.vk)
PEER = "12D3KooWRequester"


class World:
    """One embedded chain with the contracts; a requester with a deposit and a
    provider with its job store, results and ledger file in ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.chain = EmbeddedChain()
        keys = self.chain.dev_keys()
        treasury = Account.from_key(keys[0]).address
        self.d = deploy(self.chain, keys[0], treasury, 10**9 * 10**18, 60, 60)
        self.requester_key, self.provider_key, self.poor_key = keys[1], keys[2], keys[3]
        self.requester = Account.from_key(self.requester_key).address
        self.provider = Account.from_key(self.provider_key).address
        self.poor = Account.from_key(self.poor_key).address
        for key in (self.requester_key, self.provider_key, self.poor_key):
            address = Account.from_key(key).address
            fund(self.chain, keys[0], address, 0, 1000 * 10**18, token=self.d.token)
        deposit(self.chain, self.requester_key, self.d.escrow, self.d.token, 100 * 10**18)
        deposit(self.chain, self.poor_key, self.d.escrow, self.d.token, 10**18)  # < PRICE
        self.jobs = JobStore(root / "jobs.db")
        self.private = PrivateFiles(root / "private")
        self._n = 0

    # --- the provider's records --------------------------------------------------

    def terms(self, job_id: str, **change) -> AgreementTerms:
        t = AgreementTerms(
            job_id=job_id,
            requester_peer=PEER,
            requester_account=self.requester,
            provider_peer="12D3KooWProvider",
            provider_account=self.provider,
            price_total=str(PRICE),
            cpu=1,
            memory_mb=64,
            gpu=0,
            max_seconds=60,
            max_fuel=0,
            deadline=self.chain.block_timestamp() + 3600,
            spec_cid="bafkreispec",
            heartbeat_interval_ms=1000,
            chain_id=self.chain.chain_id,
            verifying_contract=self.d.escrow,
            circuit_id=CIRCUIT,
        )
        return msgspec.structs.replace(t, **change)

    async def delivered(
        self,
        *,
        output: int = 42,
        binding: int | None = None,
        prove: list[int] | None = None,
        signer: bytes | None = None,
        result: bool = True,
        **change,
    ) -> AgreementTerms:
        """A zk job this provider ran and delivered: its row (the agreement both
        signed) and its result CAR (proof.json, public.json, the key)."""
        self._n += 1
        job_id = f"{self._n:064x}"
        t = self.terms(job_id, **change)
        bound = job_binding(job_id, t.requester_account, t.provider_account)
        public = [output, bound if binding is None else binding]
        proof = SETUP.prove(prove or public)
        signature = sign_agreement(t, signer or self.requester_key)
        blob = encode_market(Agreement(terms=t, requester_signature=signature))
        cid = None
        if result:
            out = self.root / f"result{self._n}"
            out.mkdir()
            (out / "proof.json").write_text(json.dumps(proof_to_json(proof)))
            (out / "public.json").write_text(json.dumps(public_to_json(public)))
            (out / "verification_key.json").write_text(json.dumps(vk_to_json(SETUP.vk)))
            cid = await self.private.add(out, "result")
        fields = {"agreement": blob, "provider_account": self.provider}
        self.jobs.create(job_id, role="provider", spec={}, now=0.0, **fields)
        self.jobs.update(job_id, role="provider", now=0.0, output_cid=cid or "bafyempty")
        return t

    # --- the chain, read by the test ----------------------------------------------

    def view(self, fn: str, *args):
        return self.chain.call(self.escrow_contract(), fn, *args)

    def escrow_contract(self):
        from ledger.contracts import ESCROW, load_artifact

        return self.chain.contract(self.d.escrow, load_artifact(ESCROW).abi)

    def proofs_claimed(self) -> list:
        logs = self.escrow_contract().events.ProofClaimed.get_logs(from_block=0)
        return [dict(log["args"]) for log in logs]


class Provider:
    """The provider's ledger service and claim link; ``crash()`` drops them as
    ``kill -9`` would (every write is committed)."""

    def __init__(self, world: World, nursery: trio.Nursery, link: type[ClaimLink] = ClaimLink):
        self.world, self.nursery, self.link_type = world, nursery, link
        self.limiter = trio.CapacityLimiter(1)

    async def start(self) -> None:
        w = self.world
        self.escrow = ChainEscrow(
            w.chain, w.d.token, w.d.escrow, w.provider_key, self.limiter, poll_interval_s=0.01
        )
        self.zk = ZkChain(
            w.chain, w.d.token, w.d.escrow, None, w.provider_key, self.limiter,
            sender=self.escrow.sender, poll_interval_s=0.01,
        )  # fmt: skip
        self.link = self.link_type(w.provider)
        self.link.attach_jobs(InlineStore(w.jobs), w.private)
        self.link.connect(w.chain, self.escrow.sender, self.zk, w.d.escrow)
        self.store = LedgerStore(w.root / "ledger.db")
        self.ledger = LedgerService(
            InlineLedgerStore(self.store),
            self.escrow,
            LedgerConfig(voucher_timeout_s=TIMEOUT_S, poll_interval_s=0.05),
            provider=w.provider,
            clock=trio.current_time,
            claims=self.link,
        )
        self.link.counters = self.ledger.counters
        self.scope = trio.CancelScope()

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            with self.scope:
                await self.ledger.run(task_status=task_status)

        await self.nursery.start(run)

    def crash(self) -> None:
        self.scope.cancel()
        self.store.close()

    async def wait(self, cond: Callable[[], bool], what: str, limit: float = 60) -> None:
        with trio.fail_after(limit):
            while not cond():
                changed = self.ledger.changed
                with trio.move_on_after(0.05):  # or a claim sent in a thread
                    await changed.wait()

    def claim(self, job_id: str):
        return self.ledger.core.claim(job_id)


def run(test: Callable[[World, trio.Nursery, trio.testing.MockClock], object], root: Path) -> None:
    """``test`` under a MockClock running at real speed, which the test jumps."""
    clock = trio.testing.MockClock(rate=1.0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await test(World(root), nursery, clock)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)


def finished(p: Provider, *job_ids: str) -> Callable[[], bool]:
    def done() -> bool:
        return all(
            (c := p.claim(j)) is not None and c.state not in (ClaimState.PLANNED, ClaimState.SENT)
            for j in job_ids
        )

    return done


def test_a_missing_or_refused_voucher_for_a_zk_job_is_paid_on_chain_once(tmp_path):
    async def test(w: World, nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
        p = Provider(w, nursery)
        await p.start()
        late, refused = await w.delivered(), await w.delivered()
        for t in (late, refused):
            await p.ledger.expect(t.job_id, w.requester, PEER, PRICE)
        # the requester refuses one result: claimed at once, no timeout
        assert not await p.ledger.dispute(refused.job_id, "12D3KooWSomeoneElse")
        assert await p.ledger.dispute(refused.job_id, PEER)
        await p.wait(finished(p, refused.job_id), "the disputed job's claim")
        assert p.claim(late.job_id) is None  # not due yet
        clock.jump(TIMEOUT_S + 1)  # the other's voucher is now missing
        await p.wait(finished(p, late.job_id), "the late job's claim")
        # then the ledger reads the channel's settled again (the contract raised it)
        await p.wait(lambda: p.ledger.owed_by(w.requester) == 0, "settled to be read")

        for t in (late, refused):
            c = p.claim(t.job_id)
            assert (c.state, c.amount, c.reason) == (ClaimState.PAID, PRICE, None), c
            assert c.tx_hash and c.block
        assert w.view("earnings", w.provider) == 2 * PRICE
        assert w.view("settled", w.requester, w.provider) == 2 * PRICE
        assert w.view("circuitInfo", bytes.fromhex(CIRCUIT))[0]
        assert p.ledger.counters["circuits_registered"] == 1  # read first, registered once
        assert len(w.proofs_claimed()) == 2
        assert p.ledger.standing(w.requester) == Standing(paid=2, claimed=2)
        row = p.ledger.core.channels()[0]
        assert (row["settled"], row["paid"]) == (str(2 * PRICE), str(2 * PRICE))
        assert p.ledger.owed_by(w.requester) == 0
        view = p.ledger.snapshot()
        assert [c["status"] for c in view["claims"]] == ["paid", "paid"]
        assert view["missing"] == []

        # the requester's side: it sees both claims once, and counts them in its channel
        req_root = w.root / "requester"
        req_root.mkdir()
        req_jobs = JobStore(req_root / "jobs.db")
        for t in (late, refused):
            req_jobs.create(t.job_id, role="requester", spec={}, now=0.0)
        # it had recorded the late job as owed (it just never sent the voucher)
        req_jobs._db.execute(
            "INSERT INTO owed (job_id, provider_peer, provider_account, amount, recorded_at)"
            " VALUES (?, ?, ?, ?, 1.0)",
            (late.job_id, "12D3KooWProvider", w.provider, str(PRICE)),
        )
        owed = req_jobs.owed()
        req_store = LedgerStore(req_root / "ledger.db")
        channels = {w.provider: PRICE}
        watcher = ClaimWatcher(
            w.requester, InlineLedgerStore(req_store).call, clock=trio.current_time
        )
        watcher.attach_jobs(InlineStore(req_jobs), lambda: channels)
        req_escrow = ChainEscrow(w.chain, w.d.token, w.d.escrow, w.requester_key, p.limiter)
        req_zk = ZkChain(
            w.chain, w.d.token, w.d.escrow, None, w.requester_key, p.limiter,
            sender=req_escrow.sender,
        )  # fmt: skip
        watcher.connect(req_zk, req_escrow.block_number)
        assert await watcher.scan() == 2
        assert await watcher.scan() == 0  # once
        assert channels == {w.provider: 2 * PRICE}  # the refused job is now owed too
        assert watcher.payment_state(refused.job_id)["state"] == "paid_by_proof"
        # after a restart the channel starts from the owed rows and the claims
        again = ClaimWatcher(w.requester, InlineLedgerStore(req_store).call, clock=lambda: 0)
        await again.load()
        total = sum(int(e.amount) for e in again.claims_owed(owed))
        assert total == 2 * PRICE

    run(test, tmp_path)


def test_each_refusal_is_recorded_with_its_reason_and_never_sent_again(tmp_path):
    async def test(w: World, nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
        p = Provider(w, nursery)
        await p.start()
        now = w.chain.block_timestamp()
        cases = {
            # the provider's own faults: written off, no longer counted against the requester
            "invalid_proof": await w.delivered(prove=[43, 0]),  # a proof of other signals
            "binding_mismatch": await w.delivered(binding=12345),
            "bad_agreement_signature": await w.delivered(signer=w.poor_key),
            "claim_window_closed": await w.delivered(deadline=now - CLAIM_WINDOW - 10),
            # the requester's: its deposit cannot pay; it still owes the job
            "insufficient_deposit": await w.delivered(requester_account=w.poor, signer=w.poor_key),
        }
        gone = await w.delivered(result=False)  # a zk job whose result is not here
        plain = await w.delivered(circuit_id="")  # not a zk job: never claimed
        for t in [*cases.values(), gone, plain]:
            await p.ledger.expect(t.job_id, t.requester_account, PEER, PRICE)
        clock.jump(TIMEOUT_S + 1)
        await p.wait(finished(p, *(t.job_id for t in cases.values()), gone.job_id), "claims")

        for reason, t in cases.items():
            c = p.claim(t.job_id)
            assert (c.state, c.reason) == (ClaimState.REVERTED, reason), c
            assert c.error and c.tx_hash is None  # refused in the dry run: nothing sent
        failed = p.claim(gone.job_id)
        assert (failed.state, failed.reason) == (ClaimState.FAILED, "no_result"), failed
        assert p.claim(plain.job_id) is None and p.ledger.counters["claims_not_zk"] == 1
        assert p.escrow.sender.statistics().sent == 1  # the circuit's registration only
        assert w.proofs_claimed() == [] and w.view("earnings", w.provider) == 0
        # written off: no longer owed nor missing; the poor requester's job and the
        # job whose result is gone still are (they were not paid)
        missing = {m["job_id"] for m in p.ledger.snapshot()["missing"]}
        assert missing == {cases["insufficient_deposit"].job_id, gone.job_id, plain.job_id}
        assert p.ledger.standing(w.requester) == Standing(voucher_missing=2)
        assert p.ledger.standing(w.poor) == Standing(voucher_missing=1)
        assert p.ledger.owed_by(w.requester) == 2 * PRICE
        # never retried: later ticks send nothing and open nothing
        opened = p.ledger.counters["claims_opened"]
        clock.jump(3600)
        await p.ledger.expect("f" * 64, w.requester, PEER, 0)  # a poke: the loop runs again
        await trio.sleep(0.2)
        assert p.ledger.counters["claims_opened"] == opened
        assert p.escrow.sender.statistics().sent == 1

    run(test, tmp_path)


class CrashAfterSend(ClaimLink):
    """Sends the claim, then the process dies before the ledger stores its hash."""

    async def send_claim(self, evidence):
        await super().send_claim(evidence)
        raise Crash


class CrashBeforeReceipt(ClaimLink):
    """The process dies after the claim's hash was stored, before its receipt."""

    async def claim_receipt(self, tx_hash):
        raise Crash


class Crash(BaseException):
    """kill -9 stands for no exception the service could catch: its error
    handling (an unknown error while sending keeps the claim planned) must not
    turn the simulated death into a retry."""


def test_a_claim_interrupted_by_a_crash_is_finished_after_a_restart_and_paid_once(tmp_path):
    async def test(w: World, nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
        t = await w.delivered()
        crashed = False
        try:
            async with trio.open_nursery() as inner:
                p = Provider(w, inner, CrashAfterSend)
                await p.start()
                await p.ledger.expect(t.job_id, w.requester, PEER, PRICE)
                clock.jump(TIMEOUT_S + 1)
                await trio.sleep_forever()  # until the crash
        except* Crash:
            crashed = True
        assert crashed
        p.store.close()
        assert len(w.proofs_claimed()) == 1  # it went out
        with LedgerStore(w.root / "ledger.db") as store:
            assert store.claim(t.job_id).state is ClaimState.PLANNED  # but no hash stored

        again = Provider(w, nursery)
        await again.start()
        await again.wait(finished(again, t.job_id), "the claim after the restart")
        c = again.claim(t.job_id)
        # the contract refused the second send in its dry run: already claimed, i.e. paid
        assert (c.state, c.amount) == (ClaimState.PAID, PRICE), c
        assert again.escrow.sender.statistics().sent == 0
        assert len(w.proofs_claimed()) == 1 and w.view("earnings", w.provider) == PRICE
        assert again.ledger.standing(w.requester) == Standing(paid=1, claimed=1)
        again.crash()

        # a crash after its hash was stored: the restarted ledger reads its receipt
        u = await w.delivered()
        crashed = False
        try:
            async with trio.open_nursery() as inner:
                p = Provider(w, inner, CrashBeforeReceipt)
                await p.start()
                assert await p.ledger.dispute(u.job_id, PEER) is False  # not delivered yet
                await p.ledger.expect(u.job_id, w.requester, PEER, PRICE)
                assert await p.ledger.dispute(u.job_id, PEER)
                await trio.sleep_forever()  # until the crash
        except* Crash:
            crashed = True
        assert crashed
        p.store.close()
        third = Provider(w, nursery)
        await third.start()
        assert third.claim(t.job_id).state is ClaimState.PAID
        sent = third.claim(u.job_id)
        assert sent.state is ClaimState.SENT and sent.tx_hash
        await third.wait(finished(third, u.job_id), "the sent claim after the restart")
        assert third.claim(u.job_id).state is ClaimState.PAID
        assert third.claim(u.job_id).tx_hash == sent.tx_hash
        assert len(w.proofs_claimed()) == 2 and w.view("earnings", w.provider) == 2 * PRICE
        assert third.ledger.standing(w.requester) == Standing(paid=2, claimed=2)

    run(test, tmp_path)
