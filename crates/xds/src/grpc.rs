//! gRPC's message framing over HTTP/2: each message is a 5-byte header (a compressed flag and
//! the body's length, big-endian) followed by the body.
//!
//! For the places that speak gRPC without tonic's codec: the ADS server's response encoder,
//! the sidecar's gRPC health probe and the simulator's light clients. Pure byte arithmetic, no
//! I/O.

/// Bytes of a message header.
pub const HEADER_LEN: usize = 5;

/// The header of an uncompressed message whose body is `len` bytes. A body over 4 GiB (which
/// no peer accepts) is marked `u32::MAX` long.
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    let [a, b, c, d] = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [0, a, b, c, d]
}

/// A message header as read: whether the body is compressed, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// The compressed flag (byte 0) was set.
    pub compressed: bool,
    /// Length of the body that follows.
    pub len: usize,
}

/// The header at the start of `buf`, or `None` when fewer than [`HEADER_LEN`] bytes are there.
pub fn parse_header(buf: &[u8]) -> Option<Header> {
    let [flag, a, b, c, d] = *buf.first_chunk::<HEADER_LEN>()?;
    Some(Header {
        compressed: flag != 0,
        len: u32::from_be_bytes([a, b, c, d]) as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back() {
        assert_eq!(header(0), [0, 0, 0, 0, 0]);
        assert_eq!(header(0x0102_0304), [0, 1, 2, 3, 4]);
        let h = parse_header(&[&header(300)[..], b"body"].concat()).expect("header");
        assert_eq!(
            h,
            Header {
                compressed: false,
                len: 300
            }
        );
        assert_eq!(
            parse_header(&[1, 0, 0, 0, 7]).map(|h| h.compressed),
            Some(true)
        );
        assert_eq!(parse_header(&[0, 0, 0]), None);
    }
}
