//! Generates the Open Inference Protocol's gRPC messages and service from `proto/` (tonic and
//! prost), compiled by protox, a protobuf compiler in Rust: no `protoc` on the build machine or
//! in the container image.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_service.proto";
    println!("cargo:rerun-if-changed={proto}");
    let files = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // The server's side only: the tests call it with Triton's own client.
        .build_client(false)
        // prost's codec with each request's wire format bounded before it is decoded.
        .codec_path("crate::api::v2::wire::Bounded")
        // `bytes` fields as `Bytes`: the images and tensors of a request are slices of the
        // buffer the message arrived in, not copies of it.
        .bytes(".inference")
        .compile_fds(files)?;
    Ok(())
}
