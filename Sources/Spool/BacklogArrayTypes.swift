extension Spool {
    /// Allocates, once, an array of each type that a gateway which has delivered nothing yet first allocates when a
    /// backlog drains (the acknowledged ranges, the leaves listing a cold segment and their index sections, the sync
    /// rounds of acknowledgements), and returns their capacities so that the allocations are not optimized away.
    ///
    /// Why: the Swift runtime builds a generic array's type metadata from its mangled name the first time code asks
    /// for it. fieldgated gives its start-up code pages back once it is up (`ResidentCode`), so a first backlog
    /// drain afterwards mapped the runtime's demangler and the binary's type-reference sections again: ~0.2 MB of
    /// the drain's peak, resident from then on. Found with breakpoints on `swift_getTypeByMangledNameInContext2`
    /// during `fieldgate-bench daemon-memory --drain`; a type added to that path without a line here costs memory,
    /// never correctness.
    static func instantiateBacklogArrayTypes() -> Int {
        var ranges: [ClosedRange<UInt64>] = []
        ranges.reserveCapacity(1)
        var flags: [Bool] = []
        flags.reserveCapacity(1)
        var slots: [Int32] = []
        slots.reserveCapacity(1)
        var sections: [(slot: Int32, bytes: [UInt8])] = []
        sections.reserveCapacity(1)
        var handles: [FileHandle] = []
        handles.reserveCapacity(1)
        var maybeHandles: [FileHandle?] = []
        maybeHandles.reserveCapacity(1)
        return ranges.capacity + flags.capacity + slots.capacity + sections.capacity + handles.capacity + maybeHandles.capacity
    }
}
