//! Byte scans for residue: whether any stored byte sequence still holds a value that must be
//! gone (an erased subject's pseudonym, a clear identifier, a password hash). Read as
//! streams of chunks, so a file of any size is scanned in bounded memory.

use futures::{Stream, StreamExt};
use memchr::memmem::Finder;

/// What a scan read, and how many of the objects it read held a needle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scan {
    /// Objects (files) read.
    pub objects: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Objects holding at least one needle.
    pub holding: u64,
}

impl Scan {
    pub fn add(&mut self, other: Scan) {
        self.objects += other.objects;
        self.bytes += other.bytes;
        self.holding += other.holding;
    }
}

/// Searches chunked input for any of a set of needles, across chunk boundaries.
pub struct Needles<'a> {
    finders: Vec<Finder<'a>>,
    longest: usize,
}

impl std::fmt::Debug for Needles<'_> {
    // The needles are what must not be shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Needles")
            .field("count", &self.finders.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Needles<'a> {
    /// Empty needles are ignored (they would match everything).
    pub fn new(needles: &[&'a [u8]]) -> Self {
        let needles: Vec<&[u8]> = needles.iter().copied().filter(|n| !n.is_empty()).collect();
        Self {
            longest: needles.iter().map(|n| n.len()).max().unwrap_or(0),
            finders: needles.into_iter().map(Finder::new).collect(),
        }
    }

    fn found_in(&self, haystack: &[u8]) -> bool {
        self.finders.iter().any(|f| f.find(haystack).is_some())
    }

    /// Whether a stream of chunks holds a needle; also how many bytes it read (it stops at the
    /// first needle found).
    ///
    /// # Errors
    /// The stream's first error.
    pub async fn scan<B, E>(
        &self,
        chunks: impl Stream<Item = Result<B, E>>,
    ) -> Result<(bool, u64), E>
    where
        B: AsRef<[u8]>,
    {
        if self.finders.is_empty() {
            return Ok((false, 0));
        }
        let mut chunks = std::pin::pin!(chunks);
        // The end of the previous chunk, so a needle split across two chunks is found.
        let mut window: Vec<u8> = Vec::new();
        let mut read = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            let chunk = chunk.as_ref();
            read += chunk.len() as u64;
            window.extend_from_slice(chunk);
            if self.found_in(&window) {
                return Ok((true, read));
            }
            let keep = self.longest.saturating_sub(1).min(window.len());
            window.drain(..window.len() - keep);
        }
        Ok((false, read))
    }

    /// As [`scan`](Self::scan), for bytes in memory.
    pub fn holds(&self, bytes: &[u8]) -> bool {
        !self.finders.is_empty() && self.found_in(bytes)
    }
}

/// Scans local files (a missing one counts as read and empty: a database's write-ahead log
/// may not exist).
///
/// # Errors
/// A file exists but cannot be read.
pub async fn scan_files(
    paths: &[std::path::PathBuf],
    needles: &Needles<'_>,
) -> std::io::Result<Scan> {
    use tokio::io::AsyncReadExt;
    let mut scan = Scan::default();
    for path in paths {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let chunks = futures::stream::try_unfold(
            (&mut file, vec![0u8; 1 << 20]),
            |(file, mut buf)| async move {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                let chunk = buf[..n].to_vec();
                Ok::<_, std::io::Error>(Some((chunk, (file, buf))))
            },
        );
        let (holds, bytes) = needles.scan(chunks).await?;
        scan.objects += 1;
        scan.bytes += bytes;
        scan.holding += u64::from(holds);
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(data: &[u8], size: usize) -> Vec<Result<Vec<u8>, ()>> {
        data.chunks(size).map(|c| Ok(c.to_vec())).collect()
    }

    #[tokio::test]
    async fn finds_a_needle_split_across_chunks_and_nothing_else() {
        let data = b"....sr_0123456789abcdef....".repeat(3);
        let needles = Needles::new(&[b"sr_0123456789abcdef"]);
        for size in 1..data.len() {
            let (found, _) = needles
                .scan(futures::stream::iter(chunked(&data, size)))
                .await
                .unwrap();
            assert!(found, "chunks of {size}");
        }
        let other = Needles::new(&[b"sr_0123456789abcdee", b""]);
        for size in [1, 3, 7, 100] {
            let (found, read) = other
                .scan(futures::stream::iter(chunked(&data, size)))
                .await
                .unwrap();
            assert!(!found, "chunks of {size}");
            assert_eq!(read, data.len() as u64);
        }
        assert!(!Needles::new(&[]).holds(&data));
        assert!(needles.holds(&data));
    }

    #[tokio::test]
    async fn scans_files_missing_ones_included() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let mut big = vec![b'x'; 3 << 20];
        big[(1 << 20) - 2..(1 << 20) + 3].copy_from_slice(b"hello");
        std::fs::write(&a, &big).unwrap();
        let paths = [a, dir.path().join("missing")];
        let scan = scan_files(&paths, &Needles::new(&[b"hello"]))
            .await
            .unwrap();
        assert_eq!((scan.objects, scan.holding), (1, 1));
        assert!(scan.bytes > 1 << 20 && scan.bytes < 3 << 20, "{scan:?}");
        let scan = scan_files(&paths, &Needles::new(&[b"world"]))
            .await
            .unwrap();
        assert_eq!((scan.bytes, scan.holding), (3 << 20, 0));
    }
}
