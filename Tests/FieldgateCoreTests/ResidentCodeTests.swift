import FieldgateCore
import Testing

@Suite struct ResidentCodeTests {
    @Test func onlyFileMappingsWithoutPrivatePagesAreReleasable() {
        let smaps = """
            55d0aa000000-55d0ab000000 r-xp 00000000 fe:00 5506315                    /usr/sbin/fieldgated
            Size:              16384 kB
            Rss:               12112 kB
            Anonymous:             0 kB
            55d0ab001000-55d0ab100000 r--p 011e4000 fe:00 5506315                    /usr/sbin/fieldgated
            Rss:                 436 kB
            Anonymous:           436 kB
            55d0ab100000-55d0ab200000 rw-p 01251000 fe:00 5506315                    /usr/sbin/fieldgated
            Rss:                1220 kB
            Anonymous:           176 kB
            7f9911ec5000-7f9912142000 r--p 00000000 fe:00 77                         /usr/lib/x86_64-linux-gnu/libcrypto.so.3
            Rss:                2544 kB
            Anonymous:             0 kB
            7f9912142000-7f9912150000 r--s 00000000 fe:00 78                         /var/cache/shared.db
            Rss:                  40 kB
            Anonymous:             0 kB
            7f9912150000-7f9912160000 r-xp 00000000 fe:00 79                         /usr/lib/cold.so
            Rss:                   0 kB
            Anonymous:             0 kB
            7f990c000000-7f990c561000 rw-p 00000000 00:00 0
            Rss:                5464 kB
            Anonymous:          5464 kB
            7ffe12345000-7ffe12347000 r-xp 00000000 00:00 0                          [vdso]
            Rss:                   8 kB
            Anonymous:             0 kB
            """
        #expect(ResidentCode.releasable(smaps: smaps) == [
            .init(start: 0x55d0_aa00_0000, end: 0x55d0_ab00_0000, residentKB: 12112),
            .init(start: 0x7f99_11ec_5000, end: 0x7f99_1214_2000, residentKB: 2544),
        ])
    }
}
