import ModbusIO

/// One read request: a contiguous range of one table that covers some points of one device.
public struct ReadBlock: Sendable, Equatable {
    public var table: ModbusTable
    public var start: Int
    public var count: Int
    /// Indices of the points it covers (into the device's point list).
    public var points: [Int]
    public var intervalMilliseconds: Int64

    public var end: Int { start + count }
}

/// Coalesces points into as few requests as the protocol allows: points with the same poll interval in the same
/// table are merged while the unused registers between them stay within `maxGap` (bits: `maxGap` × 16) and the
/// request stays within the table's limit (125 registers, 2000 bits). Reading a few unused registers is cheaper
/// than another round trip, on RS-485 especially; a gap of 0 merges only adjacent points.
public enum ReadPlanner {
    public static func plan(_ points: [ModbusPoint], defaultIntervalMilliseconds: Int64, maxGap: Int) -> [ReadBlock] {
        var groups: [String: [(Int, ModbusPoint)]] = [:]
        var keys: [(Int64, ModbusTable)] = []
        for (i, p) in points.enumerated() {
            let interval = p.pollMilliseconds ?? defaultIntervalMilliseconds
            let key = "\(interval)/\(p.table.rawValue)"
            if groups[key] == nil { keys.append((interval, p.table)) }
            groups[key, default: []].append((i, p))
        }
        var blocks: [ReadBlock] = []
        for (interval, table) in keys.sorted(by: { ($0.0, $0.1) < ($1.0, $1.1) }) {
            let members = groups["\(interval)/\(table.rawValue)"]!.sorted { ($0.1.address, $0.0) < ($1.1.address, $1.0) }
            let gap = table.isBits ? maxGap * 16 : maxGap
            var current: ReadBlock?
            for (i, p) in members {
                if var b = current, p.address - b.end <= gap, max(b.end, p.addresses.upperBound) - b.start <= table.maxReadCount {
                    b.count = max(b.end, p.addresses.upperBound) - b.start
                    b.points.append(i)
                    current = b
                } else {
                    if let b = current { blocks.append(b) }
                    current = ReadBlock(table: table, start: p.address, count: p.count, points: [i], intervalMilliseconds: interval)
                }
            }
            if let b = current { blocks.append(b) }
        }
        return blocks
    }
}
