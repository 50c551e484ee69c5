import FieldgateCore
import IoTHub
import Testing
@testable import Uplink

@Suite("Twin sync machine (no sockets)")
struct TwinSyncTests {
    private func synced(version: Int64 = 5, desired: JSONValue = ["pollSeconds": 10]) -> TwinSync {
        var t = TwinSync(minPatchIntervalMilliseconds: 1000, correlationPrefix: "d")
        let sent = t.attached(nowMs: 0)
        #expect(sent == [.send(.subscribe, correlation: "d-1"), .send(.get, correlation: "d-2")], "subscribe first, then GET")
        _ = t.response(correlation: "d-1", status: 200, body: nil, nowMs: 0)
        var doc = desired
        if case .object(var o) = doc { o["$version"] = .int(version); doc = .object(o) }
        let applied = t.response(correlation: "d-2", status: 200, body: ["desired": doc, "reported": ["$version": 1]], nowMs: 0)
        #expect(applied == [.applyDesired(desired, version: version)])
        return t
    }

    @Test func desiredAppliedByVersionExactlyOnce() {
        var t = synced()
        #expect(t.desiredNotification(["pollSeconds": 30, "$version": 5]) == [], "same version: already applied")
        #expect(t.desiredNotification(["pollSeconds": 30, "$version": 4]) == [], "an old version is ignored")
        #expect(t.desiredNotification(["deadband": 0.5, "$version": 6]) == [.applyDesired(["pollSeconds": 10, "deadband": 0.5], version: 6)])
        // Reattach: the GET returns version 6 again → nothing re-applied; version 7 → applied once.
        t.detached()
        _ = t.attached(nowMs: 0)
        #expect(t.response(correlation: "d-4", status: 200, body: ["desired": ["pollSeconds": 10, "deadband": 0.5, "$version": 6]], nowMs: 0) == [])
        t.detached()
        _ = t.attached(nowMs: 0)
        #expect(t.response(correlation: "d-6", status: 200, body: ["desired": ["pollSeconds": 20, "$version": 7]], nowMs: 0)
                == [.applyDesired(["pollSeconds": 20], version: 7)])
    }

    @Test func notificationsBeforeTheGETAreBufferedAndFiltered() {
        var t = TwinSync(minPatchIntervalMilliseconds: 0, correlationPrefix: "d")
        _ = t.attached(nowMs: 0)
        #expect(t.desiredNotification(["a": 1, "$version": 3]) == [])
        #expect(t.desiredNotification(["b": 2, "$version": 5]) == [])
        let actions = t.response(correlation: "d-2", status: 200, body: ["desired": ["a": 1, "$version": 4, "$metadata": ["x": 1]]], nowMs: 0)
        #expect(actions == [.applyDesired(["a": 1], version: 4), .applyDesired(["a": 1, "b": 2], version: 5)])
    }

    @Test func reportedPatchesFoldWhileOfflineAndAreRateLimited() {
        var t = TwinSync(minPatchIntervalMilliseconds: 1000, correlationPrefix: "d")
        for i in 0..<100 { #expect(t.report(["count": .int(Int64(i)), "state": ["online": false]], id: i, nowMs: 0) == []) }
        #expect(t.report(["state": ["online": .null, "polls": 3]], id: 100, nowMs: 0) == [])
        _ = t.attached(nowMs: 0)
        _ = t.response(correlation: "d-1", status: 200, body: nil, nowMs: 0)
        let actions = t.response(correlation: "d-2", status: 200, body: ["desired": ["$version": 1]], nowMs: 0)
        let expected: JSONValue = ["count": 99, "state": ["online": .null, "polls": 3]]
        #expect(actions == [.applyDesired([:], version: 1), .send(.patch(expected), correlation: "d-3")], "one patch, nulls kept")
        #expect(t.report(["count": 100], id: 101, nowMs: 10) == [], "one patch in flight at a time")
        #expect(t.response(correlation: "d-3", status: 204, body: nil, nowMs: 20) == [.reportedAccepted(Array(0...100))])
        #expect(t.flush(nowMs: 500) == [], "rate limited")
        #expect(t.flush(nowMs: 1020) == [.send(.patch(["count": 100]), correlation: "d-4")])
    }

    @Test func transientPatchFailureRetriesPermanentIsRefused() {
        var t = synced()
        _ = t.report(["a": 1], id: 1, nowMs: 5000)
        _ = t.report(["b": 2], id: 2, nowMs: 5000)
        #expect(t.response(correlation: "d-3", status: 503, body: nil, nowMs: 5001) == [])
        #expect(t.flush(nowMs: 6001) == [.send(.patch(["a": 1, "b": 2]), correlation: "d-4")])
        #expect(t.response(correlation: "d-4", status: 400, body: ["message": "bad"], nowMs: 6002)
                == [.reportedRefused([1, 2], #"the hub refused the reported patch: 400 {"message":"bad"}"#)])
        // A patch in flight when the links drop is folded back under newer ones.
        _ = t.report(["c": 1], id: 3, nowMs: 9000)
        t.detached()
        _ = t.report(["c": .null, "d": 4], id: 4, nowMs: 9001)
        #expect(t.pendingReported == ["c": .null, "d": 4])
    }

    @Test func unansweredRequestsAreRetried() {
        var t = TwinSync(minPatchIntervalMilliseconds: 0, correlationPrefix: "d")
        _ = t.attached(nowMs: 1000)
        #expect(t.expireRequests(nowMs: 30_999) == [])
        #expect(t.expireRequests(nowMs: 31_000) == [.send(.subscribe, correlation: "d-3"), .send(.get, correlation: "d-4")])
    }

    @Test func composeKeepsTheLastWritePerPath() {
        let a: JSONValue = ["x": ["y": 1, "z": 2], "w": 1]
        let b: JSONValue = ["x": ["y": .null], "w": ["v": 1]]
        #expect(TwinRules.compose(a, then: b) == ["x": ["y": .null, "z": 2], "w": ["v": 1]])
    }
}
