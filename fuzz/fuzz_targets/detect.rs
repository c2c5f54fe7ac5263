//! Protocol detection (`proxy::detect`) on arbitrary client bytes.
//!
//! The input is `[n, sizes[0..n], stream...]`: the client's stream arrives in reads of the sizes
//! the fuzzer chose (a size of 0 is a read that is not ready yet), so detection sees the same
//! bytes split at every possible point. Checked, beyond "no panic":
//! - `classify` never takes back a decision: once a prefix is classified, every longer prefix
//!   gets the same answer (this is what makes `detect` independent of how the bytes arrive);
//! - `detect` answers what `classify` says of the shortest decided prefix (or opaque at the end
//!   of a stream that never decided, or `UnexpectedEof` for an empty one);
//! - the bytes it read are a prefix of the stream, and `Rewind` replays the whole stream, byte
//!   for byte, whatever sizes the reader asks for.

#![no_main]

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use proxy::detect::{Detected, Rewind, Wait, classify, detect};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// A client whose bytes come in reads of the given sizes; 0 is one `Pending` first.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: VecDeque<usize>,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let want = self.sizes.pop_front().unwrap_or(usize::MAX);
        if want == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = want.min(out.remaining()).min(self.data.len() - self.pos);
        let pos = self.pos;
        out.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// What detection must say of `stream`: `classify` byte by byte.
fn expected(stream: &[u8]) -> Option<Detected> {
    let mut decided = None;
    for end in 1..=stream.len() {
        match (decided, classify(&stream[..end])) {
            (None, d) => decided = d,
            (Some(d), now) => assert_eq!(now, Some(d), "classify changed its mind at byte {end}"),
        }
    }
    decided
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let want = expected(stream);

    let mut client = Chunked {
        data: stream.to_vec(),
        pos: 0,
        sizes: sizes.iter().map(|s| usize::from(*s % 32)).collect(),
    };
    runtime().block_on(async {
        let got = detect(&mut client, Wait::UpTo(Duration::from_secs(3600))).await;
        let (detected, prefix) = match got {
            Ok(v) => v,
            Err(e) => {
                assert!(
                    stream.is_empty(),
                    "detect failed on {} bytes: {e}",
                    stream.len()
                );
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                return;
            }
        };
        assert_eq!(
            detected,
            want.unwrap_or(Detected::Opaque),
            "stream {stream:?}"
        );
        assert!(
            stream.starts_with(&prefix),
            "read bytes are not the stream's first bytes"
        );

        // Replay through Rewind with reads of the sizes the fuzzer chose again.
        let mut replay = Rewind::new(prefix, client);
        let mut all = Vec::with_capacity(stream.len());
        let mut i = 0;
        loop {
            let size = 1 + usize::from(sizes.get(i).copied().unwrap_or(255) % 64);
            i += 1;
            let mut buf = vec![0u8; size];
            let k = replay.read(&mut buf).await.expect("replay read");
            if k == 0 {
                break;
            }
            all.extend_from_slice(&buf[..k]);
        }
        assert_eq!(all, stream, "Rewind did not replay the stream as it was");
    });
});
