"""First in, first out: a bucket's debits attributed to its credits (domain/attribution)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.wallet.domain.attribution import Movement, attribute


def topup(n: int, amount: int) -> Movement:
    return Movement(f"e{n}", "topup_credit", amount, order_id=f"o{n}")


def charge(n: int, amount: int) -> Movement:
    return Movement(f"e{n}", "request_charge", -amount, request_id=f"r{n}")


def test_two_topups_pay_in_the_order_they_arrived():
    rows = [topup(1, 10), topup(2, 10), charge(3, 4), charge(4, 8), charge(5, 3)]
    result = attribute(rows)
    first, second = result.credits
    assert [(s.debit.request_id, s.used) for s in first.slices] == [("r3", 4), ("r4", 6)]
    assert [(s.debit.request_id, s.used) for s in second.slices] == [("r4", 2), ("r5", 3)]
    assert (first.used, first.left, second.used, second.left) == (10, 0, 5, 5)
    assert [(s.credit.order_id, s.used) for s in result.paid_from("r4")] == [("o1", 6), ("o2", 2)]


def test_reversing_a_charge_gives_its_slices_back_to_the_credits_that_paid_it():
    rows = [
        topup(1, 5),
        topup(2, 5),
        charge(3, 7),
        Movement("e4", "reversal", 7, request_id="r3", reverses_entry_id="e3"),
        charge(5, 2),
    ]
    result = attribute(rows)
    first, second = result.credits
    assert (first.used, second.used) == (2, 0)
    assert [s.used for s in first.slices] == [5, -5, 2]
    assert [s.used for s in second.slices] == [2, -2]


def test_reversing_a_topup_takes_what_is_left_of_it_first():
    rows = [
        topup(1, 10),
        topup(2, 10),
        charge(3, 3),
        Movement("e4", "reversal", -10, order_id="o2", reverses_entry_id="e2"),
        charge(5, 2),
    ]
    result = attribute(rows)
    first, second = result.credits
    assert (first.used, first.left) == (5, 5)
    assert (second.used, second.left) == (10, 0)
    assert [s.debit.entry_id for s in second.slices] == ["e4"]


def test_a_positive_adjustment_is_a_credit_and_a_negative_one_is_paid_like_a_charge():
    rows = [
        Movement("e1", "adjustment", 4),
        topup(2, 6),
        Movement("e3", "adjustment", -5),
    ]
    result = attribute(rows)
    assert [(c.movement.entry_id, c.used) for c in result.credits] == [("e1", 4), ("e2", 1)]


# Random ledgers that keep W2 (the balance never goes below zero), as the wallet writes them.
@st.composite
def ledgers(draw: st.DrawFn) -> list[Movement]:
    rows: list[Movement] = []
    balance = 0
    reversed_ids: set[str] = set()
    for n in range(draw(st.integers(0, 40))):
        choice = draw(st.sampled_from(["topup", "adjust+", "charge", "adjust-", "reverse"]))
        entry_id = f"e{n}"
        if choice == "topup":
            rows.append(topup(n, draw(st.integers(1, 1_000))))
        elif choice == "adjust+":
            rows.append(Movement(entry_id, "adjustment", draw(st.integers(1, 500))))
        elif choice in ("charge", "adjust-") and balance > 0:
            amount = draw(st.integers(0 if choice == "charge" else 1, balance))
            kind = "request_charge" if choice == "charge" else "adjustment"
            rows.append(Movement(entry_id, kind, -amount, request_id=f"r{n}"))
        elif choice == "reverse":
            candidates = [
                r
                for r in rows
                if r.kind != "reversal"
                and r.entry_id not in reversed_ids
                and r.change != 0
                and r.change <= balance
            ]
            if candidates:
                target = draw(st.sampled_from(candidates))
                reversed_ids.add(target.entry_id)
                rows.append(
                    Movement(
                        entry_id,
                        "reversal",
                        -target.change,
                        request_id=target.request_id,
                        order_id=target.order_id,
                        reverses_entry_id=target.entry_id,
                    )
                )
        balance = sum(r.change for r in rows)
        assert balance >= 0
    return rows


@settings(max_examples=300, deadline=None)
@given(ledgers())
def test_every_debit_is_paid_exactly_and_no_credit_is_used_beyond_what_it_received(rows):
    result = attribute(rows)
    assert not result.unpaid
    for row in rows:
        if row.change < 0:
            assert sum(s.used for s in result.slices_of.get(row.entry_id, [])) == -row.change
    for credit in result.credits:
        assert 0 <= credit.used <= credit.received
    # What is left of all credits is the bucket's balance.
    assert result.left == sum(r.change for r in rows)
    # The attributed amounts of the bucket equal its debits net of their reversals.
    attributed = sum(s.used for c in result.credits for s in c.slices)
    credited = sum(c.received for c in result.credits)
    assert attributed == credited - sum(r.change for r in rows)


@settings(max_examples=200, deadline=None)
@given(ledgers())
def test_a_debit_takes_from_a_newer_credit_only_once_the_older_ones_are_used_up(rows):
    result = attribute(rows)
    for row in rows:
        if row.change >= 0 or row.reverses_entry_id:
            continue
        slices = result.slices_of.get(row.entry_id, [])
        credits = [s.credit.entry_id for s in slices]
        order = [c.movement.entry_id for c in result.credits]
        assert credits == sorted(credits, key=order.index)


def test_reconciliation_names_a_charge_no_credit_paid_and_a_fold_that_does_not_match():
    from services.wallet.domain.reconcile import attribution_problems

    class Row:
        def __init__(self, amount: int) -> None:
            self.amount = amount

    rows = [topup(1, 5), charge(2, 8)]
    problems = attribution_problems(attribute(rows), [Row(5), Row(-8)])
    assert problems == [
        "row e2 has 3 micro-units no credit paid",
        "credits have 0 left but the journal folds to -3",
    ]
    healthy = [topup(1, 5), charge(2, 4)]
    assert attribution_problems(attribute(healthy), [Row(5), Row(-4)]) == []
