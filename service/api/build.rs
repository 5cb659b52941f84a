// Uses the vendored protoc so `cargo build` needs nothing installed on the machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/computearbitrage/v1/computearbitrage.proto");
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        // JSON output of the operator CLI.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_protos(
            &["proto/computearbitrage/v1/computearbitrage.proto"],
            &["proto"],
        )?;
    Ok(())
}
