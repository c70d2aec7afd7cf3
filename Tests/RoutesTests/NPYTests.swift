// NPYTests: .npy encode/decode on literal bytes as numpy writes them, and clear errors for bad files.
import Foundation
import Testing
@testable import Routes

struct NPYTests {
    /// np.save of np.array([[1, 2], [3, 4]], dtype=np.int32) (numpy 2.x, v1.0 header padded to 64 bytes)
    static let numpyBytes: Data = {
        var d = Data([0x93]) + Data("NUMPY".utf8) + Data([1, 0, 118, 0])
        var header = "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }"
        header += String(repeating: " ", count: 128 - 10 - header.utf8.count - 1) + "\n"
        d += Data(header.utf8)
        for v: Int32 in [1, 2, 3, 4] { withUnsafeBytes(of: v.littleEndian) { d += Data($0) } }
        return d
    }()

    @Test func decodesNumpyOutput() throws {
        let a = try NPY.decode(NPYTests.numpyBytes)
        #expect(a.dtype == .int32 && a.shape == [2, 2])
        #expect(try a.int32s() == [1, 2, 3, 4])
    }

    @Test(arguments: NPYDType.allCases)
    func roundTripsEveryDType(dtype: NPYDType) throws {
        let shape = [3, 2, 4]
        let bytes = Data((0..<(24 * dtype.size)).map { UInt8(truncatingIfNeeded: $0 &* 37) })
        let a = NPYArray(dtype: dtype, shape: shape, bytes: bytes)
        let enc = NPY.encode(a)
        #expect(Array(enc.prefix(6)) == [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59])
        #expect((enc.count - bytes.count) % 64 == 0, "data starts 64-byte aligned")
        #expect(try NPY.decode(enc) == a)
    }

    @Test func rejectsWhatItCannotRead() {
        func err(_ d: Data) -> String { do { _ = try NPY.decode(d); return "accepted" } catch { return "\(error)" } }
        #expect(err(Data("hello".utf8)).contains("magic"))
        var truncated = NPYTests.numpyBytes; truncated.removeLast()
        #expect(err(truncated).contains("data bytes"))
        func patch(_ from: String, _ to: String) -> Data {
            var d = NPYTests.numpyBytes
            let r = d.range(of: Data(from.utf8))!
            d.replaceSubrange(r, with: Data(to.utf8))
            return d
        }
        #expect(err(patch("False", "True ")).contains("fortran_order"))
        #expect(err(patch("<i4", ">i4")).contains("big-endian"))
        #expect(err(patch("<i4", "<f8")).contains("unsupported dtype"))
    }

    @Test func int64ValuesMustFitInt32() throws {
        var bytes = Data()
        for v: Int64 in [5, 1 << 40] { withUnsafeBytes(of: v.littleEndian) { bytes += Data($0) } }
        let a = NPYArray(dtype: .int64, shape: [2], bytes: bytes)
        #expect(throws: RoutesError.self) { try a.int32s() }
    }
}
