//! Compiles `hoist/v1/*.proto` with protox (no protoc) into prost messages and tonic services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["hoist/v1/cas.proto", "hoist/v1/control.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
