extension String {
    /// Left-pads to `width` characters (hex bytes, fixed-width file names, table columns).
    public func leftPadded(to width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}

extension StringProtocol {
    /// Without leading and trailing whitespace (FoundationEssentials has no `trimmingCharacters(in:)`).
    public func trimmed() -> String { trimmed { $0.isWhitespace } }

    public func trimmed(while drop: (Character) -> Bool) -> String {
        guard let first = firstIndex(where: { !drop($0) }), let last = lastIndex(where: { !drop($0) }) else { return "" }
        return String(self[first...last])
    }
}

/// The directory part of a path ("" for a bare name), as `dirname` without its "." for a bare name.
public func directoryOf(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "" }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}
