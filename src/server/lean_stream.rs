//! The keep-alive streams (RegistryService.KeepAlive, LeaseService.KeepAlive) without tonic's
//! codec: the request body's gRPC messages decoded as they arrive, and the answers written back
//! as data frames (those ready together in one) and `grpc-status` trailers. What the stream does
//! is `keepalive::serve`'s, the same on tonic's path.
//!
//! Architecture invariant: decides nothing about a message but whether it is a well-formed gRPC
//! message within the size limit; a malformed one ends the stream with the status tonic gives it
//! (INTERNAL for a compressed flag or bytes that do not decode, OUT_OF_RANGE over the limit).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_core::Stream;
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame};
use tonic::Status;

use super::keepalive::AnswerStream;
use super::lean::{PREFIX_BYTES, announced_length, encode_message};
/// Answers gathered into one data frame at most (bytes), when several are ready at once.
const FRAME_BYTES_MAX: usize = 32 * 1024;

/// The request body's messages, decoded one by one as their bytes arrive.
pub struct Messages<B, M> {
    body: B,
    buffer: BytesMut,
    limit: usize,
    /// The body has ended (or failed): nothing more is read from it.
    ended: bool,
    _message: std::marker::PhantomData<fn() -> M>,
}

impl<B, M> Messages<B, M> {
    pub fn new(body: B, limit: usize) -> Self {
        Messages {
            body,
            buffer: BytesMut::new(),
            limit,
            ended: false,
            _message: std::marker::PhantomData,
        }
    }

    /// The next whole message in the buffer, if one is there; an error ends the stream.
    fn take_message(&mut self) -> Option<Result<M, Status>>
    where
        M: prost::Message + Default,
    {
        if self.buffer.len() < PREFIX_BYTES {
            return None;
        }
        let compressed = self.buffer[0];
        let length = announced_length(&self.buffer);
        if compressed != 0 {
            self.ended = true;
            return Some(Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            )));
        }
        if length > self.limit {
            self.ended = true;
            return Some(Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {length} bytes, the limit is: {} bytes",
                self.limit
            ))));
        }
        if self.buffer.len() < PREFIX_BYTES + length {
            self.buffer.reserve(PREFIX_BYTES + length - self.buffer.len());
            return None;
        }
        self.buffer.advance(PREFIX_BYTES);
        let message = self.buffer.split_to(length).freeze();
        Some(M::decode(message).map_err(|error| {
            self.ended = true;
            Status::internal(error.to_string())
        }))
    }
}

impl<B, M> Stream for Messages<B, M>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    M: prost::Message + Default,
{
    type Item = Result<M, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(message) = this.take_message() {
                return Poll::Ready(Some(message));
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    // Data is buffered; a client's trailers mean nothing here.
                    if let Ok(data) = frame.into_data() {
                        match this.buffer.is_empty() {
                            true => this.buffer = BytesMut::from(data),
                            false => this.buffer.put(data),
                        }
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(Status::from_error(error.into()))));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    if !this.buffer.is_empty() {
                        return Poll::Ready(Some(Err(Status::internal("the stream ended inside a message"))));
                    }
                }
            }
        }
    }
}

