//! Each local instance's own network, as a VM has one: a network namespace with a
//! veth pair to the service's side, an address of its own, and nothing else.
//!
//! - The instance's end (`ca<N>i`, inside the namespace `ca-<instance id>`) has the
//!   second address of a /30 block of [`Subnet`]; the service's end (`ca<N>h`, in the
//!   service's namespace) has the first. The namespace has no default route, so an
//!   instance reaches no other instance, and of the service's machine only the
//!   address at its end of the pair.
//! - The router and the health monitor reach the workload at its own address.
//! - The agent's control traffic reaches the service through a [`Forwarder`] bound to
//!   the service's end of the pair: one port, that instance's, forwarded to where the
//!   service listens. Nothing else of the machine is forwarded.
//! - The metadata endpoint is served inside the namespace (on its loopback), as a
//!   cloud's is link-local to its VM: cutting the instance off does not hide a notice.
//! - Block numbers are claimed through the kernel: the interface name carries the
//!   block, and creating a taken name fails, so two services on one machine never
//!   share an address.
//! - Cutting an instance off ([`set_connected`]) takes its pair down, which drops the
//!   router's traffic and the agent's alike: what a partition looks like from both
//!   sides.
//!
//! Needs root and `ip` (iproute2). Without them instances share the loopback interface
//! ([`Network::Loopback`]), and the service says so at start.

use computearbitrage_core::Error;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where local instances get their addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// Every instance on 127.0.0.1, on a port of its own.
    Loopback,
    /// A namespace of its own per instance, addressed from this subnet.
    Namespace(Subnet),
}

/// An IPv4 subnet split into /30 blocks, one per live instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

impl Subnet {
    pub const DEFAULT: Subnet = Subnet {
        base: u32::from_be_bytes([10, 213, 0, 0]),
        prefix: 16,
    };

    /// `10.213.0.0/16`. Prefixes from /8 to /28 (at least 4 blocks).
    pub fn parse(text: &str) -> Result<Subnet, String> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a CIDR subnet like 10.213.0.0/16"))?;
        let address: Ipv4Addr = address
            .trim()
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .trim()
            .parse()
            .ok()
            .filter(|p| (8..=28).contains(p))
            .ok_or_else(|| format!("the prefix of {text:?} must be from /8 to /28"))?;
        let mask = u32::MAX << (32 - prefix);
        let base = u32::from(address);
        if base & !mask != 0 {
            return Err(format!(
                "{text:?} has host bits set; the subnet starts at {}/{prefix}",
                Ipv4Addr::from(base & mask)
            ));
        }
        if address.is_loopback() || address.is_multicast() || address.is_unspecified() {
            return Err(format!("{text:?} is not a usable private subnet"));
        }
        Ok(Subnet { base, prefix })
    }

    fn blocks(&self) -> u32 {
        1 << (32 - self.prefix - 2)
    }

    /// The service's end and the instance's address of block `n`.
    fn block(&self, n: u32) -> (Ipv4Addr, Ipv4Addr) {
        let start = self.base + n * 4;
        (Ipv4Addr::from(start + 1), Ipv4Addr::from(start + 2))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// One instance's network, kept in its record so a restarted service finds it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceNetwork {
    /// The namespace's name (`ip netns`).
    pub namespace: String,
    /// The service's end of the veth pair: down while the instance is cut off.
    pub host_interface: String,
    /// The address of the service's end, where the instance reaches the service.
    pub host_address: Ipv4Addr,
    /// The instance's own address.
    pub address: Ipv4Addr,
    /// The port on `host_address` forwarded to the service, once an agent needs it.
    #[serde(default)]
    pub control_port: Option<u16>,
}

fn failure(message: impl Into<String>, retryable: bool) -> Error {
    Error::Driver {
        driver: "local".into(),
        message: message.into(),
        retryable,
    }
}

