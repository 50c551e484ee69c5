import FieldgateCore
import IoTHub

/// A device twin: tags, desired and reported properties with `$version` and `$metadata` (docs/iothub-protocol.md §7.5).
public struct TwinDocument: Codable, Sendable, Equatable {
    public var deviceId: String
    public var tags: JSONValue = .object([:])
    public var desired: JSONValue = .object([:])
    public var desiredVersion: Int64 = 1
    public var desiredMetadata: JSONValue = .object([:])
    public var reported: JSONValue = .object([:])
    public var reportedVersion: Int64 = 1
    public var reportedMetadata: JSONValue = .object([:])
    /// The twin's own version (every change).
    public var version: Int64 = 1

    public init(deviceId: String, nowMilliseconds: Int64) {
        self.deviceId = deviceId
        let stamp = JSONValue.object(["$lastUpdated": .string(WallClock.iso8601(milliseconds: nowMilliseconds))])
        desiredMetadata = stamp
        reportedMetadata = stamp
    }

    /// Applies a reported-properties patch from the device; returns the new reported `$version`.
    public mutating func patchReported(_ patch: JSONValue, nowMilliseconds: Int64) throws(HubError) -> Int64 {
        reported = try Self.merged(patch, into: reported, section: "reported")
        reportedVersion += 1
        version += 1
        reportedMetadata = Self.stamp(patch, into: reportedMetadata, at: nowMilliseconds, version: nil)
        return reportedVersion
    }

    /// Applies a desired-properties patch from the service; returns the patch as pushed to the device
    /// (with `$version`).
    public mutating func patchDesired(_ patch: JSONValue, nowMilliseconds: Int64) throws(HubError) -> JSONValue {
        desired = try Self.merged(patch, into: desired, section: "desired")
        desiredVersion += 1
        version += 1
        desiredMetadata = Self.stamp(patch, into: desiredMetadata, at: nowMilliseconds, version: desiredVersion)
        var pushed = patch.objectValue ?? [:]
        pushed["$version"] = .int(desiredVersion)
        return .object(pushed)
    }

    /// The merge patch that turns `current` into `target`: keys only in `current` become null, objects on both sides
    /// recurse, `$`-keys of `target` (a twin read back carries `$metadata`, `$version`) are left out. A replacement
    /// thus goes through the rules, metadata, versions and desired push of a patch.
    static func replacementPatch(from current: JSONValue, to target: JSONValue) -> JSONValue {
        guard case .object(let old) = current, case .object(let new) = target else { return target }
        var patch: [String: JSONValue] = [:]
        for key in old.keys where new[key] == nil { patch[key] = .null }
        for (key, value) in new where !key.hasPrefix("$") {
            if case .object? = old[key], case .object = value {
                patch[key] = replacementPatch(from: old[key]!, to: value)
            } else {
                patch[key] = value
            }
        }
        return .object(patch)
    }

    public mutating func patchTags(_ patch: JSONValue) throws(HubError) {
        try Self.validate(patch)
        tags = TwinRules.merge(patch, into: tags)
        version += 1
    }

    /// The body a device gets for a twin GET.
    public var deviceView: JSONValue {
        ["desired": Self.with(desired, version: desiredVersion), "reported": Self.with(reported, version: reportedVersion)]
    }

    /// The twin as the service API shows it.
    public func serviceView(etag: String, status: String) -> JSONValue {
        var d = desired.objectValue ?? [:]
        d["$metadata"] = desiredMetadata
        d["$version"] = .int(desiredVersion)
        var r = reported.objectValue ?? [:]
        r["$metadata"] = reportedMetadata
        r["$version"] = .int(reportedVersion)
        return [
            "deviceId": .string(deviceId), "etag": .string(etag), "version": .int(version), "status": .string(status),
            "tags": tags, "properties": ["desired": .object(d), "reported": .object(r)],
        ]
    }

    private static func validate(_ patch: JSONValue) throws(HubError) {
        do { try TwinRules.validatePatch(patch) } catch { throw HubError(.badRequest, error.message) }
    }

    /// The section after a JSON merge of `patch`, which must follow the twin rules and keep the section ≤ 8 KB.
    private static func merged(_ patch: JSONValue, into current: JSONValue, section: String) throws(HubError) -> JSONValue {
        try validate(patch)
        let result = TwinRules.merge(patch, into: current)
        guard TwinRules.sectionSize(result) <= TwinRules.maxSectionBytes else {
            throw HubError(.badRequest, "\(section) properties would exceed \(TwinRules.maxSectionBytes) bytes")
        }
        return result
    }

    private static func with(_ section: JSONValue, version: Int64) -> JSONValue {
        var o = section.objectValue ?? [:]
        o["$version"] = .int(version)
        return .object(o)
    }

    /// Metadata mirrors the patch's shape: every node it touches gets `$lastUpdated` (and for desired,
    /// `$lastUpdatedVersion`); deleted keys lose their metadata.
    static func stamp(_ patch: JSONValue, into metadata: JSONValue, at ms: Int64, version: Int64?) -> JSONValue {
        var meta = metadata.objectValue ?? [:]
        meta["$lastUpdated"] = .string(WallClock.iso8601(milliseconds: ms))
        if let version { meta["$lastUpdatedVersion"] = .int(version) }
        guard case .object(let p) = patch else { return .object(meta) }
        for (k, v) in p {
            switch v {
            case .null: meta[k] = nil
            case .object: meta[k] = stamp(v, into: meta[k] ?? .object([:]), at: ms, version: version)
            default:
                var leaf: [String: JSONValue] = ["$lastUpdated": .string(WallClock.iso8601(milliseconds: ms))]
                if let version { leaf["$lastUpdatedVersion"] = .int(version) }
                meta[k] = .object(leaf)
            }
        }
        return .object(meta)
    }
}
