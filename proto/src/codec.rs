//! The gRPC codec of `cmdb.v1`: prost encoding, with small per-stream buffers.
//!
//! tonic's default codec gives every stream an 8 KiB encode buffer and an 8 KiB decode
//! buffer, allocated when the stream starts and kept for its life. A collector holds one
//! long-lived stream per agent, and almost every message on it is small (a heartbeat batch
//! is tens of bytes, an ack a few, a metrics summary about a kilobyte), so at 10 000 agents
//! those two buffers alone were ~160 MiB of the collector's heap (measured with heaptrack
//! under `fleet-sim`, see docs/BENCHMARKS.md). Here they start at [`ENCODE_BUFFER`] and
//! [`DECODE_BUFFER`] bytes and grow as a larger message needs (tonic reserves the whole
//! message before decoding it; encoding grows the buffer as it writes), so nothing about
//! what can be sent changes, only what an idle stream holds. The yield threshold (how much
//! a streaming response batches before it is handed to HTTP/2) stays tonic's 32 KiB.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial encode buffer of a stream, in bytes.
pub const ENCODE_BUFFER: usize = 512;
/// Initial decode buffer of a stream, in bytes.
pub const DECODE_BUFFER: usize = 1024;
/// Bytes of encoded messages a streaming response batches before handing them on.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost codec with small initial buffers (see the module doc); the generated client and
/// server of `cmdb.v1` use it (`proto/build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::v1::{self, AgentMessage, agent_message};
    use bytes::Bytes;
    use futures_util::StreamExt;
    use http_body_util::StreamBody;
    use prost::Message;
    use tonic::codec::Streaming;

    fn batch(n: usize) -> AgentMessage {
        AgentMessage {
            kind: Some(agent_message::Kind::Batch(v1::Batch {
                events: (0..n)
                    .map(|i| v1::Event {
                        seq: i as u64,
                        ..Default::default()
                    })
                    .collect(),
            })),
        }
    }

    fn framed(m: &AgentMessage) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Large messages (which make the patched decoder give its buffer back) between small
    /// ones, cut into HTTP/2 data frames at awkward places: a frame that ends inside the
    /// next message's header, one that holds the end of a large message and the start of
    /// the next. Every message comes out whole and in order.
    #[tokio::test]
    async fn messages_survive_buffer_shrinking_at_any_frame_boundary() {
        let msgs = vec![
            batch(1),
            batch(20_000),
            batch(2),
            batch(30_000),
            batch(30_000),
            batch(3),
        ];
        let wire: Vec<u8> = msgs.iter().flat_map(framed).collect();
        assert!(wire.len() > 100 * DECODE_BUFFER);
        for cut in [1usize, 3, 7, 1000, 4093, 16_384, 65_537] {
            let frames: Vec<Result<http_body::Frame<Bytes>, tonic::Status>> = wire
                .chunks(cut)
                .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let body = StreamBody::new(futures_util::stream::iter(frames));
            let mut stream: Streaming<AgentMessage> = Streaming::new_request(
                LeanCodec::<AgentMessage, AgentMessage>::default().decoder(),
                body,
                None,
                Some(4 * 1024 * 1024),
            );
            let mut got = Vec::new();
            while let Some(m) = stream.next().await {
                got.push(m.unwrap());
            }
            assert_eq!(got, msgs, "frames of {cut} bytes");
        }
    }
}
