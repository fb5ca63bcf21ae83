//! Error types of the worker and how they map to exit codes; the per-request
//! error path (traceback to stderr once, then a 500 or an aborted stream).

use polyhost_protocol::exit;
use pyo3::prelude::*;

/// Why the worker could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Init(String),
    /// The traceback has already been printed.
    #[error("the application could not be imported")]
    Import,
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers, the epoll set or the serving threads could not be set up.
    #[error("cannot start serving: {0}")]
    Runtime(#[source] std::io::Error),
}

impl StartError {
    /// Exit code: 3 for an app that does not import, 2 for usage, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Import => exit::APP_IMPORT_FAILED,
            StartError::Usage(_) => exit::USAGE,
            _ => exit::FAILED,
        }
    }
}

pyo3::create_exception!(
    polyhost,
    ClientDisconnected,
    pyo3::exceptions::PyOSError,
    "The client went away; the response cannot be delivered."
);

/// Writes an application error once: a header line naming the request, then
/// the traceback. Disconnects are not errors of the app and are not logged.
pub fn log_app_error(py: Python<'_>, site: Option<&str>, method: &str, uri: &str, err: PyErr) {
    if err.is_instance_of::<ClientDisconnected>(py) {
        return;
    }
    let site = site.map(|s| format!(" site {s}:")).unwrap_or_default();
    eprintln!("polyhost-python:{site} error in the application for {method} {uri}:");
    err.display(py);
    flush_python_stderr(py);
}

/// Flushes Python's `sys.stderr` so its output lands before ours.
pub fn flush_python_stderr(py: Python<'_>) {
    if let Ok(err) = py.import("sys").and_then(|s| s.getattr("stderr")) {
        let _ = err.call_method0("flush");
    }
}

/// `wsgi.errors`: text written here goes to stderr, the site's error log.
#[pyclass(frozen, module = "polyhost")]
pub struct ErrorStream;

#[pymethods]
impl ErrorStream {
    /// Writes `s` (a str; bytes are accepted too) and returns its length.
    fn write(&self, s: &Bound<'_, PyAny>) -> PyResult<usize> {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        let n = if let Ok(text) = s.cast::<pyo3::types::PyString>() {
            let text = text.to_cow()?;
            err.write_all(text.as_bytes())?;
            text.chars().count()
        } else if let Ok(b) = s.cast::<pyo3::types::PyBytes>() {
            err.write_all(b.as_bytes())?;
            b.as_bytes().len()
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "wsgi.errors.write() argument must be str, not {}",
                s.get_type().name()?
            )));
        };
        Ok(n)
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    fn flush(&self) -> PyResult<()> {
        use std::io::Write;
        std::io::stderr().flush()?;
        Ok(())
    }
}
