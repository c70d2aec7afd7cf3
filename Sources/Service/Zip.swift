// Zip: an uncompressed (stored) ZIP archive, which is what numpy's np.load reads as an .npz.
import CPosix
import Foundation

enum Zip {
    static let crcTable: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// CRC-32 (IEEE) in C, slicing by 8; `reference` is its byte-at-a-time twin.
    static func crc32(_ d: Data) -> UInt32 { d.withUnsafeBytes { r3_crc32(0, $0.baseAddress, UInt64($0.count)) } }

    static func reference(_ d: Data) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        d.withUnsafeBytes { r in crcTable.withUnsafeBufferPointer { t in for b in r { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) } } }
        return c ^ 0xFFFF_FFFF
    }

    /// Files in order; sizes must stay below 4 GiB each (ZIP64 is not written).
    static func stored(_ files: [(name: String, data: Data)]) -> Data {
        var out = Data(), central = Data()
        out.reserveCapacity(files.reduce(0) { $0 + $1.data.count + 30 + $1.name.utf8.count } + 22)
        func u16(_ v: Int, _ d: inout Data) { d.append(UInt8(v & 0xFF)); d.append(UInt8((v >> 8) & 0xFF)) }
        func u32(_ v: UInt32, _ d: inout Data) { for i in 0..<4 { d.append(UInt8((v >> (8 * UInt32(i))) & 0xFF)) } }
        for f in files {
            let name = Data(f.name.utf8), crc = crc32(f.data), offset = UInt32(out.count), size = UInt32(f.data.count)
            u32(0x0403_4B50, &out); u16(20, &out); u16(0, &out); u16(0, &out); u16(0, &out); u16(0x21, &out)
            u32(crc, &out); u32(size, &out); u32(size, &out); u16(name.count, &out); u16(0, &out)
            out.append(name); out.append(f.data)
            u32(0x0201_4B50, &central); u16(20, &central); u16(20, &central); u16(0, &central); u16(0, &central); u16(0, &central)
            u16(0x21, &central); u32(crc, &central); u32(size, &central); u32(size, &central); u16(name.count, &central)
            u16(0, &central); u16(0, &central); u16(0, &central); u16(0, &central); u32(0, &central); u32(offset, &central)
            central.append(name)
        }
        let cdOffset = UInt32(out.count)
        out.append(central)
        u32(0x0605_4B50, &out); u16(0, &out); u16(0, &out); u16(files.count, &out); u16(files.count, &out)
        u32(UInt32(central.count), &out); u32(cdOffset, &out); u16(0, &out)
        return out
    }
}
