//! Generates the `istio.v1.auth` CA service (`proto/istio/v1/auth/ca.proto`) with the protoc that
//! protoc-bin-vendored ships, so a fresh machine needs no system protoc. The xDS transport itself
//! comes precompiled from envoy-types; `google.protobuf.Struct` is envoy-types' too, so a
//! `Struct` from a Node's metadata can go straight into a certificate request.

use std::io;

fn main() -> io::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(io::Error::other)?;
    let wkt = protoc_bin_vendored::include_path().map_err(io::Error::other)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(
            ".google.protobuf.Struct",
            "::envoy_types::pb::google::protobuf::Struct",
        )
        .compile_with_config(
            config,
            &["proto/istio/v1/auth/ca.proto".into()],
            &[std::path::PathBuf::from("proto"), wkt],
        )
}
