//! Fuzzes the agent's parsers of the clouds' interruption notices
//! (`computearbitrage_agent::notice`): any body gives a notice or an error, never a
//! panic; a notice from AWS's instance-action always has a deadline, and Azure's only
//! names events for the VM asked about.
#![no_main]

use computearbitrage_agent::notice;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = notice::aws_instance_action(data) {
        assert!(n.deadline.is_some());
        assert!(matches!(n.action.as_str(), "terminate" | "stop" | "hibernate"));
    }
    if let Ok(n) = notice::aws_rebalance(data) {
        assert!(n.deadline.is_none());
    }
    let _ = notice::gcp_preempted(data);
    if let Ok(document) = notice::azure_scheduled_events(data, "vm-spot") {
        for n in document.notices {
            assert!(n.event_id.is_some());
            assert!(matches!(n.action.as_str(), "Preempt" | "Terminate"));
        }
    }
});
