//! The image cache's shared state: one lock serializes building and pruning
//! across cordon processes (two first runs at once must both succeed), and
//! unpacked kernels are ordered by version, not as strings (6.1.0-10 is
//! newer than 6.1.0-9).

use std::cmp::Ordering;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a cordon waits for another one to finish building an image
/// (a kernel download plus the initramfs; minutes on a slow mirror).
const LOCK_DEADLINE: Duration = Duration::from_secs(600);

/// An exclusive flock(2) on `<cache>/lock`, released when dropped (or when
/// the process dies, so a SIGKILLed builder never wedges the cache).
pub struct CacheLock {
    _file: std::fs::File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("opening the image cache lock {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another cordon held the image cache lock {path} for over {waited:?}")]
    Timeout { path: PathBuf, waited: Duration },
}

impl CacheLock {
    /// Takes the lock, telling `log` once if another cordon holds it.
    pub fn acquire(cache: &Path, log: &dyn Fn(&str)) -> Result<CacheLock, LockError> {
        Self::acquire_at(&cache.join("lock"), log)
    }

    /// Takes the lock file `path` (its directory is created if needed).
    pub fn acquire_at(path: &Path, log: &dyn Fn(&str)) -> Result<CacheLock, LockError> {
        let path = path.to_path_buf();
        let open = || -> std::io::Result<std::fs::File> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)
        };
        let file = open().map_err(|source| LockError::Open { path: path.clone(), source })?;
        let started = Instant::now();
        let mut told = false;
        loop {
            // SAFETY: flock on an fd this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(CacheLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) && e.kind() != std::io::ErrorKind::Interrupted {
                return Err(LockError::Open { path, source: e });
            }
            if started.elapsed() > LOCK_DEADLINE {
                return Err(LockError::Timeout { path, waited: LOCK_DEADLINE });
            }
            if !told {
                log("waiting for another cordon to finish preparing the image cache");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Compares version-like strings chunk by chunk: runs of digits as numbers,
/// everything else as bytes, so `6.1.0-9` < `6.1.0-10` < `6.1.0-10+b1`.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_digits(a);
                let (nb, rb) = split_digits(b);
                // Compare as numbers without overflow: strip leading zeros,
                // then longer is bigger, then lexicographic.
                let (na, nb) = (trim_zeros(na), trim_zeros(nb));
                let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    s.split_at(n)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| **c == b'0').count();
    &s[n..]
}

/// The newest of the unpacked kernel directories (named after their .deb:
/// `linux-image-<release>_<debian version>_<arch>`), by version.
pub fn newest_kernel(mut dirs: Vec<PathBuf>) -> Option<PathBuf> {
    let name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dirs.sort_by(|a, b| version_cmp(&name(a), &name(b)));
    dirs.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_version_cmp_table() {
        let less = [
            ("6.1.0-9", "6.1.0-10"),
            ("6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64"),
            ("6.1.0-56-cloud-amd64_6.1.192-2_amd64", "6.1.0-56-cloud-amd64_6.1.192-10_amd64"),
            ("6.1.0-10", "6.1.0-10+b1"),
            ("5.10.0-30", "6.1.0-1"),
            ("6.1.0-09", "6.1.0-10"),
            ("6.1.0-99999999999999999999999", "6.1.0-100000000000000000000000"),
        ];
        for (a, b) in less {
            assert_eq!(version_cmp(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(version_cmp(b, a), Ordering::Greater, "{b} > {a}");
        }
        assert_eq!(version_cmp("6.1.0-10", "6.1.0-10"), Ordering::Equal);
        assert_eq!(version_cmp("", ""), Ordering::Equal);
    }

    #[test]
    fn test_newest_kernel_by_version_not_string() {
        let dirs = vec![
            PathBuf::from("/c/kernels/linux-image-6.1.0-10-cloud-amd64_6.1.38-1_amd64"),
            PathBuf::from("/c/kernels/linux-image-6.1.0-9-cloud-amd64_6.1.27-1_amd64"),
        ];
        // As strings, "...-9-..." sorts after "...-10-...".
        let mut as_strings = dirs.clone();
        as_strings.sort();
        assert!(as_strings.last().unwrap().to_string_lossy().contains("6.1.0-9-"));
        let newest = newest_kernel(dirs).unwrap();
        assert!(newest.to_string_lossy().contains("6.1.0-10-"), "{newest:?}");
        assert_eq!(newest_kernel(vec![]), None);
    }

    #[test]
    fn test_cache_lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = CacheLock::acquire(dir.path(), &|_| {}).unwrap();
        // flock locks belong to the open file description: a second open in
        // this process contends like another process would.
        let f = std::fs::OpenOptions::new().write(true).open(dir.path().join("lock")).unwrap();
        // SAFETY: flock on a valid fd.
        assert_ne!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        drop(first);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    }
}
