//! The generated `istio.v1.auth.IstioCertificateService`: a trivial in-test CA served by tonic on
//! loopback and called by the generated client, with a bearer token and node metadata.

use std::collections::HashMap;

use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use tonic::{Request, Response, Status};
use xds::ca::{
    IstioCertificateRequest, IstioCertificateResponse, IstioCertificateService,
    IstioCertificateServiceClient, IstioCertificateServiceServer, Roots, SERVICE_NAME,
};

/// "Signs" by wrapping the CSR; checks the token and echoes the workload name from metadata.
struct FakeCa;

#[tonic::async_trait]
impl IstioCertificateService for FakeCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("no bearer token"))?;
        if token != "pod-token" {
            return Err(Status::permission_denied("bad token"));
        }
        let req = request.into_inner();
        if !req.csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----") {
            return Err(Status::invalid_argument("not a PEM CSR"));
        }
        let workload = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("WorkloadName"))
            .and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![
                format!("leaf for {workload}, {} s", req.validity_duration),
                "root".to_string(),
            ],
            root_cert: Some(Roots {
                ca_cert: vec!["root".to_string()],
            }),
        }))
    }
}

#[tokio::test]
async fn create_certificate_round_trip() {
    assert_eq!(SERVICE_NAME, "istio.v1.auth.IstioCertificateService");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(FakeCa))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut client = IstioCertificateServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");

    let metadata = Struct {
        fields: HashMap::from([(
            "WorkloadName".to_string(),
            Value {
                kind: Some(Kind::StringValue("httpbin".to_string())),
            },
        )]),
    };
    let mut req = Request::new(IstioCertificateRequest {
        csr: "-----BEGIN CERTIFICATE REQUEST-----\n...".to_string(),
        validity_duration: 86_400,
        metadata: Some(metadata),
    });
    req.metadata_mut()
        .insert("authorization", "Bearer pod-token".parse().expect("ascii"));
    let resp = client
        .create_certificate(req)
        .await
        .expect("signed")
        .into_inner();
    assert_eq!(resp.cert_chain, ["leaf for httpbin, 86400 s", "root"]);
    assert_eq!(
        resp.root_cert.map(|r| r.ca_cert),
        Some(vec!["root".to_string()])
    );

    let mut req = Request::new(IstioCertificateRequest::default());
    req.metadata_mut()
        .insert("authorization", "Bearer other".parse().expect("ascii"));
    let err = client.create_certificate(req).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}
