//! Which passt the egress gate talks to, and whether it is new enough.
//! cordon's own build (scripts/setup.sh) wins over the system's: Debian 12's
//! passt (2023-03) never sends the guest a FIN when the guest half-closed
//! first, so `nc HOST PORT </dev/null` hangs until the step's timeout, and
//! loses frame sync when a read ends inside a frame. A passt older than
//! [`MIN_DATE`] makes the policy unenforceable (exit 125), naming the fix.

use std::path::{Path, PathBuf};

/// Where scripts/setup.sh installs the passt it builds from Debian trixie's
/// source package; looked at before $PATH.
pub const CORDON_PASST: &str = "/usr/local/lib/cordon/bin/passt";

/// The oldest passt snapshot (YYYYMMDD) cordon runs: Debian trixie's
/// 0.0~git20250503, the one its half-close test passes with.
pub const MIN_DATE: u32 = 20250503;

/// How to get a passt that is new enough.
const FIX: &str = "run scripts/setup.sh: it builds passt from Debian trixie's source package \
                   into /usr/local/lib/cordon/bin/passt, which cordon uses first";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passt {
    pub path: PathBuf,
    /// As the binary states it, e.g. `0.0~git20250503.587980c-2+deb13u1`.
    pub version: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasstError {
    #[error("passt is not installed: {FIX}")]
    NotFound,
    #[error(
        "{path} reports version {version:?}, older than the {min} snapshot cordon needs (older ones \
         hang half-closed TCP connections and lose frame sync): {FIX}",
        min = fmt_date(MIN_DATE)
    )]
    TooOld { path: PathBuf, version: String },
}

fn fmt_date(d: u32) -> String {
    format!("{:04}-{:02}-{:02}", d / 10000, d / 100 % 100, d % 100)
}

/// The passt to run: `$CORDON_PASST` (a debugging aid), else cordon's own
/// build, else the first on $PATH; refused when older than [`MIN_DATE`].
pub fn find() -> Result<Passt, PasstError> {
    let path = std::env::var_os("CORDON_PASST")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(CORDON_PASST)).filter(|p| p.is_file()))
        .or_else(|| crate::backend::vm::probe::which("passt"))
        .filter(|p| p.is_file())
        .ok_or(PasstError::NotFound)?;
    check(path.clone(), version_of(&path))
}

/// Accepts `version` for the passt at `path` when its snapshot date is at
/// least [`MIN_DATE`]; an unknown version counts as too old.
pub fn check(path: PathBuf, version: String) -> Result<Passt, PasstError> {
    match build_date(&version) {
        Some(d) if d >= MIN_DATE => Ok(Passt { path, version }),
        _ => Err(PasstError::TooOld { path, version }),
    }
}

/// The version string compiled into a passt binary. Read from the file, not
/// from `passt --version`: passt prints it with stdio buffering and leaves
/// with `_exit`, so the output is lost whenever stdout is a pipe.
pub fn version_of(path: &Path) -> String {
    std::fs::read(path).ok().and_then(|b| version_in_binary(&b)).unwrap_or_else(|| "unknown version".into())
}

/// passt's version blob is `VERSION "\nCopyright Red Hat\n..."`, one
/// NUL-terminated string in .rodata.
fn version_in_binary(bytes: &[u8]) -> Option<String> {
    const MARK: &[u8] = b"\nCopyright Red Hat";
    let end = bytes.windows(MARK.len()).position(|w| w == MARK)?;
    let start = bytes[..end].iter().rposition(|b| *b == 0).map(|i| i + 1).unwrap_or(0);
    let v = std::str::from_utf8(&bytes[start..end]).ok()?.trim();
    (!v.is_empty() && v.len() < 100 && v.chars().all(|c| c.is_ascii_graphic() || c == ' ')).then(|| v.to_string())
}

/// The snapshot date in a passt version: Debian's `0.0~git20250503.587980c-2`,
/// upstream's `git describe` `2025_05_03.587980c`, Fedora's `0^20250503.g587980c`.
pub fn build_date(version: &str) -> Option<u32> {
    let b = version.as_bytes();
    (0..b.len()).find_map(|i| {
        let s = &b[i..];
        let digits = |r: std::ops::Range<usize>| s.get(r).filter(|d| d.iter().all(u8::is_ascii_digit));
        // Not in the middle of a longer number.
        if i > 0 && b[i - 1].is_ascii_digit() {
            return None;
        }
        let (y, m, d) = if let (Some(y), Some(m), Some(d)) = (digits(0..4), digits(4..6), digits(6..8)) {
            if s.get(8).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            (y, m, d)
        } else if let (Some(y), Some(b'_'), Some(m), Some(b'_'), Some(d)) =
            (digits(0..4), s.get(4), digits(5..7), s.get(7), digits(8..10))
        {
            (y, m, d)
        } else {
            return None;
        };
        let n = |x: &[u8]| std::str::from_utf8(x).ok()?.parse::<u32>().ok();
        let (y, m, d) = (n(y)?, n(m)?, n(d)?);
        ((2000..2200).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d)).then_some(y * 10000 + m * 100 + d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_build_date_table() {
        let table = [
            ("0.0~git20250503.587980c-2+deb13u1", Some(20250503)),
            ("0.0~git20230309.7c7625d-1", Some(20230309)),
            ("2025_05_03.587980c", Some(20250503)),
            ("2025_09_19.623dbf6-3-gabcdef0", Some(20250919)),
            ("0^20250512.g8ec1341-1.fc42", Some(20250512)),
            ("unknown version", None),
            ("", None),
            ("1.2.3", None),
            ("0.0~git202505031.x", None),
            ("0.0~git20251303.x", None),
        ];
        for (v, want) in table {
            assert_eq!(build_date(v), want, "{v}");
        }
    }

    #[test]
    fn test_check_refuses_old_and_unknown() {
        let p = PathBuf::from("/usr/bin/passt");
        assert!(check(p.clone(), "0.0~git20250503.587980c-2+deb13u1".into()).is_ok());
        assert!(check(p.clone(), "2025_09_19.623dbf6".into()).is_ok());
        for old in ["0.0~git20230309.7c7625d-1", "unknown version"] {
            let e = check(p.clone(), old.into()).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(old) && msg.contains("scripts/setup.sh") && msg.contains("2025-05-03"), "{msg}");
        }
    }

    #[test]
    fn test_version_in_binary() {
        let blob = b"\x7fELF..\0other\0passt \0\x000.0~git20250503.587980c-2+deb13u1\nCopyright Red Hat\nGNU\0tail";
        assert_eq!(version_in_binary(blob).as_deref(), Some("0.0~git20250503.587980c-2+deb13u1"));
        assert_eq!(version_in_binary(b"\0unknown version\nCopyright Red Hat\n\0").as_deref(), Some("unknown version"));
        assert_eq!(version_in_binary(b"no marker here"), None);
        assert_eq!(version_in_binary(b"\0\xff\xfe\nCopyright Red Hat"), None);
    }
}
