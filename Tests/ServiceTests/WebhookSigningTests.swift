// Tests of the webhook building blocks that need no network: SHA-256 / HMAC-SHA256 against published
// vectors, Standard Webhooks signatures, the SSRF address classes and the retry schedule.
import Foundation
import XCTest
@testable import Service
@testable import Store

final class WebhookSigningTests: XCTestCase {
    func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

    func testIdempotencyFingerprintIsSHA256() {
        XCTAssertEqual(App.fingerprint("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertNotEqual(App.fingerprint(#"{"steps":1}"#), App.fingerprint(#"{"steps":2}"#))
    }

    func testSHA256MatchesFIPSVectors() {
        XCTAssertEqual(hex(SHA256.hash([])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex(SHA256.hash(Array("abc".utf8))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(hex(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(hex(SHA256.hash([UInt8](repeating: 0x61, count: 1_000_000))),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testHMACMatchesRFC4231() {
        XCTAssertEqual(hex(SHA256.hmac(key: [UInt8](repeating: 0x0b, count: 20), message: Array("Hi There".utf8))),
                       "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        XCTAssertEqual(hex(SHA256.hmac(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8))),
                       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        XCTAssertEqual(hex(SHA256.hmac(key: [UInt8](repeating: 0xaa, count: 131),   // key longer than a block
                                       message: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8))),
                       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }

    func testSignatureIsStandardWebhooksV1() {
        // the example of the Standard Webhooks specification
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        let body = #"{"test": 2432232314}"#
        XCTAssertEqual(WebhookSigner.signature(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1614265330, body: body, secrets: [secret]),
                       "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        let two = WebhookSigner.signature(id: "m", timestamp: 1, body: "{}", secrets: [secret, WebhookSigner.newSecret()])
        XCTAssertEqual(two.split(separator: " ").count, 2)
        XCTAssertTrue(WebhookSigner.newSecret().hasPrefix("whsec_"))
        XCTAssertEqual(WebhookSigner.key(WebhookSigner.newSecret())?.count, 32)
    }

    func testPrivateAndMetadataAddressesAreRefused() throws {
        for a in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                  "224.0.0.1", "::1", "::", "fe80::1", "fd00:ec2::254", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1"] {
            XCTAssertTrue(URLGuard.isPrivate(a), a)
        }
        for a in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] { XCTAssertFalse(URLGuard.isPrivate(a), a) }
        XCTAssertThrowsError(try URLGuard.check("http://127.0.0.1:9/x", allowPrivate: false)) { XCTAssertTrue("\($0)".contains("R3_WEBHOOK_ALLOW_PRIVATE")) }
        XCTAssertThrowsError(try URLGuard.check("http://localhost/", allowPrivate: false))
        XCTAssertThrowsError(try URLGuard.check("http://[::1]:80/", allowPrivate: false))
        XCTAssertNoThrow(try URLGuard.check("http://127.0.0.1:9/x", allowPrivate: true))
        for bad in ["ftp://example.com/", "not a url", "http:///path", "http://user:pw@example.com/", "file:///etc/passwd"] {
            XCTAssertThrowsError(try URLGuard.check(bad, allowPrivate: true), bad)
        }
    }

    func testRetryScheduleFollowsTheSpecification() {
        typealias S = WebhookSchedule
        XCTAssertEqual(S.outcome(attempt: 1, status: 204, retryAfter: nil, unit: 0.5), .delivered)
        XCTAssertEqual(S.outcome(attempt: 1, status: 410, retryAfter: nil, unit: 0.5), .disableEndpoint)
        XCTAssertEqual(S.outcome(attempt: 1, status: nil, retryAfter: nil, unit: 0.5), .retry(after: 5))
        XCTAssertEqual(S.outcome(attempt: 2, status: 500, retryAfter: nil, unit: 0.5), .retry(after: 300))
        XCTAssertEqual(S.outcome(attempt: 9, status: 302, retryAfter: nil, unit: 0.5), .retry(after: 86_400))
        XCTAssertEqual(S.outcome(attempt: 10, status: 500, retryAfter: nil, unit: 0.5), .failed)
        XCTAssertEqual(S.outcome(attempt: 1, status: 500, retryAfter: nil, unit: 0), .retry(after: 4.5))
        XCTAssertEqual(S.outcome(attempt: 1, status: 429, retryAfter: 120, unit: 0.5), .retry(after: 120))
        XCTAssertEqual(S.outcome(attempt: 1, status: 503, retryAfter: 1e9, unit: 0.5), .retry(after: 86_400))
        XCTAssertEqual(S.outcome(attempt: 1, status: 500, retryAfter: 120, unit: 0.5), .retry(after: 5), "Retry-After counts on 429 and 503 only")
        let totalHours: Double = S.delays.reduce(0, +) / 3600   // 5 s + 5 min + 30 min + 2 + 5 + 10 + 14 + 20 + 24 h
        XCTAssertEqual(totalHours, 75.5847, accuracy: 0.001)
        XCTAssertEqual(WebhookSender.retryAfter("7"), 7)
        XCTAssertNil(WebhookSender.retryAfter("soon"))
    }
}
