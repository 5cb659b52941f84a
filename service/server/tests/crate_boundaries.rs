//! The crate boundaries ARCHITECTURE.md promises, read from `cargo metadata`: what each
//! crate may never depend on, directly or through another crate (build and normal
//! dependencies; a test's dev-dependencies are its own business).

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;

struct Graph {
    /// package id → (name, ids of its normal and build dependencies)
    nodes: HashMap<String, (String, Vec<String>)>,
    by_name: HashMap<String, String>,
}

/// The host's target triple: the graph is resolved for it, so `cargo metadata` needs no
/// other platform's crates (and no network).
fn host_triple() -> String {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host")
}

fn graph() -> Graph {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
        ])
        .arg(host_triple())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: HashMap<String, String> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut nodes = HashMap::new();
    for node in metadata["resolve"]["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap().to_string();
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].as_str() != Some("dev"))
            })
            .map(|d| d["pkg"].as_str().unwrap().to_string())
            .collect();
        nodes.insert(id.clone(), (names[&id].clone(), deps));
    }
    let workspace: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let by_name = names
        .iter()
        .filter(|(id, _)| workspace.contains(id.as_str()))
        .map(|(id, name)| (name.clone(), id.clone()))
        .collect();
    Graph { nodes, by_name }
}

impl Graph {
    /// Every package `crate_name` depends on, transitively.
    fn reach(&self, crate_name: &str) -> BTreeSet<String> {
        let start = self
            .by_name
            .get(crate_name)
            .unwrap_or_else(|| panic!("no workspace crate {crate_name}"));
        let mut seen = BTreeSet::new();
        let mut names = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(id) = stack.pop() {
            for dep in &self.nodes[&id].1 {
                if seen.insert(dep.clone()) {
                    names.insert(self.nodes[dep].0.clone());
                    stack.push(dep.clone());
                }
            }
        }
        names
    }

    fn assert_never(&self, crate_name: &str, forbidden: &[&str]) {
        let reach = self.reach(crate_name);
        let found: Vec<&&str> = forbidden
            .iter()
            .filter(|f| {
                reach.iter().any(|r| {
                    r == *f || (f.ends_with('*') && r.starts_with(f.trim_end_matches('*')))
                })
            })
            .collect();
        assert!(
            found.is_empty(),
            "{crate_name} must never depend on {found:?}"
        );
    }
}

#[test]
fn each_crate_keeps_to_its_side_of_the_boundaries() {
    let graph = graph();
    let clouds = ["aws-sdk-*", "aws-config", "google-cloud-*", "azure_*"];
    // The engine knows no wire protocol and no concrete driver.
    graph.assert_never(
        "computearbitrage-orchestrator",
        &[
            "tonic",
            "prost",
            "computearbitrage-api",
            "tf-provider",
            "computearbitrage-driver-local",
        ],
    );
    graph.assert_never("computearbitrage-orchestrator", &clouds);
    // The provider talks to the service through the API crate only.
    graph.assert_never(
        "terraform-provider-computearbitrage",
        &[
            "computearbitrage-core",
            "computearbitrage-store",
            "computearbitrage-orchestrator",
            "computearbitrage-driver-local",
            "computearbitrage-router",
            "computearbitrage",
            "rusqlite",
        ],
    );
    graph.assert_never("terraform-provider-computearbitrage", &clouds);
    // Nothing of the service speaks the plugin protocol.
    for service_crate in [
        "computearbitrage",
        "computearbitrage-orchestrator",
        "computearbitrage-store",
        "computearbitrage-router",
        "computearbitrage-driver-local",
        "computearbitrage-core",
        "computearbitrage-api",
    ] {
        graph.assert_never(service_crate, &["tf-provider"]);
    }
    // The agent runs on every instance: none of the service's crates or its stacks,
    // only the wire types, which are serde alone.
    graph.assert_never(
        "computearbitrage-agent-protocol",
        &["computearbitrage-*", "tokio", "reqwest", "hyper"],
    );
    graph.assert_never(
        "computearbitrage-agent",
        &[
            "computearbitrage-core",
            "computearbitrage-store",
            "computearbitrage-storage",
            "computearbitrage-orchestrator",
            "computearbitrage-driver-local",
            "computearbitrage-router",
            "computearbitrage-api",
            "computearbitrage-conventions",
            "computearbitrage",
            "tonic",
            "prost",
            "rusqlite",
            "object_store",
        ],
    );
    graph.assert_never("computearbitrage-agent", &clouds);
    // The pure core: no runtime, no store, no network.
    graph.assert_never(
        "computearbitrage-core",
        &[
            "tokio",
            "rusqlite",
            "hyper",
            "reqwest",
            "computearbitrage-store",
        ],
    );
}

#[test]
fn the_boundary_check_sees_real_dependencies() {
    // Guards the check itself: edges that exist are found.
    let graph = graph();
    assert!(graph
        .reach("computearbitrage")
        .contains("computearbitrage-orchestrator"));
    assert!(graph
        .reach("computearbitrage-orchestrator")
        .contains("computearbitrage-store"));
    assert!(graph
        .reach("terraform-provider-computearbitrage")
        .contains("tf-provider"));
    assert!(graph.reach("computearbitrage-store").contains("rusqlite"));
}
