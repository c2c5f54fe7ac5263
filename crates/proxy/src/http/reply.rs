//! Replies the proxy makes itself, in Envoy's words and, to gRPC clients, in gRPC's form.

use std::borrow::Cow;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};

use crate::body::{ProxyBody, empty, full};
use crate::headers;
use crate::outbound::fault::{self, AbortReply};
use crate::telemetry::ResponseFlags;

use super::ConnCtx;
use super::log::{Log, respond_logged};

/// A reply made by the proxy itself.
pub(super) struct LocalReply {
    pub(super) status: StatusCode,
    pub(super) flags: ResponseFlags,
    pub(super) details: Cow<'static, str>,
    pub(super) body: Cow<'static, str>,
    /// The gRPC status to a gRPC client, when not the one mapped from `status` (a fault
    /// injection's `grpcStatus`).
    pub(super) grpc_status: Option<u16>,
    /// Ends an HTTP/1 connection (`connection: close`), as Envoy's codec errors do.
    pub(super) close: bool,
}

impl LocalReply {
    pub(super) const NO_HEALTHY_UPSTREAM: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        flags: ResponseFlags::NO_HEALTHY_UPSTREAM,
        details: Cow::Borrowed("no_healthy_upstream"),
        body: Cow::Borrowed("no healthy upstream"),
        grpc_status: None,
        close: false,
    };
    pub(super) const NO_ROUTE: LocalReply = LocalReply {
        status: StatusCode::NOT_FOUND,
        flags: ResponseFlags::NO_ROUTE_FOUND,
        details: Cow::Borrowed("route_not_found"),
        body: Cow::Borrowed(""),
        grpc_status: None,
        close: false,
    };
    /// Istio's `block_all` route (`REGISTRY_ONLY`): a direct response of 502, no flag.
    pub(super) const BLOCKED: LocalReply = LocalReply {
        status: StatusCode::BAD_GATEWAY,
        flags: ResponseFlags::NONE,
        details: Cow::Borrowed("direct_response"),
        body: Cow::Borrowed(""),
        grpc_status: None,
        close: false,
    };
    pub(super) const OVERFLOW: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        flags: ResponseFlags::UPSTREAM_OVERFLOW,
        details: Cow::Borrowed("upstream_reset_before_response_started{overflow}"),
        body: Cow::Borrowed(
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        ),
        grpc_status: None,
        close: false,
    };
    pub(super) const TIMEOUT: LocalReply = LocalReply {
        status: StatusCode::GATEWAY_TIMEOUT,
        flags: ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
        details: Cow::Borrowed("response_timeout"),
        body: Cow::Borrowed("upstream request timeout"),
        grpc_status: None,
        close: false,
    };
    /// The last attempt's per-try timeout fired.
    pub(super) const PER_TRY_TIMEOUT: LocalReply = LocalReply {
        status: StatusCode::GATEWAY_TIMEOUT,
        flags: ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
        details: Cow::Borrowed("upstream_per_try_timeout"),
        body: Cow::Borrowed("upstream request timeout"),
        grpc_status: None,
        close: false,
    };
    /// HTTP/1.0 (or 0.9): Istio does not set `accept_http_10`.
    pub(super) const LOW_VERSION: LocalReply = LocalReply {
        status: StatusCode::UPGRADE_REQUIRED,
        flags: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        details: Cow::Borrowed("low_version"),
        body: Cow::Borrowed("Upgrade Required"),
        grpc_status: None,
        close: true,
    };
    /// Neither a `Host` header nor an authority in the URI.
    pub(super) const MISSING_HOST: LocalReply = LocalReply {
        status: StatusCode::BAD_REQUEST,
        flags: ResponseFlags::NONE,
        details: Cow::Borrowed("missing_host_header"),
        body: Cow::Borrowed(""),
        grpc_status: None,
        close: true,
    };
    /// A transfer coding other than `chunked` alone.
    pub(super) const TRANSFER_ENCODING: LocalReply = LocalReply {
        status: StatusCode::NOT_IMPLEMENTED,
        flags: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        details: Cow::Borrowed("http1.invalid_transfer_encoding"),
        body: Cow::Borrowed("Not Implemented"),
        grpc_status: None,
        close: true,
    };

    /// The route names a cluster that does not exist (a subset no DestinationRule defines).
    pub(super) const NO_CLUSTER: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        flags: ResponseFlags::NO_CLUSTER_FOUND,
        details: Cow::Borrowed("cluster_not_found"),
        body: Cow::Borrowed(""),
        grpc_status: None,
        close: false,
    };

    /// Envoy's RBAC filter's denial ([`crate::authz`]): `details` names the matched policy.
    pub(super) fn rbac_denied(details: Cow<'static, str>) -> LocalReply {
        LocalReply {
            status: StatusCode::FORBIDDEN,
            flags: ResponseFlags::NONE,
            details,
            body: Cow::Borrowed(crate::authz::DENIED_BODY),
            grpc_status: None,
            close: false,
        }
    }

    /// Envoy's `jwt_authn` filter's denial ([`crate::request_authn`]): 401 (403 for a
    /// disallowed audience) with the verifier's message; the caller adds `www-authenticate`.
    pub(super) fn jwt_denied(denial: &jwt_authn::Denial) -> LocalReply {
        LocalReply {
            status: denial.status,
            flags: ResponseFlags::NONE,
            details: Cow::Owned(denial.details.clone()),
            body: Cow::Borrowed(denial.body),
            grpc_status: None,
            close: false,
        }
    }

    /// A fault injection's abort, as Envoy's fault filter sends it: the status (or, to a gRPC
    /// client, the gRPC status) with `fault filter abort`, flag `FI`.
    pub(super) fn fault_abort(abort: AbortReply) -> LocalReply {
        LocalReply {
            status: abort.status,
            flags: ResponseFlags::FAULT_INJECTED,
            details: Cow::Borrowed(fault::ABORT_DETAILS),
            body: Cow::Borrowed(fault::ABORT_BODY),
            grpc_status: abort.grpc_status,
            close: false,
        }
    }

    /// A route's rewrite made an invalid request target (Envoy's 500).
    pub(super) const REWRITE_FAILED: LocalReply = LocalReply {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        flags: ResponseFlags::NONE,
        details: Cow::Borrowed("invalid_path_after_rewrite"),
        body: Cow::Borrowed(""),
        grpc_status: None,
        close: false,
    };

    /// A response the proxy built itself for a route (redirect, direct response, CORS
    /// preflight), logged with `details`.
    pub(super) fn answer(
        ctx: &ConnCtx,
        mut log: Log,
        mut resp: Response<ProxyBody>,
        details: &'static str,
    ) -> Response<ProxyBody> {
        let rec = log.rec();
        rec.response_code = resp.status().as_u16();
        rec.response_code_details = Some(details.into());
        if let Some(server) = &ctx.pi.cfg.server_header {
            resp.headers_mut().insert(header::SERVER, server.clone());
        }
        respond_logged(resp, log, None)
    }

    /// The upstream could not be reached (`UF`; `URX` too once the retries are spent), in
    /// Envoy 1.40's words: a connect timeout is `connection timeout`, any other failure
    /// (refused, unreachable, handshake) `remote connection failure`, and after retries the
    /// reason is the latest one's.
    pub(super) fn connect_failure(retries_exhausted: bool, timeout: bool) -> LocalReply {
        let (details, body) = match (timeout, retries_exhausted) {
            (true, false) => (
                "upstream_reset_before_response_started{connection_timeout}",
                "upstream connect error or disconnect/reset before headers. reset reason: connection timeout",
            ),
            (true, true) => (
                "upstream_reset_before_response_started{connection_timeout}",
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection timeout",
            ),
            (false, false) => (
                "upstream_reset_before_response_started{remote_connection_failure}",
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
            ),
            (false, true) => (
                "upstream_reset_before_response_started{remote_connection_failure}",
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure",
            ),
        };
        LocalReply {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flags: if retries_exhausted {
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE
                    | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
            } else {
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE
            },
            details: Cow::Borrowed(details),
            body: Cow::Borrowed(body),
            grpc_status: None,
            close: false,
        }
    }

    pub(super) fn reset(remote: bool) -> LocalReply {
        if remote {
            LocalReply {
                status: StatusCode::SERVICE_UNAVAILABLE,
                flags: ResponseFlags::UPSTREAM_REMOTE_RESET,
                details: Cow::Borrowed("upstream_reset_before_response_started{remote_reset}"),
                body: Cow::Borrowed(
                    "upstream connect error or disconnect/reset before headers. reset reason: remote reset",
                ),
                grpc_status: None,
                close: false,
            }
        } else {
            LocalReply {
                status: StatusCode::SERVICE_UNAVAILABLE,
                flags: ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                details: Cow::Borrowed(
                    "upstream_reset_before_response_started{connection_termination}",
                ),
                body: Cow::Borrowed(
                    "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                ),
                grpc_status: None,
                close: false,
            }
        }
    }

    /// The one way a local reply leaves the proxy: as Envoy's `sendLocalReply`, plain text to
    /// an HTTP client and a trailers-only gRPC status to a gRPC client.
    pub(super) fn respond(self, ctx: &ConnCtx, mut log: Log, to: ReplyTo) -> Response<ProxyBody> {
        let mut resp = if to.grpc {
            self.grpc(to.head)
        } else {
            self.plain()
        };
        let rec = log.rec();
        rec.response_code = resp.status().as_u16();
        rec.response_flags.insert(self.flags);
        rec.response_code_details = Some(self.details);
        if self.close && to.http1 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(server) = &ctx.pi.cfg.server_header {
            resp.headers_mut().insert(header::SERVER, server.clone());
        }
        respond_logged(resp, log, None)
    }

    /// The status and body text (`text/plain`) as they are.
    fn plain(&self) -> Response<ProxyBody> {
        let mut resp = Response::new(if self.body.is_empty() {
            empty()
        } else {
            match &self.body {
                Cow::Borrowed(b) => full(*b),
                Cow::Owned(b) => full(b.clone()),
            }
        });
        *resp.status_mut() = self.status;
        if !self.body.is_empty() {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        resp
    }

    /// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`, the status
    /// mapped to `grpc-status` and the body text as `grpc-message` (not to a HEAD request),
    /// percent-encoded as gRPC requires, in one HEADERS frame that ends the stream.
    fn grpc(&self, head: bool) -> Response<ProxyBody> {
        let mut resp = Response::new(empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            GRPC_STATUS.clone(),
            HeaderValue::from(
                self.grpc_status
                    .unwrap_or_else(|| grpc_status_of(self.status)),
            ),
        );
        if !self.body.is_empty()
            && !head
            && let Ok(v) = HeaderValue::from_str(
                &percent_encoding::utf8_percent_encode(&self.body, GRPC_MESSAGE_ESCAPED)
                    .to_string(),
            )
        {
            h.insert(GRPC_MESSAGE.clone(), v);
        }
        resp
    }
}

/// `grpc-status`.
static GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");
/// `grpc-message`.
static GRPC_MESSAGE: header::HeaderName = header::HeaderName::from_static("grpc-message");

/// What `grpc-message` percent-encodes, as Envoy's `PercentEncoding::encode` does after gRPC's
/// PROTOCOL-HTTP2.md: bytes outside `' '..'}'`, and `%` (non-ASCII always is).
const GRPC_MESSAGE_ESCAPED: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b'%').add(b'~');

