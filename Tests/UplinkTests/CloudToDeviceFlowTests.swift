import FieldgateCore
import Testing
@testable import Uplink

/// The per-leaf C2D flow in virtual time: one message at a time, held (never burnt) while the leaf cannot take it.
@Suite("C2D flow")
struct CloudToDeviceFlowTests {
    private func flow() -> CloudToDeviceFlow {
        var p = CloudToDevicePolicy()
        p.holdMilliseconds = 50_000
        p.retry = .init(initialMilliseconds: 1000, maximumMilliseconds: 8000)
        p.pauseAfterAbandonMilliseconds = 30_000
        p.pauseWhileUnreachableMilliseconds = 300_000
        return CloudToDeviceFlow(policy: p)
    }

    @Test func oneCreditAtATimeInHubOrder() {
        var f = flow()
        #expect(f.attached(nowMs: 0) == [.grantCredit])
        #expect(f.arrived(token: 1, nowMs: 10) == [.dispatch(token: 1, deadlineMs: 50_010)])
        // No credit goes out before the outcome: the next message cannot overtake this one.
        #expect(f.finished(token: 1, outcome: .complete, nowMs: 20) == [.settle(token: 1, .complete), .grantCredit])
        #expect(f.arrived(token: 2, nowMs: 30) == [.dispatch(token: 2, deadlineMs: 50_030)])
        #expect(f.finished(token: 2, outcome: .reject("bad"), nowMs: 40) == [.settle(token: 2, .reject("bad")), .grantCredit])
    }

    @Test func unreachableLeafIsHeldAndRetriedWhenItSpeaks() {
        var f = flow()
        _ = f.attached(nowMs: 0)
        _ = f.arrived(token: 1, nowMs: 0)
        #expect(f.finished(token: 1, outcome: .unreachable("not seen"), nowMs: 5).isEmpty, "held, not settled")
        #expect(f.isHolding)
        #expect(f.tick(nowMs: 600).isEmpty)
        // The leaf speaks: the same delivery goes to the adapter again, with what is left of the hold.
        #expect(f.reachable(nowMs: 700) == [.dispatch(token: 1, deadlineMs: 50_000)])
        #expect(f.finished(token: 1, outcome: .complete, nowMs: 710) == [.settle(token: 1, .complete), .grantCredit])
    }

    @Test func heldMessageIsRetriedOnBackoff() {
        var f = flow()
        _ = f.attached(nowMs: 0)
        _ = f.arrived(token: 1, nowMs: 0)
        _ = f.finished(token: 1, outcome: .abandon("bus busy"), nowMs: 0)
        #expect(f.tick(nowMs: 700).isEmpty)
        #expect(f.tick(nowMs: 750) == [.dispatch(token: 1, deadlineMs: 50_000)])
        _ = f.finished(token: 1, outcome: .abandon("bus busy"), nowMs: 800)
        #expect(f.tick(nowMs: 2000).isEmpty, "the second retry waits longer")
        #expect(f.tick(nowMs: 2300) == [.dispatch(token: 1, deadlineMs: 50_000)])
    }

    @Test func holdBudgetReleasesAndWithholdsCredit() {
        var f = flow()
        _ = f.attached(nowMs: 0)
        _ = f.arrived(token: 1, nowMs: 0)
        _ = f.finished(token: 1, outcome: .unreachable("not seen"), nowMs: 0)
        // At the end of the hold the message goes back to the hub, and no credit follows: the hub keeps it.
        #expect(f.tick(nowMs: 50_000) == [.settle(token: 1, .abandon("held 50 s without reaching the leaf"))])
        #expect(f.isPaused)
        #expect(f.tick(nowMs: 100_000).isEmpty)
        // A reconnect does not end the pause either.
        f.detached()
        #expect(f.attached(nowMs: 100_000).isEmpty)
        // The leaf is back: one credit, the hub delivers the message again.
        #expect(f.reachable(nowMs: 120_000) == [.grantCredit])
    }

    @Test func pauseEndsWithAProbe() {
        var f = flow()
        _ = f.attached(nowMs: 0)
        _ = f.arrived(token: 1, nowMs: 0)
        _ = f.finished(token: 1, outcome: .abandon("timeout"), nowMs: 49_500)
        #expect(f.isPaused, "no retry fits in the hold: released at once")
        #expect(f.tick(nowMs: 49_500 + 29_999).isEmpty)
        #expect(f.tick(nowMs: 49_500 + 30_000) == [.grantCredit])
    }

    @Test func lateOutcomeOfAnOldDeliveryIsIgnored() {
        var f = flow()
        _ = f.attached(nowMs: 0)
        _ = f.arrived(token: 1, nowMs: 0)
        f.detached()
        #expect(f.attached(nowMs: 10) == [.grantCredit])
        #expect(f.finished(token: 1, outcome: .complete, nowMs: 20).isEmpty)
        #expect(f.arrived(token: 2, nowMs: 30) == [.dispatch(token: 2, deadlineMs: 50_030)])
    }
}
