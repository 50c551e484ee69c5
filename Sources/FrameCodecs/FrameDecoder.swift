import FieldgateCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// How a frame's bytes become a reading: its values (a JSON object) and, when the frame names it, the leaf.
public enum FrameFormat: Sendable, Equatable {
    /// A JSON object; `idField` names the leaf (else the port's leaf), `values` is the object (minus the id) or
    /// its `values` member when present.
    case json(idField: String?)
    /// Comma- (or `separator`-) separated fields mapped by position onto names; numbers become numbers.
    case csv(fields: [String], separator: UInt8 = UInt8(ascii: ","), idField: String?)
    /// `key=value` pairs separated by `separator` (default space); `fieldMap` renames keys (others dropped when
    /// `onlyMapped`).
    case keyValue(separator: UInt8 = UInt8(ascii: " "), fieldMap: [String: String], onlyMapped: Bool, idField: String?)
    /// A regular expression with named groups; each group becomes a value; `idField` may be one of them.
    case regex(pattern: String, idField: String?)
    /// The frame as it is, base64 in `{"raw": …}`.
    case raw
}

/// Why a frame was not a reading.
public enum FrameRejection: String, Error, Sendable, CaseIterable {
    case notUTF8, malformed, noMatch, missingID
}

public struct DecodedFrame: Sendable, Equatable {
    /// The leaf the frame names, if the format has an id field.
    public var leaf: String?
    public var values: JSONValue

    public init(leaf: String?, values: JSONValue) {
        self.leaf = leaf
        self.values = values
    }
}

/// Not Sendable: a compiled `Regex` is not; each adapter thread keeps its own decoder.
public struct FrameDecoder {
    public let format: FrameFormat
    private let regex: Regex<AnyRegexOutput>?

    public init(_ format: FrameFormat) throws(FrameFormatError) {
        self.format = format
        if case .regex(let pattern, _) = format {
            do { regex = try Regex(pattern) } catch { throw FrameFormatError("the pattern \(pattern) is not a valid regular expression: \(error)") }
        } else {
            regex = nil
        }
    }

    public func decode(_ frame: [UInt8]) -> Result<DecodedFrame, FrameRejection> {
        switch format {
        case .raw:
            return .success(DecodedFrame(leaf: nil, values: ["raw": .string(Data(frame).base64EncodedString())]))
        case .json(let idField):
            guard case .object(var o)? = JSONValue.parse(frame) else { return .failure(.malformed) }
            var leaf: String?
            if let idField {
                guard let id = o[idField]?.stringValue else { return .failure(.missingID) }
                leaf = id
                o[idField] = nil
            }
            if case .object? = o["values"] { return .success(DecodedFrame(leaf: leaf, values: o["values"]!)) }
            return .success(DecodedFrame(leaf: leaf, values: .object(o)))
        case .csv(let fields, let separator, let idField):
            guard let text = String(validating: frame, as: UTF8.self) else { return .failure(.notUTF8) }
            let parts = text.split(separator: Character(UnicodeScalar(separator)), omittingEmptySubsequences: false)
            guard parts.count == fields.count else { return .failure(.malformed) }
            return named(zip(fields, parts.map { String($0).trimmingSpaces }).map { ($0, $1) }, idField: idField)
        case .keyValue(let separator, let fieldMap, let onlyMapped, let idField):
            guard let text = String(validating: frame, as: UTF8.self) else { return .failure(.notUTF8) }
            var pairs: [(String, String)] = []
            for token in text.split(separator: Character(UnicodeScalar(separator))) {
                guard let eq = token.firstIndex(of: "=") else { return .failure(.malformed) }
                let key = String(token[..<eq]), value = String(token[token.index(after: eq)...])
                if let mapped = fieldMap[key] { pairs.append((mapped, value)) } else if !onlyMapped { pairs.append((key, value)) }
            }
            guard !pairs.isEmpty else { return .failure(.malformed) }
            return named(pairs, idField: idField)
        case .regex(_, let idField):
            guard let text = String(validating: frame, as: UTF8.self) else { return .failure(.notUTF8) }
            guard let regex, let match = try? regex.wholeMatch(in: text) else { return .failure(.noMatch) }
            var pairs: [(String, String)] = []
            for element in match.output {
                guard let name = element.name, let sub = element.substring else { continue }
                pairs.append((name, String(sub)))
            }
            return named(pairs, idField: idField)
        }
    }

    /// Named text fields → values (numbers where they parse), the id field taken out.
    private func named(_ pairs: [(String, String)], idField: String?) -> Result<DecodedFrame, FrameRejection> {
        var values: [String: JSONValue] = [:]
        var leaf: String?
        for (k, v) in pairs {
            if k == idField { leaf = v; continue }
            if let i = Int64(v) { values[k] = .int(i) } else if let d = Double(v), d.isFinite { values[k] = .double(d) } else { values[k] = .string(v) }
        }
        if idField != nil && leaf == nil { return .failure(.missingID) }
        return .success(DecodedFrame(leaf: leaf, values: .object(values)))
    }
}

public struct FrameFormatError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
    public var isRetriable: Bool { false }
}

extension String {
    fileprivate var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return String(s)
    }
}
