fn main() -> Result<(), Box<dyn std::error::Error>> {
    // No protoc is installed on the build machines; use the vendored one unless told otherwise.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto/gantry.proto");
    tonic_prost_build::configure().compile_protos(&["proto/gantry.proto"], &["proto"])?;
    Ok(())
}
