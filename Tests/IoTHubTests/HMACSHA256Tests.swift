import FieldgateCore
import MessageAuthentication
import Testing

@Suite("HMAC-SHA256 (libcrypto)")
struct HMACSHA256Tests {
    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String($0, radix: 16).leftPadded(to: 2, with: "0") }.joined() }

    @Test("RFC 4231 test cases 2 and 6 (a key longer than the block); verification is exact")
    func rfc4231() {
        let short = HMACSHA256.authenticationCode(for: Array("what do ya want for nothing?".utf8), key: Array("Jefe".utf8))
        #expect(Self.hex(short) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        let longKey = [UInt8](repeating: 0xAA, count: 131)
        let message = Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8)
        let long = HMACSHA256.authenticationCode(for: message, key: longKey)
        #expect(Self.hex(long) == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        #expect(HMACSHA256.isValid(long, for: message, key: longKey))
        var flipped = long
        flipped[31] ^= 1
        #expect(!HMACSHA256.isValid(flipped, for: message, key: longKey))
        #expect(!HMACSHA256.isValid(Array(long.dropLast()), for: message, key: longKey))
        #expect(HMACSHA256.authenticationCode(for: [], key: []).count == 32)
    }
}
