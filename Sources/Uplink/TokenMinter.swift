import IoTHub

/// Mints the SAS token a leaf puts on the CBS link (docs/iothub-protocol.md §2, §14 point 6).
struct TokenMinter {
    let hostName: String

    /// The CBS audience and the resource a leaf's token covers: `{host}/devices/{id}`.
    func audience(deviceID: String) -> String { "\(hostName)/devices/\(deviceID)" }

    /// The audience of a hub-scope policy token, shared by every leaf of a connection.
    var hubScopeAudience: String { "\(hostName)/devices" }

    /// The audience `leaf` authenticates with.
    func audience(for leaf: LeafConfiguration) -> String {
        if case .sharedAccessPolicy(_, _, .hub) = leaf.credential { return hubScopeAudience }
        return audience(deviceID: leaf.deviceID)
    }

    func token(for leaf: LeafConfiguration, slot: LeafMachine.KeySlot, expiry: Int64) throws(IoTHubError) -> String {
        let resource = audience(deviceID: leaf.deviceID)
        switch leaf.credential {
        case .symmetricKey(let primary, let secondary):
            let key = slot == .secondary ? (secondary ?? primary) : primary
            return try SASToken.generate(resourceURI: resource, key: key, expiry: expiry)
        case .sharedAccessPolicy(let name, let key, let scope):
            let r = scope == .hub ? hubScopeAudience : resource
            return try SASToken.generate(resourceURI: r, key: key, expiry: expiry, keyName: name)
        case .groupKey(let groupKey):
            let key = try deriveDeviceKey(groupKey: groupKey, registrationID: leaf.deviceID)
            return try SASToken.generate(resourceURI: resource, key: key, expiry: expiry)
        case .x509:
            throw IoTHubError(.invalidKey, "\(leaf.deviceID) authenticates with its X.509 certificate, not a SAS token")
        }
    }
}

extension LeafCredential {
    var hasSecondaryKey: Bool {
        if case .symmetricKey(_, let secondary?) = self { return !secondary.isEmpty }
        return false
    }
}

extension LeafConfiguration {
    /// The shared policy this leaf authenticates through, when one token per connection covers it.
    var hubScopePolicy: String? {
        if case .sharedAccessPolicy(let name, _, .hub) = credential { return name }
        return nil
    }
}

extension UplinkConfiguration {
    /// The SAS token `leaf` would put on the CBS link (its primary key), for `fieldgatectl sas-token`.
    public func sasToken(for leaf: LeafConfiguration, expiry: Int64) throws(IoTHubError) -> String {
        try TokenMinter(hostName: hostName).token(for: leaf, slot: .primary, expiry: expiry)
    }

    /// The CBS audience `leaf` puts its token for (`fieldgatectl check`).
    public func cbsAudience(for leaf: LeafConfiguration) -> String { TokenMinter(hostName: hostName).audience(for: leaf) }
}
