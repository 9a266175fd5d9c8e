//! Compiles the `.proto` files with tonic and keeps a file descriptor set for gRPC reflection.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("audience_descriptor.bin"))
        .compile_protos(
            &["audience/v1/envelope.proto", "audience/v1/engine.proto"],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=audience");
    Ok(())
}
