//! The gRPC service of [`AdsServer`]: Delta ADS framed by hand on the response side.
//!
//! tonic's own response encoder writes every message of a stream into one buffer that keeps the
//! capacity of the largest message for the life of the stream: with a first sync of a few MB per
//! proxy, that is a few MB per connected proxy, held until it disconnects. Here each response is
//! encoded when HTTP/2 asks for it, from the shared encodings, a piece of a few KB at a time
//! (`ads::response`), each freed once sent. Requests are decoded by tonic as usual.
//! State-of-the-world ADS answers `UNIMPLEMENTED`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, Streaming};
use tonic::codegen::{Bytes, Service, StdError, http};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::response::Chunks;
use super::server::{AdsServer, Queued};

const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS gRPC service, to add to a `tonic::transport::Server` (see [`AdsServer::service`]).
#[derive(Clone, Debug)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub(crate) fn new(server: AdsServer) -> AdsService {
        AdsService { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != DELTA_PATH {
            let status = Status::unimplemented(
                "state-of-the-world ADS is not served; use DeltaAggregatedResources",
            );
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let server = self.server.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let mut codec =
                tonic_prost::ProstCodec::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>::default();
            let inbound = Streaming::new_request(
                RequestDecoder(codec.decoder()),
                body,
                None,
                Some(server.max_request_size()),
            );
            let mut request = tonic::Request::new(inbound);
            *request.metadata_mut() = MetadataMap::from_headers(parts.headers);
            *request.extensions_mut() = parts.extensions;
            let response = match server.delta_aggregated_resources(request).await {
                Ok(r) => r,
                Err(status) => return Ok(status.into_http()),
            };
            let rx = response.into_inner().0;
            let mut http = http::Response::new(Body::new(ResponseBody {
                rx: Some(rx),
                sending: None,
            }));
            http.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            Ok(http)
        })
    }
}

/// tonic's request decoder with a small first buffer: requests are ACKs and subscriptions of a
/// few hundred bytes, and the default 8 KB is allocated for every connected proxy. It grows
/// for a larger request.
struct RequestDecoder<D>(D);

impl<D: Decoder<Item = DeltaDiscoveryRequest, Error = Status>> Decoder for RequestDecoder<D> {
    type Item = DeltaDiscoveryRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(256, 32 * 1024)
    }
}

/// The response stream: one gRPC message per response, in pieces ([`Chunks`]), then the status
/// in the trailers.
struct ResponseBody {
    rx: Option<mpsc::Receiver<Queued>>,
    /// The rest of the response being written.
    sending: Option<Chunks>,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(piece) = self.sending.as_mut().and_then(Iterator::next) {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        self.sending = None;
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match ready!(rx.poll_recv(cx)).map(|b| *b) {
            Some(Ok(response)) => {
                let mut chunks = response.into_chunks();
                let first = chunks.next().unwrap_or_default();
                self.sending = Some(chunks);
                Frame::data(first)
            }
            Some(Err(status)) => {
                self.rx = None;
                Frame::trailers(trailers(&status))
            }
            None => {
                self.rx = None;
                Frame::trailers(trailers(&Status::new(Code::Ok, "")))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none() && self.sending.is_none()
    }
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", http::HeaderValue::from_static("13"));
    }
    map
}