/// Whether this machine can give instances namespaces: root, and `ip` on the path.
pub fn namespaces_available() -> bool {
    crate::isolation::is_root()
        && std::process::Command::new("ip")
            .arg("-V")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Runs `ip ARGS`; its stderr on failure.
async fn ip(args: &[&str]) -> Result<(), String> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

fn namespace_path(namespace: &str) -> PathBuf {
    Path::new("/run/netns").join(namespace)
}

/// Makes the namespace and its veth pair for `instance_id`, with addresses from
/// `subnet`, both ends up and the namespace's loopback up. Nothing is left behind
/// when a step fails.
pub async fn create(instance_id: &str, subnet: Subnet) -> Result<InstanceNetwork, Error> {
    let namespace = format!("ca-{instance_id}");
    ip(&["netns", "add", &namespace]).await.map_err(|e| {
        failure(
            format!("cannot create the network namespace {namespace}: {e}; run the service as root with iproute2, or set workloads.local.network = \"loopback\""),
            false,
        )
    })?;
    match wire(&namespace, instance_id, subnet).await {
        Ok(network) => Ok(network),
        Err(e) => {
            let _ = ip(&["netns", "del", &namespace]).await;
            Err(e)
        }
    }
}

async fn wire(
    namespace: &str,
    instance_id: &str,
    subnet: Subnet,
) -> Result<InstanceNetwork, Error> {
    // Start where the id points, so concurrent creates rarely try the same block.
    let blocks = subnet.blocks();
    let start = instance_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
        % blocks;
    for step in 0..blocks {
        let n = (start + step) % blocks;
        let host_interface = format!("ca{n}h");
        let inner = format!("ca{n}i");
        match ip(&[
            "link",
            "add",
            &host_interface,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
            "netns",
            namespace,
        ])
        .await
        {
            Ok(()) => {}
            // Another live instance (of this service or another) holds the block.
            Err(e) if e.contains("File exists") => continue,
            Err(e) => {
                return Err(failure(
                    format!("cannot create the veth pair {host_interface}/{inner}: {e}"),
                    true,
                ))
            }
        }
        let (host_address, address) = subnet.block(n);
        let host_cidr = format!("{host_address}/30");
        let cidr = format!("{address}/30");
        let steps: [&[&str]; 5] = [
            &["addr", "add", &host_cidr, "dev", &host_interface],
            &["link", "set", &host_interface, "up"],
            &["-n", namespace, "addr", "add", &cidr, "dev", &inner],
            &["-n", namespace, "link", "set", &inner, "up"],
            &["-n", namespace, "link", "set", "lo", "up"],
        ];
        for args in steps {
            ip(args).await.map_err(|e| {
                failure(
                    format!("cannot configure {namespace} (ip {}): {e}", args.join(" ")),
                    true,
                )
            })?;
        }
        return Ok(InstanceNetwork {
            namespace: namespace.to_string(),
            host_interface,
            host_address,
            address,
            control_port: None,
        });
    }
    Err(failure(
        format!("every /30 block of workloads.local.subnet ({subnet}) is in use; widen the subnet"),
        true,
    ))
}

/// Whether `nft` (nftables) is on the path: the namespaces' packet filter.
pub fn packet_filter_available() -> bool {
    std::process::Command::new("nft")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What the instance may send, inside its namespace: its own loopback, answers on
/// connections made to it (the router's, the monitor's), and new connections only
/// to its control port. Everything else it sends is dropped, IPv6 included: without
/// the filter, the service's end of the pair reaches every service of the machine
/// that listens on all addresses. The control port is open to the workload's user
/// too: the agent uploads checkpoints as that user. Returns whether a filter is in
/// place; without `nft` there is none.
pub async fn filter(network: &InstanceNetwork) -> Result<bool, Error> {
    if !packet_filter_available() {
        return Ok(false);
    }
    let control = match network.control_port {
        Some(port) => format!("ip daddr {} tcp dport {port} accept", network.host_address),
        None => String::new(),
    };
    let rules = format!(
        "table inet computearbitrage {{\n  chain output {{\n    type filter hook output priority 0; policy drop;\n    oifname \"lo\" accept\n    ct state established,related accept\n    {control}\n  }}\n}}\n"
    );
    nft(Some(&network.namespace), &rules).await.map_err(|e| {
        failure(
            format!(
                "cannot install the packet filter of {}: {e}",
                network.namespace
            ),
            true,
        )
    })?;
    Ok(true)
}

/// What the machine's own processes may send to the instances: only the service's
/// user (`uid`, the router's and the health monitor's) opens connections into
/// `subnet`; the processes of other users, workloads on loopback among them, cannot
/// go around the router. Replaced whole each time, so every service on the subnet
/// (they share the rule) leaves it the same. Returns whether it is in place.
pub async fn guard_from_machine(subnet: Subnet, uid: u32) -> Result<bool, Error> {
    if !packet_filter_available() {
        return Ok(false);
    }
    let table = format!(
        "computearbitrage_{}",
        subnet.to_string().replace(['.', '/'], "_")
    );
    let rules = format!(
        "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    ip daddr {subnet} meta skuid != {uid} drop\n  }}\n}}\n"
    );
    nft(None, &rules).await.map_err(|e| {
        failure(
            format!("cannot install the machine's packet filter for {subnet}: {e}"),
            true,
        )
    })?;
    Ok(true)
}

/// Loads `rules` with `nft -f -`, inside `namespace` when one is named.
async fn nft(namespace: Option<&str>, rules: &str) -> Result<(), String> {
    let mut command = match namespace {
        Some(namespace) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", namespace, "nft", "-f", "-"]);
            c
        }
        None => {
            let mut c = tokio::process::Command::new("nft");
            c.args(["-f", "-"]);
            c
        }
    };
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(rules.as_bytes()).await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// Kills every process still in the namespace: one that left the instance's process
/// group (`setsid`, a daemon) would otherwise keep the namespace, its pair and its
/// address alive after the instance.
async fn kill_stragglers(namespace: &str) {
    let Ok(output) = tokio::process::Command::new("ip")
        .args(["netns", "pids", namespace])
        .output()
        .await
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| *p > 1)
    {
        // SAFETY: kill(2) on a process inside this instance's own namespace.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Removes the namespace, and with it the veth pair, after killing whatever still
/// runs in it. Gone already is fine.
pub async fn destroy(network: &InstanceNetwork) {
    if !namespace_path(&network.namespace).exists() {
        return;
    }
    kill_stragglers(&network.namespace).await;
    if let Err(e) = ip(&["netns", "del", &network.namespace]).await {
        tracing::warn!(namespace = %network.namespace, error = %e, "cannot remove an instance's network namespace");
    }
}

/// [`destroy`] for callers outside a runtime (the driver reloading its records).
pub fn destroy_blocking(network: &InstanceNetwork) {
    if namespace_path(&network.namespace).exists() {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &network.namespace])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Connects or cuts off the instance: its veth pair up or down.
pub async fn set_connected(network: &InstanceNetwork, connected: bool) -> Result<(), Error> {
    let state = if connected { "up" } else { "down" };
    ip(&["link", "set", &network.host_interface, state])
        .await
        .map_err(|e| {
            failure(
                format!("cannot set {} {state}: {e}", network.host_interface),
                true,
            )
        })
}

/// The namespace, opened for `setns(2)`.
pub fn open_namespace(namespace: &str) -> std::io::Result<std::fs::File> {
    std::fs::File::open(namespace_path(namespace))
}

/// Moves the calling thread into the network namespace `fd`. For a child between fork
/// and exec: setns is async-signal-safe.
pub fn enter(fd: i32) -> std::io::Result<()> {
    // SAFETY: setns on a descriptor we opened; it changes only the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A listening socket bound to `address` inside `namespace`. A socket stays in the
/// namespace it was made in, so it is made on a thread of its own that enters the
/// namespace and then ends; the service's threads never change namespace.
pub fn listen_in(namespace: &str, address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let file = open_namespace(namespace)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(file.as_raw_fd())?;
                let listener = std::net::TcpListener::bind(address)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

/// Forwards TCP connections from `listen` to `target`: an instance's one way to the
/// service. Stops when dropped.
pub struct Forwarder {
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Forwarder> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(1024)?;
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                };
                // Finished connections are reaped as new ones come.
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Forwarder { task })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // The JoinSet goes with the task, and every connection with it.
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_into_blocks_and_bad_ones_say_why() {
        let s = Subnet::parse("10.213.0.0/16").unwrap();
        assert_eq!(s.blocks(), 16384);
        assert_eq!(
            s.block(0),
            ("10.213.0.1".parse().unwrap(), "10.213.0.2".parse().unwrap())
        );
        assert_eq!(
            s.block(16383),
            (
                "10.213.255.253".parse().unwrap(),
                "10.213.255.254".parse().unwrap()
            )
        );
        assert_eq!(s.to_string(), "10.213.0.0/16");
        for (bad, says) in [
            ("10.213.0.0", "CIDR"),
            ("10.213.0.1/16", "host bits"),
            ("10.213.0.0/30", "/8 to /28"),
            ("127.0.0.0/8", "usable"),
            ("ten/16", "IPv4"),
        ] {
            let e = Subnet::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