/// A stream's answer: gRPC's headers now, its messages as they come, its status at the end.
pub fn respond<M>(answers: AnswerStream<M>) -> Response<tonic::body::Body>
where
    M: prost::Message + 'static,
{
    let mut response = Response::new(tonic::body::Body::new(Answers {
        answers,
        status: None,
        ended: false,
    }));
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// The answers' body: data frames of framed messages, then the trailers.
struct Answers<M> {
    answers: AnswerStream<M>,
    /// The status the stream ended with, written as trailers after the data before it.
    status: Option<Status>,
    ended: bool,
}

impl<M: prost::Message> Body for Answers<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let mut frame = BytesMut::new();
        while self.status.is_none() && frame.len() < FRAME_BYTES_MAX {
            match self.answers.as_mut().poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(message))) => encode_message(&message, &mut frame),
                Poll::Ready(Some(Err(status))) => self.status = Some(status),
                Poll::Ready(None) => self.status = Some(Status::new(tonic::Code::Ok, "")),
            }
        }
        if !frame.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(frame.freeze()))));
        }
        let Some(status) = self.status.take() else {
            return Poll::Pending;
        };
        self.ended = true;
        let mut trailers = HeaderMap::with_capacity(2);
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", HeaderValue::from_static("13"));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto as pb;
    use futures_util::StreamExt;
    use http_body_util::StreamBody;
    use prost::Message;

    type Chunks = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

    fn body(chunks: Vec<Vec<u8>>) -> Chunks {
        StreamBody::new(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(Frame::data(Bytes::from(c))))
                .collect::<Vec<_>>(),
        ))
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let mut frame = BytesMut::new();
        encode_message(message, &mut frame);
        frame.to_vec()
    }

    fn beat(batch_id: u64) -> pb::KeepAliveRequest {
        pb::KeepAliveRequest {
            agent_ids: vec![format!("{batch_id:032x}")],
            batch_id,
        }
    }

    async fn read_all(chunks: Vec<Vec<u8>>, limit: usize) -> Vec<Result<pb::KeepAliveRequest, Status>> {
        Messages::<_, pb::KeepAliveRequest>::new(body(chunks), limit)
            .collect()
            .await
    }

    #[tokio::test]
    async fn messages_split_across_frames_or_sharing_one_are_decoded_in_order() {
        let (one, two, three) = (framed(&beat(1)), framed(&beat(2)), framed(&beat(3)));
        let mut together = two.clone();
        together.extend_from_slice(&three[..4]);
        let chunks = vec![one[..3].to_vec(), one[3..].to_vec(), together, three[4..].to_vec()];
        let read: Vec<u64> = (read_all(chunks, 1024).await.into_iter())
            .map(|m| m.expect("decodes").batch_id)
            .collect();
        assert_eq!(read, [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_compressed_oversized_torn_or_undecodable_message_ends_the_stream_with_tonics_status() {
        let mut compressed = framed(&beat(1));
        compressed[0] = 1;
        let read = read_all(vec![framed(&beat(7)), compressed, framed(&beat(2))], 1024).await;
        assert_eq!(read.len(), 2, "the stream ends at the bad message");
        assert_eq!(read[0].as_ref().unwrap().batch_id, 7);
        assert_eq!(read[1].as_ref().unwrap_err().code(), tonic::Code::Internal);

        let big = framed(&beat(1));
        let read = read_all(vec![big.clone()], big.len() - PREFIX_BYTES - 1).await;
        let status = read[0].as_ref().unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(status.message().contains("message length too large"), "{status:?}");

        let torn = framed(&beat(1));
        let read = read_all(vec![torn[..torn.len() - 1].to_vec()], 1024).await;
        assert_eq!(read[0].as_ref().unwrap_err().code(), tonic::Code::Internal);

        let read = read_all(vec![vec![0, 0, 0, 0, 2, 0xff, 0xff]], 1024).await;
        assert_eq!(read[0].as_ref().unwrap_err().code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn answers_ready_together_share_a_frame_and_the_status_comes_last_as_trailers() {
        let answers = |end: Option<Status>| -> AnswerStream<pb::KeepAliveResponse> {
            let mut items: Vec<Result<pb::KeepAliveResponse, Status>> = (1..=3)
                .map(|batch_id| {
                    Ok(pb::KeepAliveResponse {
                        batch_id,
                        results: vec![],
                    })
                })
                .collect();
            items.extend(end.map(Err));
            Box::pin(futures_util::stream::iter(items))
        };
        for (end, want) in [(None, "0"), (Some(Status::invalid_argument("bad")), "3")] {
            let mut body = respond(answers(end)).into_body();
            let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
            let mut data = &data[..];
            let mut batch_ids = vec![];
            while !data.is_empty() {
                let length = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
                let message = pb::KeepAliveResponse::decode(&data[PREFIX_BYTES..PREFIX_BYTES + length]).unwrap();
                batch_ids.push(message.batch_id);
                data = &data[PREFIX_BYTES + length..];
            }
            assert_eq!(batch_ids, [1, 2, 3], "three ready answers, one frame");
            let trailers = body.frame().await.unwrap().unwrap().into_trailers().unwrap();
            assert_eq!(trailers["grpc-status"], want);
            assert!(body.frame().await.is_none());
        }
    }

    use http_body_util::BodyExt;
}
