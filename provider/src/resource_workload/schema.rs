//! The schema of `computearbitrage_workload`, a description on every attribute.

use crate::requirements;
use crate::schema::{attribute, computed, optional, optional_computed, sensitive, string_list};
use std::collections::HashMap;
use tf_provider::schema::{AttributeConstraint, AttributeType, Block, NestedBlock, Schema};

pub fn schema() -> Schema {
    let string_map = AttributeType::Map(Box::new(AttributeType::String));
    let mut provider = computed(
        AttributeType::String,
        "Deprecated: use `cloud`. The same value, kept for one release.",
    );
    provider.deprecated = true;
    let attributes = HashMap::from([
        ("id".to_string(), computed(AttributeType::String, "The workload id assigned by the service (`wl-…`). Use it to import.")),
        ("name".to_string(), attribute(AttributeType::String, AttributeConstraint::Required, "Name, unique among the tenant's active workloads: 1 to 63 lower-case letters, digits and dashes. Changing it replaces the workload.")),
        ("command".to_string(), attribute(string_list(), AttributeConstraint::Required, "The program and its arguments, run on the instance. The local driver runs it as a process with `PORT` set, a cleared environment and its own working directory. Changing it replaces the workload.")),
        ("image".to_string(), optional(AttributeType::String, "Container image for real clouds; the local driver ignores it. Changing it replaces the workload.")),
        ("env".to_string(), optional_computed(string_map.clone(), "Environment variables of the workload: names of letters, digits and underscores; `PORT`, `TCP_PORT`, `CHECKPOINT_DIR` and names starting with `COMPUTEARBITRAGE_` are the service's own. At most 128 variables, 32 KiB per value, 128 KiB in all. Changed in place by a rolling replacement: a new instance starts with the new values (restored from a checkpoint taken for it, with `storage`) and passes its health check, then the route switches and the old instance drains and stops, behind the same endpoint. The plan warns, and the apply returns once the new instance serves.")),
        ("port".to_string(), optional_computed(AttributeType::Number, "The port the workload serves on, passed as `PORT` (the local driver picks a free port instead). Default 8080. Changing it replaces the workload.")),
        ("on_interruption".to_string(), optional_computed(AttributeType::String, "What to do when the cloud reclaims the capacity: `migrate` (default: checkpoint `$CHECKPOINT_DIR` when `storage` is enabled and move to the best other offer under the same id, endpoint and token) or `terminate`. Changed in place.")),
        ("on_unhealthy".to_string(), optional_computed(AttributeType::String, "What to do when the workload stays `UNHEALTHY`: `keep` (default: stay on the instance and wait for it to recover) or `replace`: after `replace_unhealthy_after_seconds`, move it to a fresh instance under the same id, endpoint and token, restored from its newest complete checkpoint (periodic ones need `checkpoint.interval` and `storage`). Changed in place.")),
        ("replace_unhealthy_after_seconds".to_string(), optional_computed(AttributeType::Number, "How long the workload must stay `UNHEALTHY` before `on_unhealthy = \"replace\"` acts, 1 to 86400 seconds. Default 300. A replacement that fails leaves the workload on its instance and is tried again after the same wait. Changed in place.")),
        ("fallback".to_string(), optional_computed(AttributeType::String, "What capacity to take when spot has none: `none` (default: spot only) or `on_demand`: on-demand capacity when no spot offer matches the requirements (`max_interruption_rate` does not apply to on-demand, which is never reclaimed; `max_price_per_hour` does, to the on-demand price), or when spot capacity errors persist. Paid at the offer's on-demand price (`market`, `price_per_hour`). Changed in place; applies to the next placement.")),
        ("tags".to_string(), optional_computed(string_map, "Tags for the instance and the workload: at most 50, keys up to 128 characters, values up to 256; keys starting with `computearbitrage-` are the service's own. Changed in place.")),
        ("status".to_string(), computed(AttributeType::String, "Lifecycle status: `RUNNING` after create; `UNHEALTHY`, `INTERRUPTED`, … as the service observes. Unknown in a plan that changes the workload in place, since it may change before the apply.")),
        ("cloud".to_string(), computed(AttributeType::String, "Cloud the workload runs on. May change when the service moves it; never a diff.")),
        ("provider".to_string(), provider),
        ("region".to_string(), computed(AttributeType::String, "Region the workload runs in.")),
        ("zone".to_string(), computed(AttributeType::String, "Zone, empty where the cloud prices per region.")),
        ("instance_type".to_string(), computed(AttributeType::String, "Instance type the workload runs on.")),
        ("instance_id".to_string(), computed(AttributeType::String, "The driver's instance id.")),
        ("endpoint".to_string(), computed(AttributeType::String, "The workload's stable URL through the router (`http://router/w/<id>/`, or `http://<id>.<base domain>/` with host routing). It stays the same when the workload moves. Requests need `access_token` or a tenant token with the `route` scope, as `Authorization: Bearer …` or `?token=…`.")),
        ("access_token".to_string(), sensitive(computed(AttributeType::String, "A token that reaches this workload, and only it, through the router. Sensitive."))),
        ("backend_endpoint".to_string(), computed(AttributeType::String, "The current instance's own `host:port`; changes when the workload moves, so use `endpoint` instead.")),
        ("tcp_port".to_string(), optional(AttributeType::Number, "A raw TCP port the workload serves on (the local driver sets `TCP_PORT` to a free port instead). When set, the router exposes it on `tcp_endpoint`. Changing it replaces the workload.")),
        ("tcp_listen_port".to_string(), optional_computed(AttributeType::Number, "The router's stable TCP listener port for `tcp_port`: the one requested (within the router's TCP port range, default 20000-20999), or allocated when unset. Changing it replaces the workload.")),
        ("tcp_allowed_cidrs".to_string(), optional_computed(string_list(), "Address ranges (CIDR, like `10.0.0.0/8` or `2001:db8::/32`) whose clients may connect to `tcp_endpoint`; connections from anywhere else are closed at once. Default `[\"127.0.0.0/8\", \"::1/128\"]`: this machine only. `[\"0.0.0.0/0\", \"::/0\"]` opens it to everyone. At most 64 ranges. Changed in place, and applies to new connections at once.")),
        ("tcp_endpoint".to_string(), computed(AttributeType::String, "`host:port` of the router's TCP listener for this workload, when `tcp_port` is set. Null otherwise.")),
        ("price_per_hour".to_string(), computed(AttributeType::Number, "Price paid, USD per hour: the spot price, or the on-demand price when `market` is `on_demand`.")),
        ("market".to_string(), computed(AttributeType::String, "`spot`, or `on_demand` when `fallback` took on-demand capacity. May change when the service moves the workload; never a diff.")),
        ("on_demand_price_per_hour".to_string(), computed(AttributeType::Number, "On-demand price of the same offer, USD per hour; null when unknown.")),
        ("cost_to_date".to_string(), computed(AttributeType::Number, "USD paid for every instance the workload has finished with (each migration closes one), at the price actually paid. It changes only when an instance is left, so plans stay clean; the running instance's cost so far is in `computearbitrage workload billing`.")),
        ("storage_prefix".to_string(), computed(AttributeType::String, "The workload's storage namespace, `workloads/{id}/`, when `storage.enabled`; null otherwise. `computearbitrage workload objects ID` lists it and `computearbitrage workload download ID KEY` fetches from it (keys like `artifacts/results/out.csv`). It stays the same for the workload's life.")),
        ("created_at".to_string(), computed(AttributeType::String, "When the service accepted the workload (RFC 3339).")),
    ]);
    let health_check = Block {
        attributes: HashMap::from([
            (
                "path".to_string(),
                optional_computed(AttributeType::String, "HTTP path checked with GET; 2xx is healthy, and redirects are not followed. Default `/health`."),
            ),
            (
                "interval_seconds".to_string(),
                optional_computed(AttributeType::Number, "Seconds between checks. Default 30."),
            ),
            (
                "timeout_seconds".to_string(),
                optional_computed(
                    AttributeType::Number,
                    "Seconds before a check counts as failed; at most the interval. Default 5, or the interval when that is shorter.",
                ),
            ),
            (
                "unhealthy_threshold".to_string(),
                optional_computed(AttributeType::Number, "Consecutive failures before the workload is UNHEALTHY. Default 3."),
            ),
        ]),
        description: "Health check of the workload; changed in place.".into(),
        ..Default::default()
    };
    let storage = Block {
        attributes: HashMap::from([
            ("enabled".to_string(), optional_computed(AttributeType::Bool, "Whether the workload gets a storage namespace for checkpoints and artifacts. Default `false`. Changing it replaces the workload.")),
            ("quota_gb".to_string(), optional_computed(AttributeType::Number, "Storage quota in GB. Default 0. Changed in place.")),
            ("retention_days".to_string(), optional_computed(AttributeType::Number, "Days objects are kept after the workload ends (terminated or failed). Default 0. Changed in place.")),
        ]),
        description: "Workload storage: a namespace (`storage_prefix`) for state, checkpoints and artifacts, reached through signed URLs. `enabled` forces a new workload; the quota and retention change in place.".into(),
        ..Default::default()
    };
    let checkpoint = Block {
        attributes: HashMap::from([
            ("signal".to_string(), optional_computed(AttributeType::String, "The signal the workload gets on an interruption notice when `command` is unset: `SIGTERM` (default), `SIGINT`, `SIGHUP`, `SIGQUIT`, `SIGUSR1` or `SIGUSR2`, sent to the workload and every process it started that is still its descendant. The agent then waits for the workload to exit, up to the notice's deadline less a safety margin, before it copies `$CHECKPOINT_DIR`. Changed in place.")),
            ("command".to_string(), optional(string_list(), "A program and its arguments that writes the checkpoint into `$CHECKPOINT_DIR` and exits 0, run as the workload's user in its directory and environment: on a notice instead of the signal, and before every periodic copy. Changed in place.")),
            ("interval".to_string(), optional(AttributeType::String, "How often `$CHECKPOINT_DIR` is copied while the workload runs, such as `10m` or `1h`; unset (default) copies it only on a notice. Needs `storage { enabled = true }`. Without a `command`, the directory is copied as it is, so write files whole (to a temporary name, then rename). Changed in place; a running workload picks it up within a heartbeat.")),
            ("keep".to_string(), optional_computed(AttributeType::Number, "How many complete checkpoints are kept, 1 to 100; older ones are deleted. Default 3. Changed in place.")),
        ]),
        description: "How the workload is checkpointed: told of a reclaim by a signal or a command, and copied every `interval`. A migration restores the newest complete checkpoint on the new instance; the whole block changes in place.".into(),
        ..Default::default()
    };
    let rebalance = Block {
        attributes: HashMap::from([
            ("min_savings_percent".to_string(), optional_computed(AttributeType::Number, "How much cheaper, in percent of what the workload pays now, the offer a fresh placement would choose must be, 1 to 95. Default 20. Changed in place.")),
            ("min_duration".to_string(), optional_computed(AttributeType::String, "How long that offer must have stayed that much cheaper, such as `30m` or `2h`, up to `168h`; `0s` moves at the next check. Default `1h`: one price blip is no reason to move. Changed in place.")),
        ]),
        description: "Price-driven moves: once another offer has been `min_savings_percent` cheaper for `min_duration`, the workload moves there make-before-break. The replacement is started and restored from a checkpoint taken for the move (with `storage`), it becomes healthy, the route switches in one step, and then the old instance drains and stops. The workload stays `RUNNING` with the same id, endpoint and token, and Terraform sees no change. A workload on on-demand capacity (`fallback = \"on_demand\"`) returns to spot by this rule, or after 10 minutes of a cheaper spot offer without the block. Unset: the workload stays on its offer while it runs.".into(),
        ..Default::default()
    };
    let timeouts = Block {
        attributes: HashMap::from([
            (
                "create".to_string(),
                optional(
                    AttributeType::String,
                    "How long create may take, such as `10m` (default) or `1h30m`.",
                ),
            ),
            (
                "delete".to_string(),
                optional(
                    AttributeType::String,
                    "How long destroy may take. Default `5m`.",
                ),
            ),
        ]),
        description: "Operation timeouts.".into(),
        ..Default::default()
    };
    Schema {
        version: 1,
        block: Block {
            attributes,
            blocks: HashMap::from([
                (requirements::BLOCK_NAME.to_string(), requirements::block()),
                ("health_check".to_string(), NestedBlock::Optional(health_check)),
                ("storage".to_string(), NestedBlock::Optional(storage)),
                ("checkpoint".to_string(), NestedBlock::Optional(checkpoint)),
                ("rebalance".to_string(), NestedBlock::Optional(rebalance)),
                ("timeouts".to_string(), NestedBlock::Optional(timeouts)),
            ]),
            description: "A workload on the cheapest matching spot capacity across clouds, kept running by the computearbitrage service.".into(),
            ..Default::default()
        },
    }
}
