//! A file as a stream of large chunks, read on the blocking pool: how local objects are
//! served and how clients (the CLI, the agent) send a file without holding it whole.

use bytes::Bytes;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Bytes read per chunk (object_store's own local stream reads 8 KiB at a time, which
/// made restores 15× slower than `cp`).
pub const CHUNK_BYTES: usize = 1 << 20;

/// `range` of `file` as chunks of up to [`CHUNK_BYTES`]; a file shorter than `range`
/// ends the stream with an `UnexpectedEof` error.
pub fn file_chunks(
    file: std::fs::File,
    range: Range<u64>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let file = Arc::new(Mutex::new(file));
    let end = range.end;
    futures::stream::unfold((file, range.start), move |(file, offset)| async move {
        if offset >= end {
            return None;
        }
        let want = (end - offset).min(CHUNK_BYTES as u64) as usize;
        let reader = file.clone();
        let read = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buffer = vec![0u8; want];
            let file = reader.lock().unwrap_or_else(|p| p.into_inner());
            let mut filled = 0;
            while filled < want {
                match file.read_at(&mut buffer[filled..], offset + filled as u64)? {
                    0 => break,
                    n => filled += n,
                }
            }
            buffer.truncate(filled);
            Ok::<_, std::io::Error>(buffer)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match read {
            Ok(buffer) if buffer.is_empty() => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ended early",
                )),
                (file, end),
            )),
            Ok(buffer) => {
                let next = offset + buffer.len() as u64;
                Some((Ok(Bytes::from(buffer)), (file, next)))
            }
            Err(e) => Some((Err(e), (file, end))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::io::Write;

    #[tokio::test]
    async fn a_range_reads_back_whole_in_chunks() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..(CHUNK_BYTES * 2 + 10))
            .map(|i| (i % 253) as u8)
            .collect();
        file.write_all(&data).unwrap();
        let chunks: Vec<_> = file_chunks(file.try_clone().unwrap(), 5..data.len() as u64)
            .collect()
            .await;
        let sizes: Vec<usize> = chunks.iter().map(|c| c.as_ref().unwrap().len()).collect();
        assert_eq!(sizes, vec![CHUNK_BYTES, CHUNK_BYTES, 5]);
        let joined: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(joined, data[5..]);
        // Asking past the end is an error, not a short read.
        let past: Vec<_> = file_chunks(file, 0..data.len() as u64 + 1).collect().await;
        assert!(past.last().unwrap().is_err());
    }
}
