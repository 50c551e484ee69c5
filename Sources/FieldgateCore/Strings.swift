extension String {
    /// Left-pads to `width` characters (hex bytes, fixed-width file names, table columns).
    public func leftPadded(to width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}
