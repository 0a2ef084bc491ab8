"""Stateful property test of the ledger against an independent model (our version of TigerBeetle's auditor).

The model keeps plain dicts and re-states the rules in the simplest way it can; after every step the
machine asserts that the ledger and the model agree, that every account sums to zero, that no limited
account is over its limit, that the posting rows rebuild the counters and balance per entry kind, and
that snapshot/restore and replay reproduce the state hash.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import hypothesis.strategies as st
import msgspec
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from exchange.settlement import (
    CHART,
    Account,
    AccountCode,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    Entry,
    Ledger,
    Transfer,
    TransferFlags,
)

R = CreateTransferResult
DIFFERENT = "EXISTS_WITH_DIFFERENT_*"  # the model does not predict which field differs first
DR_LIMIT = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
CR_LIMIT = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS

# Fixed accounts: (id, code, owner). 7 and 8 appear only when a rule opens them; 9 never exists.
ACCOUNTS = [
    (1, AccountCode.BANK_SETTLEMENT, 0),  # credits must not exceed debits
    (2, AccountCode.BUYER_CASH, 101),  # debits must not exceed credits
    (3, AccountCode.BUYER_CASH, 102),
    (4, AccountCode.ESCROW, 0),
    (5, AccountCode.INTEREST_INCOME, 900),  # no limit: the source of money in random runs
    (6, AccountCode.LOANS_RECEIVABLE, 900),  # credits must not exceed debits
]
LATE_ACCOUNTS = {7: (AccountCode.FARMER_PAYABLE, 201), 8: (AccountCode.INTEREST_INCOME, 901)}
ACCOUNT_IDS = st.sampled_from([1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8, 9])  # mostly accounts that exist
TRANSFER_IDS = st.integers(1, 40)  # small, so retries and conflicting retries are frequent
KINDS = ("single", "pending", "post", "void")
KIND_FLAGS = {"single": 0, "pending": TransferFlags.PENDING, "post": TransferFlags.POST_PENDING,
              "void": TransferFlags.VOID_PENDING}


def transfers(pending_ids: list[int]) -> st.SearchStrategy[Transfer]:
    """Random transfers; posts and voids mostly aim at ``pending_ids`` (pending transfers, any status)."""
    targets = st.sampled_from(pending_ids) if pending_ids else TRANSFER_IDS

    @st.composite
    def one(draw: st.DrawFn) -> Transfer:
        kind = draw(st.sampled_from(KINDS))
        tid = draw(TRANSFER_IDS)
        code = draw(st.sampled_from([1, 2]))
        user_data = draw(st.sampled_from([0, 7]))
        if kind in ("single", "pending"):
            timeout_ns = draw(st.sampled_from([0, 0, 1, 3])) if kind == "pending" else 0
            return Transfer(tid, draw(ACCOUNT_IDS), draw(ACCOUNT_IDS), draw(st.integers(0, 600)), code,
                            user_data, KIND_FLAGS[kind], timeout_ns=timeout_ns)
        amount = draw(st.sampled_from([0, 0, 1, 50, 200, 600]))
        pending_id = draw(st.one_of(targets, targets, targets, TRANSFER_IDS))
        return Transfer(tid, 0, 0, amount, draw(st.sampled_from([0, code])), user_data, KIND_FLAGS[kind],
                        pending_id=pending_id)

    return one()


@dataclass
class Model:
    """Expected state: counters per account [dp, dpo, cp, cpo] and transfer records as plain tuples."""

    counters: dict[int, list[int]] = field(default_factory=dict)
    flags: dict[int, int] = field(default_factory=dict)
    specs: dict[int, tuple[int, int]] = field(default_factory=dict)  # account id -> (code, owner)
    # transfer id -> (kind, debit, credit, amount, code, user_data, pending_id, timeout)
    records: dict[int, tuple[str, int, int, int, int, int, int, int]] = field(default_factory=dict)
    status: dict[int, str] = field(default_factory=dict)  # pending id -> pending/posted/voided/expired
    deadline: dict[int, int] = field(default_factory=dict)

    def open_account(self, account_id: int, code: int, owner_id: int) -> CreateAccountResult:
        if account_id in self.specs:
            assert self.specs[account_id][0] == code  # the machine varies only the owner
            same = self.specs[account_id] == (code, owner_id)
            return CreateAccountResult.EXISTS if same else CreateAccountResult.EXISTS_WITH_DIFFERENT_OWNER_ID
        self.specs[account_id] = (code, owner_id)
        self.flags[account_id] = CHART[code].limit_flags
        self.counters[account_id] = [0, 0, 0, 0]
        return CreateAccountResult.OK

    def transfer(self, t: Transfer, now_ns: int) -> R | str:
        kind = next(k for k, f in KIND_FLAGS.items() if f == t.flags & ~TransferFlags.LINKED)
        if kind in ("single", "pending"):
            return self._single_or_pending(kind, t, now_ns)
        return self._post_or_void(kind, t, now_ns)

    def _single_or_pending(self, kind: str, t: Transfer, now_ns: int) -> R | str:
        dr, cr, amount = t.debit_account_id, t.credit_account_id, t.amount_fen
        if dr == cr:
            return R.ACCOUNTS_MUST_BE_DIFFERENT
        if amount <= 0:
            return R.AMOUNT_MUST_BE_POSITIVE
        if dr not in self.counters:
            return R.DEBIT_ACCOUNT_NOT_FOUND
        if cr not in self.counters:
            return R.CREDIT_ACCOUNT_NOT_FOUND
        record = (kind, dr, cr, amount, t.code, t.user_data, 0, t.timeout_ns)
        if t.transfer_id in self.records:
            return R.EXISTS if self.records[t.transfer_id] == record else DIFFERENT
        d, c = self.counters[dr], self.counters[cr]
        if self.flags[dr] & DR_LIMIT and d[0] + d[1] + amount > d[3]:
            return R.EXCEEDS_CREDITS
        if self.flags[cr] & CR_LIMIT and c[2] + c[3] + amount > c[1]:
            return R.EXCEEDS_DEBITS
        self.records[t.transfer_id] = record
        if kind == "pending":
            d[0] += amount
            c[2] += amount
            self.status[t.transfer_id] = "pending"
            if t.timeout_ns:
                self.deadline[t.transfer_id] = now_ns + t.timeout_ns
        else:
            d[1] += amount
            c[3] += amount
        return R.OK

    def _post_or_void(self, kind: str, t: Transfer, now_ns: int) -> R | str:
        pid = t.pending_id
        if pid == t.transfer_id:
            return R.PENDING_ID_MUST_BE_DIFFERENT
        if pid not in self.records:
            return R.PENDING_TRANSFER_NOT_FOUND
        p_kind, dr, cr, p_amount, p_code, p_user_data, _, _ = self.records[pid]
        if p_kind != "pending":
            return R.PENDING_TRANSFER_NOT_PENDING
        if t.debit_account_id not in (0, dr):
            return R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id not in (0, cr):
            return R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        if kind == "post" and t.amount_fen > p_amount:
            return R.EXCEEDS_PENDING_TRANSFER_AMOUNT
        if kind == "void" and t.amount_fen not in (0, p_amount):
            return R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        posted = (t.amount_fen or p_amount) if kind == "post" else p_amount
        record = (kind, dr, cr, posted, t.code or p_code, t.user_data or p_user_data, pid, 0)
        if t.transfer_id in self.records:
            return R.EXISTS if self.records[t.transfer_id] == record else DIFFERENT
        status = self.status[pid]
        if status != "pending":
            return {"posted": R.PENDING_TRANSFER_ALREADY_POSTED, "voided": R.PENDING_TRANSFER_ALREADY_VOIDED,
                    "expired": R.PENDING_TRANSFER_EXPIRED}[status]
        if pid in self.deadline and now_ns >= self.deadline[pid]:
            return R.PENDING_TRANSFER_EXPIRED
        self.records[t.transfer_id] = record
        self._release(pid)
        self.status[pid] = "posted" if kind == "post" else "voided"
        if kind == "post":
            self.counters[dr][1] += posted
            self.counters[cr][3] += posted
        return R.OK

    def _release(self, pid: int) -> None:
        _, dr, cr, amount, *_ = self.records[pid]
        self.counters[dr][0] -= amount
        self.counters[cr][2] -= amount

    def expire(self, now_ns: int) -> list[int]:
        due = sorted((at, pid) for pid, at in self.deadline.items() if self.status[pid] == "pending" and at <= now_ns)
        for _, pid in due:
            self._release(pid)
            self.status[pid] = "expired"
        return [pid for _, pid in due]


def _matches(actual: R, expected: R | str) -> bool:
    if expected == DIFFERENT:
        return actual.name.startswith("EXISTS_WITH_DIFFERENT_")
    return actual == expected


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.model = Model()
        self.now_ns = 1
        self.log: list[tuple[str, object, int, object]] = []  # (call, argument, now_ns, result) for replay
        self.submitted: list[Transfer] = []
        self.from_postings: dict[int, list[int]] = {}  # counters rebuilt only from drained posting rows

    # ------------------------------------------------------------------------------------------ rules

    @initialize()
    def open_fixed_accounts(self) -> None:
        batch = [Account(i, code, owner, flags=CHART[code].limit_flags) for i, code, owner in ACCOUNTS]
        self._create_accounts(batch)

    @rule(account_id=st.sampled_from(sorted(LATE_ACCOUNTS)), other_owner=st.booleans())
    def open_late_account(self, account_id: int, other_owner: bool) -> None:
        code, owner = LATE_ACCOUNTS[account_id]
        self._create_accounts([Account(account_id, code, owner + other_owner, flags=CHART[code].limit_flags)])

    @rule(data=st.data())
    def one_transfer(self, data: st.DataObject) -> None:
        self._create_transfers([data.draw(transfers(sorted(self.model.status)))])

    @rule(data=st.data(), close=st.sampled_from([True, True, True, False]))
    def linked_chain(self, data: st.DataObject, close: bool) -> None:
        """All but the last linked; with ``close`` False the last is linked too (an open chain)."""
        batch = data.draw(st.lists(transfers(sorted(self.model.status)), min_size=2, max_size=4))
        last = len(batch) - 1
        chain = [Transfer(t.transfer_id, t.debit_account_id, t.credit_account_id, t.amount_fen, t.code,
                          t.user_data, t.flags | (TransferFlags.LINKED if i < last or not close else 0),
                          t.pending_id, t.timeout_ns)
                 for i, t in enumerate(batch)]
        self._create_transfers(chain)

    @rule(tid=TRANSFER_IDS, debit=st.sampled_from([2, 3, 5]), amount_fen=st.integers(1, 400),
          timeout_ns=st.sampled_from([0, 1, 2, 5]))
    def hold(self, tid: int, debit: int, amount_fen: int, timeout_ns: int) -> None:
        """An order hold into escrow, often with a deadline."""
        self._create_transfers([Transfer(tid, debit, 4, amount_fen, 3, 9, TransferFlags.PENDING,
                                         timeout_ns=timeout_ns)])

    @precondition(lambda self: self.model.status)
    @rule(data=st.data(), tid=TRANSFER_IDS, post=st.booleans(), linked_rehold=st.booleans())
    def resolve(self, data: st.DataObject, tid: int, post: bool, linked_rehold: bool) -> None:
        """Post (all, part, too much) or void a known pending transfer; a partial post may re-hold the rest."""
        pid = data.draw(st.sampled_from(sorted(self.model.status)))
        p_amount = self.model.records[pid][3]
        amount = data.draw(st.sampled_from([0, 1, p_amount // 2, p_amount, p_amount + 1]))
        flags = TransferFlags.POST_PENDING if post else TransferFlags.VOID_PENDING
        if post and linked_rehold and 0 < amount < p_amount:
            _, dr, cr, *_ = self.model.records[pid]
            rehold = Transfer(data.draw(TRANSFER_IDS), dr, cr, p_amount - amount, 3, 9, TransferFlags.PENDING)
            self._create_transfers([Transfer(tid, amount_fen=amount, flags=flags | TransferFlags.LINKED,
                                             pending_id=pid), rehold])
        else:
            self._create_transfers([Transfer(tid, amount_fen=amount, flags=flags, pending_id=pid)])

    @rule(buyer=st.sampled_from([2, 3]), tid=TRANSFER_IDS, offset=st.sampled_from([-1, 0, 1, "held"]))
    def spend_to_the_limit(self, buyer: int, tid: int, offset: int | str) -> None:
        """Spend exactly the buyer's headroom, one fen less or more, or as if holds were not there."""
        dp, dpo, _, cpo = self.model.counters[buyer]
        headroom = cpo - dp - dpo
        amount = headroom + dp if offset == "held" else headroom + int(offset)
        self._create_transfers([Transfer(tid, buyer, 4, max(amount, 1), 1)])

    @precondition(lambda self: self.model.records)
    @rule(data=st.data(), change=st.sampled_from(["user_data", "code", "amount_fen", "debit_account_id",
                                                  "credit_account_id", "timeout_ns", "flags"]))
    def conflicting_retry(self, data: st.DataObject, change: str) -> None:
        """Resubmit a stored transfer with exactly one field changed (LINKED dropped: it goes alone)."""
        stored = self.ledger.transfer(data.draw(st.sampled_from(sorted(self.model.records))))
        assert stored is not None
        t = msgspec.structs.replace(stored, flags=stored.flags & ~TransferFlags.LINKED)
        value = getattr(t, change)
        resolving = TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING
        if change == "flags":  # single <-> pending, post <-> void
            new = value ^ (resolving if value & resolving else TransferFlags.PENDING)
        elif change == "timeout_ns" and not t.flags & TransferFlags.PENDING:
            return
        else:
            new = value + 1
        changed = msgspec.structs.replace(t, **{change: new})
        if not changed.flags & TransferFlags.PENDING:
            changed = msgspec.structs.replace(changed, timeout_ns=0)  # keep the request well-formed
        self._create_transfers([changed])

    @precondition(lambda self: self.submitted)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        self._create_transfers([data.draw(st.sampled_from(self.submitted))])

    @rule(t=st.integers(1, 600), buyer=st.sampled_from([2, 3]))
    def deposit(self, t: int, buyer: int) -> None:
        """Fund a buyer from the bank and lend against interest, so limited accounts have money to move."""
        self._create_transfers([Transfer(1000 + t, 1, buyer, 1_000, 1, flags=TransferFlags.LINKED),
                                Transfer(2000 + t, 6, 5, 1_000, 1)])

    @rule(dt_ns=st.integers(0, 3))
    def tick(self, dt_ns: int) -> None:
        self.now_ns += dt_ns
        expired = self.ledger.expire_pending(self.now_ns)
        assert expired == self.model.expire(self.now_ns)
        self.log.append(("expire", None, self.now_ns, expired))

    @rule()
    def snapshot_and_restore(self) -> None:
        self._drain()
        restored = Ledger.restore(self.ledger.snapshot())
        assert restored.state_hash() == self.ledger.state_hash()
        self.ledger = restored  # carry on with the restored copy: it must behave the same

    # ------------------------------------------------------------------------------------- invariants

    @invariant()
    def agrees_with_model_and_balances(self) -> None:
        self._drain()
        self.ledger.validate()
        accounts = self.ledger.accounts()
        actual = {a.account_id: [a.debits_pending_fen, a.debits_posted_fen,
                                 a.credits_pending_fen, a.credits_posted_fen] for a in accounts}
        assert actual == self.model.counters
        totals = [sum(c[k] for c in actual.values()) for k in range(4)]
        assert totals[0] == totals[2], "pending debits != pending credits"
        assert totals[1] == totals[3], "posted debits != posted credits"
        for a in accounts:
            dp, dpo, cp, cpo = actual[a.account_id]
            assert min(dp, dpo, cp, cpo) >= 0
            if a.flags & DR_LIMIT:
                assert dp + dpo <= cpo
            if a.flags & CR_LIMIT:
                assert cp + cpo <= dpo
        rebuilt = dict(self.from_postings)
        for account_id in actual:
            rebuilt.setdefault(account_id, [0, 0, 0, 0])
        assert rebuilt == actual, "posting rows do not rebuild the account counters"

    def teardown(self) -> None:
        """Replay equals live: the same calls on a fresh ledger give the same results and state hash."""
        replay = Ledger()
        for call, argument, now_ns, result in self.log:
            if call == "accounts":
                assert replay.create_accounts(argument, now_ns) == result  # type: ignore[arg-type]
            elif call == "transfers":
                assert replay.create_transfers(argument, now_ns) == result  # type: ignore[arg-type]
            else:
                assert replay.expire_pending(now_ns) == result
        assert replay.state_hash() == self.ledger.state_hash()

    # ---------------------------------------------------------------------------------------- helpers

    def _create_accounts(self, batch: list[Account]) -> None:
        results = self.ledger.create_accounts(batch, self.now_ns)
        expected = [self.model.open_account(a.account_id, a.code, a.owner_id) for a in batch]
        assert results == expected
        self.log.append(("accounts", batch, self.now_ns, results))

    def _create_transfers(self, batch: list[Transfer]) -> None:
        if len(batch) == 1:  # the one-transfer entry point; teardown replays it through create_transfers
            results = [self.ledger.create_transfer(batch[0], self.now_ns)]
        else:
            results = self.ledger.create_transfers(batch, self.now_ns)
        self.log.append(("transfers", batch, self.now_ns, results))
        self.submitted.extend(batch)
        if not batch[-1].flags & TransferFlags.LINKED and len(batch) == 1:
            expected = self.model.transfer(batch[0], self.now_ns)
            assert _matches(results[0], expected), (batch[0], results[0], expected)
            return
        self._check_chain(batch, results)

    def _check_chain(self, batch: list[Transfer], results: list[R]) -> None:
        if batch[-1].flags & TransferFlags.LINKED:  # open chain: nothing applies
            assert results == [R.LINKED_EVENT_FAILED] * (len(batch) - 1) + [R.LINKED_EVENT_CHAIN_OPEN]
            return
        trial = copy.deepcopy(self.model)
        expected: list[R | str] = []
        for t in batch:
            expected.append(trial.transfer(t, self.now_ns))
            if expected[-1] not in (R.OK, R.EXISTS):
                k = len(expected) - 1
                assert _matches(results[k], expected[-1]), (batch, results, k, expected[-1])
                assert [r for i, r in enumerate(results) if i != k] == [R.LINKED_EVENT_FAILED] * (len(batch) - 1)
                return  # the model is left as it was: the chain is rolled back
        assert results == expected, (batch, results, expected)
        self.model = trial

    def _drain(self) -> None:
        postings = self.ledger.drain_postings()
        self.ledger.drain_new_accounts()
        for p in postings:
            # the shape PostgreSQL's CHECK constraints demand of every row (0006_ledger_transfers.sql)
            assert p.debit_account_id != p.credit_account_id
            if p.entry in (Entry.POSTED, Entry.PENDING):
                assert p.amount_fen > 0 and p.released_fen == 0 and p.pending_id == 0
            elif p.entry == Entry.RELEASE:
                assert p.amount_fen == 0 and p.released_fen > 0 and p.pending_id > 0
            else:
                assert p.entry == Entry.POST_PENDING
                assert 0 < p.amount_fen <= p.released_fen and p.pending_id > 0
            dr = self.from_postings.setdefault(p.debit_account_id, [0, 0, 0, 0])
            cr = self.from_postings.setdefault(p.credit_account_id, [0, 0, 0, 0])
            pending = p.amount_fen if p.entry == Entry.PENDING else -p.released_fen
            posted = p.amount_fen if p.entry in (Entry.POSTED, Entry.POST_PENDING) else 0
            dr[0] += pending
            dr[1] += posted
            cr[2] += pending
            cr[3] += posted


LedgerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLedgerMachine = LedgerMachine.TestCase