/// The gRPC status of a local reply with HTTP status `status`: Envoy's
/// `Grpc::Utility::httpToGrpcStatus` (gRPC's http-grpc-status-mapping.md).
fn grpc_status_of(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// What a local reply needs to know about the request it answers.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplyTo {
    /// A gRPC request ([`headers::is_grpc`]): answered in gRPC's form.
    pub(super) grpc: bool,
    /// A HEAD request: no `grpc-message`.
    head: bool,
    /// HTTP/1.x downstream, where a reply may close the connection.
    http1: bool,
}

impl ReplyTo {
    pub(super) fn of<B>(req: &Request<B>) -> ReplyTo {
        ReplyTo {
            grpc: headers::is_grpc(req.headers()),
            head: req.method() == Method::HEAD,
            http1: req.version() != Version::HTTP_2,
        }
    }
}

/// The local reply to a request Envoy's HTTP/1 codec and connection manager refuse under
/// Istio's defaults before routing it, if it is one: HTTP/1.0 (426, unless `accept_http_10`,
/// which Istio does not set by default), a transfer coding other than `chunked` (501), no host
/// at all (400).
pub(super) fn refusal<B>(req: &Request<B>, accept_http_10: bool) -> Option<LocalReply> {
    // HTTP/1.0 cannot carry a transfer coding (hyper refuses it), so the version goes first.
    if req.version() < Version::HTTP_11 && !accept_http_10 {
        Some(LocalReply::LOW_VERSION)
    } else if req.version() == Version::HTTP_11
        && headers::unsupported_transfer_encoding(req.headers())
    {
        Some(LocalReply::TRANSFER_ENCODING)
    } else if req.uri().authority().is_none() && !req.headers().contains_key(header::HOST) {
        Some(LocalReply::MISSING_HOST)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_mapping_is_envoys() {
        for (http, grpc) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (426, 2),
            (501, 2),
        ] {
            let status = StatusCode::from_u16(http).expect("status");
            assert_eq!(grpc_status_of(status), grpc, "{http}");
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded_as_envoy_does() {
        let reply = LocalReply {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flags: ResponseFlags::NONE,
            details: Cow::Borrowed("x"),
            body: Cow::Borrowed("100% down ~ {ok}\n\u{e9}"),
            grpc_status: None,
            close: false,
        };
        let resp = reply.grpc(false);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(
            resp.headers()["grpc-message"],
            "100%25 down %7E {ok}%0A%C3%A9"
        );
        assert!(reply.grpc(true).headers().get("grpc-message").is_none());
    }
}
