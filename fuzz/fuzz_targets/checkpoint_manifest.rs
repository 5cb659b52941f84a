//! Fuzzes the agent's check of a checkpoint manifest before a restore writes anything
//! (`computearbitrage_agent::checkpoint::check_manifest`): any JSON gives an answer,
//! never a panic, and an accepted manifest only names paths that stay inside the
//! restore directory, each file once, with a URL for every chunk.
#![no_main]

use computearbitrage_agent::checkpoint::check_manifest;
use computearbitrage_agent_protocol::Restore;
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    let Ok(restore) = serde_json::from_slice::<Restore>(data) else {
        return;
    };
    if check_manifest(&restore).is_ok() {
        let manifest = &restore.manifest;
        let paths = manifest
            .directories
            .iter()
            .chain(manifest.files.iter().map(|f| &f.path));
        for path in paths {
            let joined = Path::new("/restore").join(path);
            assert!(joined.starts_with("/restore/"), "{path:?} leaves the directory");
            assert!(
                Path::new(path)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))),
                "{path:?}"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for file in &manifest.files {
            assert!(seen.insert(&file.path), "{} twice", file.path);
            for sha in &file.chunks {
                assert!(restore.chunk_urls.contains_key(sha));
            }
        }
    }
});
