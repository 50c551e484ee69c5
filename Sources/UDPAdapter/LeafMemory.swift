import FieldgateCore
import MessageAuthentication
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What the UDP adapter remembers about each leaf across restarts (docs/udp.md): where it last spoke from (so
/// commands reach it before it speaks again), the newest signed timestamp accepted from it (the replay floor),
/// and a digest of the desired document it acknowledged (so it is not sent again unchanged).
struct UDPLeafMemory: Equatable, Sendable {
    struct Leaf: Equatable, Sendable {
        /// `ip:port` (IPv6 in brackets).
        var address: String?
        /// The newest `ts` of a signed datagram accepted from the leaf (ms since the epoch).
        var signedUpToMs: Int64?
        /// Digest of the desired document the leaf acknowledged.
        var desiredDigest: String?
    }

    var leaves: [String: Leaf] = [:]

    func encoded() -> [UInt8] {
        var object: [String: JSONValue] = [:]
        for (id, leaf) in leaves {
            var fields: [String: JSONValue] = [:]
            if let a = leaf.address { fields["address"] = .string(a) }
            if let t = leaf.signedUpToMs { fields["signedUpToMs"] = .int(t) }
            if let d = leaf.desiredDigest { fields["desiredDigest"] = .string(d) }
            object[id] = .object(fields)
        }
        return JSONValue.object(["version": 1, "leaves": .object(object)]).bytes
    }

    /// nil when the bytes are not a memory file of this version.
    static func decode(_ bytes: [UInt8]) -> UDPLeafMemory? {
        guard let root = JSONValue.parse(bytes), root["version"]?.intValue == 1, let leaves = root["leaves"]?.objectValue else { return nil }
        var memory = UDPLeafMemory()
        for (id, fields) in leaves {
            memory.leaves[id] = Leaf(address: fields["address"]?.stringValue, signedUpToMs: fields["signedUpToMs"]?.intValue,
                                     desiredDigest: fields["desiredDigest"]?.stringValue)
        }
        return memory
    }

    /// A stable digest of a desired document (keys sorted).
    static func digest(_ desired: JSONValue) -> String {
        Data(HMACSHA256.authenticationCode(for: desired.bytes, key: Array("fieldgate-desired".utf8)).prefix(16)).base64EncodedString()
    }
}

/// The memory and its file: changes are written (replace by rename) at most every `minimumIntervalMilliseconds`
/// by the receive loop, and at stop. Bounded: only configured leaves are kept.
final class UDPLeafMemoryStore: Sendable {
    let path: String?
    private struct State {
        var memory = UDPLeafMemory()
        var dirty = false
        var lastWriteMs: Int64 = .min / 2
        var warned = false
    }
    private let state = Mutex(State())
    static let minimumIntervalMilliseconds: Int64 = 50

    /// Loads `path` (nil: memory only); an unreadable or foreign file starts empty.
    init(path: String?, leaves: Set<String>) {
        self.path = path
        var memory = path.flatMap(StateFile.read).flatMap(UDPLeafMemory.decode) ?? UDPLeafMemory()
        memory.leaves = memory.leaves.filter { leaves.contains($0.key) }
        state.withLock { $0.memory = memory }
    }

    var memory: UDPLeafMemory { state.withLock { $0.memory } }

    /// Sets what changed for one leaf; the file is rewritten only when something did.
    func update(_ leaf: String, _ body: (inout UDPLeafMemory.Leaf) -> Void) {
        state.withLock { s in
            var entry = s.memory.leaves[leaf] ?? .init()
            let before = entry
            body(&entry)
            if entry != before {
                s.memory.leaves[leaf] = entry
                s.dirty = true
            }
        }
    }

    /// Forgets leaves no longer configured (reload).
    func retain(_ leaves: Set<String>) {
        state.withLock { s in
            let kept = s.memory.leaves.filter { leaves.contains($0.key) }
            if kept.count != s.memory.leaves.count { s.memory.leaves = kept; s.dirty = true }
        }
    }

    /// Writes when something changed and the interval has passed (or `force`). Returns a warning to log once
    /// when the file cannot be written.
    func flush(nowMs: Int64, force: Bool = false) -> String? {
        guard let path else { return nil }
        let bytes: [UInt8]? = state.withLock { s in
            guard s.dirty, force || nowMs - s.lastWriteMs >= Self.minimumIntervalMilliseconds else { return nil }
            s.dirty = false
            s.lastWriteMs = nowMs
            return s.memory.encoded()
        }
        guard let bytes else { return nil }
        guard let error = StateFile.replace(path, with: bytes) else { return nil }
        return state.withLock { s in
            s.dirty = true  // try again later
            guard !s.warned else { return nil }
            s.warned = true
            return "cannot write \(path) (errno \(error)): last-seen addresses and the replay floor will not survive a restart"
        }
    }
}

/// Refuses a signed datagram seen before: each signature is accepted once while its timestamp is in the window,
/// and after a restart nothing at or below the newest timestamp accepted before it (the floor from the memory
/// file), so a datagram captured before a restart or reload cannot be played again.
struct ReplayGuard {
    private var floors: [String: Int64]
    private(set) var newest: [String: Int64] = [:]
    /// Leaves whose newest timestamp advanced since the last `takeChanged`.
    private var changed: Set<String> = []
    private var recentSignatures: Set<String> = []
    private var signatureOrder: [String] = []

    init(floors: [String: Int64] = [:]) { self.floors = floors }

    mutating func accept(leaf: String, signature: String, timestampMs: Int64) -> Bool {
        if let floor = floors[leaf], timestampMs <= floor { return false }
        guard recentSignatures.insert(signature).inserted else { return false }
        signatureOrder.append(signature)
        if signatureOrder.count > 65_536 {
            for s in signatureOrder.prefix(32_768) { recentSignatures.remove(s) }
            signatureOrder.removeFirst(32_768)
        }
        if newest[leaf].map({ timestampMs > $0 }) ?? true {
            newest[leaf] = timestampMs
            changed.insert(leaf)
        }
        return true
    }

    mutating func takeChanged() -> [(String, Int64)] {
        defer { changed = [] }
        return changed.compactMap { leaf in newest[leaf].map { (leaf, $0) } }
    }
}
