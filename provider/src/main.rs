//! `terraform-provider-computearbitrage`: the Terraform/OpenTofu plugin.
//!
//! Module map:
//! - [`provider`]: the provider block (`endpoint`, `token`) and the registry of data
//!   sources.
//! - [`client`]: the gRPC connection to the service and the mapping of its errors onto
//!   Terraform diagnostics.
//! - [`requirements`]: the `requirements` block, shared by the placement data source
//!   and the workload resource.
//! - [`canonical`]: comparing values in canonical form, so one thing written two ways
//!   is never a diff.
//! - [`data_source_spot_prices`], [`data_source_placement`], [`resource_workload`]: one
//!   file per data source and resource.
//! - [`duration`]: `timeouts` durations (`10m`, `1h30m`).
//! - [`number`]: Terraform numbers as the protocol encodes them (int, float or
//!   decimal string).
//! - [`schema`]: small helpers to declare attributes with descriptions.
//! - [`plugin_socket`]: TCP_NODELAY on the plugin listener tf-provider binds.
//!
//! This is the only crate that knows the Terraform plugin protocol; it knows nothing of
//! the service but its gRPC contract (`computearbitrage-api`).

mod canonical;
mod client;
mod data_source_placement;
mod data_source_spot_prices;
mod duration;
mod number;
mod plugin_socket;
mod provider;
mod requirements;
mod resource_workload;
mod schema;

fn main() {
    // tf-provider attaches a backtrace to every diagnostic when backtraces are enabled;
    // users must see our message, not a hundred lines of frames. Set before any thread
    // exists.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("terraform-provider-computearbitrage: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    plugin_socket::hold_handshake();
    if let Err(e) = runtime.block_on(tf_provider::serve(
        "computearbitrage",
        provider::ComputeArbitrageProvider::default(),
    )) {
        eprintln!("terraform-provider-computearbitrage: {e}");
        std::process::exit(1);
    }
}
