"""The leap protocol's state machine (`LeapState` in services/leap_protocol.py), every transition, with no model: propose ->
evaluate -> apply -> (control branch) -> judge -> keep / roll back, the accounting of steps saved and lost, and the
transitions each phase refuses; the leap policy (horizon, patience, start_after, a request's horizon) and the whole
state's round trip through a checkpoint."""

from __future__ import annotations

import pytest

from services.leap_protocol import LeapState, LeapStateError, PendingLeap, Phase


def state(judge="control", **kw) -> LeapState:
    policy = {"horizon": 8, "min_horizon": 2, "max_horizon": 16, "patience": 2, "start_after": 0, **kw}
    return LeapState(judge=judge, judge_after=4, leap_every=10, accept_margin=0.02, judge_margin=0.01, **policy)


def leap(at=10, pre=(1.0, 0.0, 1.0, 0.0)) -> PendingLeap:
    return PendingLeap(id="leap-001", from_step=10, to_step=30, horizon=20, scale=1.0, method="growth",
                       pre_path="runs/x/checkpoints/step-000010", pre_scores=list(pre), at_learner_steps=at)


def test_reject_waits_leap_every_steps():
    st = state()
    assert st.may_propose(0)
    st.proposed()
    assert not st.accepts(-0.03) and st.accepts(-0.02) and st.accepts(0.1)
    st.reject(learner_steps=10)
    assert st.phase == Phase.IDLE and st.next_proposal_at == 20
    assert not st.may_propose(19) and st.may_propose(20)
    st.requested = True  # a manual request does not wait
    assert st.may_propose(11)
    st.proposed()
    assert not st.requested
    assert st.accounting["proposals"] == 2 and st.accounting["rejected"] == 1


def test_control_branch_paid_keeps_the_leap():
    st = state("control")
    st.proposed()
    st.apply(leap(at=10))
    assert st.phase == Phase.LEAP and not st.may_propose(100)
    assert not st.judging_due(13) and st.judging_due(14)
    st.start_control([1.0, 1.0, 1.0, 0.0], learner_steps=14, branch_checkpoint="step-000034")
    assert st.phase == Phase.CONTROL and st.pending.branch_checkpoint == "step-000034"
    assert not st.judging_due(17) and st.judging_due(18)
    verdict = st.judge_control([1.0, 0.0, 1.0, 0.0])
    assert verdict.paid and verdict.diff == pytest.approx(0.25)
    closed = st.close(verdict.paid, learner_steps=18)
    assert closed.id == "leap-001" and st.phase == Phase.IDLE and st.pending is None
    assert st.kept == [{"id": "leap-001", "from_step": 10, "to_step": 30, "horizon": 20, "scale": 1.0,
                        "method": "growth"}]
    a = st.summary(learner_steps=18)
    assert (a["applied"], a["paid"], a["rolled_back"], a["steps_skipped"], a["steps_lost"]) == (1, 1, 0, 20, 4)
    assert a["net_steps_saved"] == 16 and st.next_proposal_at == 28


def test_control_branch_better_rolls_the_leap_back():
    st = state("control")
    st.proposed()
    st.apply(leap())
    st.start_control([0.0, 0.0, 1.0, 0.0], learner_steps=14, branch_checkpoint="step-000034")
    verdict = st.judge_control([1.0, 1.0, 1.0, 0.0])
    assert not verdict.paid and verdict.diff == pytest.approx(-0.5)
    st.close(verdict.paid, learner_steps=18)
    a = st.summary(18)
    assert (a["paid"], a["rolled_back"], a["steps_skipped"], a["steps_lost"], a["net_steps_saved"]) == (0, 1, 0, 4, -4)
    assert st.kept == []


