// WebhookSigner: Standard Webhooks signing. Secrets are "whsec_" + base64 of 32 random bytes; the
// signature of (id, timestamp, body) is "v1," + base64(HMAC-SHA256(secret bytes, "id.timestamp.body")).
import Foundation

enum WebhookSigner {
    static func newSecret() -> String {
        var g = SystemRandomNumberGenerator()
        return "whsec_" + Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &g) }).base64EncodedString()
    }

    static func key(_ secret: String) -> [UInt8]? {
        let b64 = secret.hasPrefix("whsec_") ? String(secret.dropFirst(6)) : secret
        return Data(base64Encoded: b64).map { [UInt8]($0) }
    }

    /// The `webhook-signature` header value: one `v1,<sig>` per secret, space-separated.
    static func signature(id: String, timestamp: Int, body: String, secrets: [String]) -> String {
        let message = [UInt8]("\(id).\(timestamp).\(body)".utf8)
        return secrets.compactMap { s in key(s).map { "v1," + Data(SHA256.hmac(key: $0, message: message)).base64EncodedString() } }
            .joined(separator: " ")
    }
}
