//! QMP through the `qapi` crate, every call under a socket timeout so a
//! wedged QEMU cannot hang cordon.

use qapi::{qmp, Qmp};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to QMP at {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP command {command} failed")]
    Execute {
        command: &'static str,
        #[source]
        source: qapi::ExecuteError,
    },
}

fn session<T>(
    path: &Path,
    timeout: Duration,
    command: &'static str,
    f: impl FnOnce(&mut Qmp<qapi::Stream<std::io::BufReader<&UnixStream>, &UnixStream>>) -> Result<T, qapi::ExecuteError>,
) -> Result<T, QmpError> {
    let connect_err = |source| QmpError::Connect { path: path.display().to_string(), source };
    let stream = UnixStream::connect(path).map_err(connect_err)?;
    stream.set_read_timeout(Some(timeout)).map_err(connect_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(connect_err)?;
    let mut q = Qmp::from_stream(&stream);
    q.handshake().map_err(|source| QmpError::Execute { command: "qmp_capabilities", source })?;
    f(&mut q).map_err(|source| QmpError::Execute { command, source })
}

/// `query-status`: QEMU's run state, e.g. "running".
pub fn query_status(path: &Path, timeout: Duration) -> Result<String, QmpError> {
    session(path, timeout, "query-status", |q| {
        let s = q.execute(&qmp::query_status {})?;
        Ok(format!("{:?}", s.status).to_lowercase())
    })
}

/// `system_powerdown`: ask the guest to power off (ACPI).
pub fn system_powerdown(path: &Path, timeout: Duration) -> Result<(), QmpError> {
    session(path, timeout, "system_powerdown", |q| q.execute(&qmp::system_powerdown {}).map(|_| ()))
}

/// `quit`: stop QEMU now.
pub fn quit(path: &Path, timeout: Duration) -> Result<(), QmpError> {
    session(path, timeout, "quit", |q| q.execute(&qmp::quit {}).map(|_| ()))
}