@pytest.mark.parametrize("scores, expected_gain, paid, lost", [
    ([1.0, 1.0, 1.0, 0.0], 0.2, True, 0),  # +0.5 over the pre-leap policy beats the trend's +0.2: kept, no branch lost
    ([1.0, 0.0, 1.0, 0.0], 0.2, False, 4),  # no gain where the trend expected +0.2: rolled back, its steps lost
])
def test_trend_judge(scores, expected_gain, paid, lost):
    st = state("trend")
    st.proposed()
    st.apply(leap())
    with pytest.raises(LeapStateError):
        st.start_control(scores, 14, "step-000034")  # no control branch under the trend judge
    verdict = st.judge_trend(scores, expected_gain)
    assert verdict.paid is paid
    st.close(verdict.paid, learner_steps=14)
    assert st.summary(14)["steps_lost"] == lost
    assert st.summary(14)["steps_skipped"] == (20 if paid else 0)


def test_each_phase_refuses_the_wrong_transitions():
    st = state("control")
    with pytest.raises(LeapStateError, match="idle"):
        st.close(True, 0)
    with pytest.raises(LeapStateError):
        st.judge_control([1.0, 0.0])
    st.proposed()
    st.apply(leap())
    for wrong in (st.proposed, lambda: st.apply(leap()), lambda: st.reject(0), lambda: st.judge_control([1.0, 0.0])):
        with pytest.raises(LeapStateError, match="leap"):
            wrong()
    with pytest.raises(LeapStateError, match="trend"):
        st.judge_trend([1.0, 0.0, 1.0, 0.0], 0.0)
    st.start_control([1.0, 0.0, 1.0, 0.0], 14, "step-000034")
    with pytest.raises(LeapStateError):
        st.start_control([1.0, 0.0, 1.0, 0.0], 14, "step-000034")


def test_zero_judging_cost_keeps_an_accepted_leap_at_once():
    st = state("none")
    st.proposed()
    assert not st.accepts(-0.05)  # rejected by the paired score alone
    st.reject(learner_steps=10)
    st.requested = True
    st.proposed()
    assert st.accepts(0.0)
    st.apply(leap(at=10))
    st.close(True, learner_steps=10)  # what the controller does right after applying under judge "none"
    a = st.summary(10)
    assert (a["applied"], a["paid"], a["rejected"], a["steps_skipped"], a["steps_lost"]) == (1, 1, 1, 20, 0)
    assert a["net_steps_saved"] == 20 and st.phase == Phase.IDLE and st.next_proposal_at == 20


def test_the_policy_doubles_the_horizon_after_a_paid_leap_halves_it_after_a_failure_and_stops_at_patience():
    st = state("none", start_after=10)
    assert st.gate(5) == "step 5 is before extrapolate.start_after (10)" and st.gate(10) is None
    st.proposed()
    st.apply(leap())
    st.close(True, learner_steps=10)
    assert (st.horizon, st.failures) == (16, 0)  # doubled, capped at max_horizon 16
    for expected in (8, 4):
        st.proposed()
        st.reject(learner_steps=20)
        assert st.horizon == expected
    assert st.stopped and "patience 2" in st.gate(100)
    assert st.policy() == {"horizon": 4, "failures": 2, "stopped": True, "proposals": 3}
    st.request(horizon=3)  # a user's request passes every gate, with its own horizon
    assert st.gate(100) is None and st.proposal_horizon() == 3 and st.may_propose(21)
    st.proposed()
    assert not st.requested and st.proposal_horizon() == 4


def test_the_whole_state_survives_a_checkpoint_in_every_phase():
    import json

    st = state("control")
    st.proposed()
    st.apply(leap(at=10))
    st.start_control([1.0, 0.0, 1.0, 0.0], learner_steps=14, branch_checkpoint="step-000034")
    st.checked_through, st.accounting["extrapolation_s"] = 30, 1.5
    for snapshot in (state("trend").as_dict(), st.as_dict()):
        again = LeapState.from_dict(json.loads(json.dumps(snapshot)))  # as written into meta.json and state.pt
        assert again.as_dict() == snapshot
    again = LeapState.from_dict(json.loads(json.dumps(st.as_dict())))
    assert again.phase == Phase.CONTROL and again.pending.branch_checkpoint == "step-000034"
    assert again.judge_control([1.0, 0.0, 1.0, 0.0]).paid  # the judgement goes on where it stopped
