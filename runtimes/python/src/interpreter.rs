//! The one CPython interpreter of this process: initialisation (virtualenv,
//! `sys.executable`, `sys.path`), releasing the GIL from the main thread, and
//! importing the application callable.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::cli::AppSpec;
use crate::errors::{flush_python_stderr, StartError};

/// The interpreter this binary was built against (from `build.rs`).
const BUILT_EXECUTABLE: Option<&str> = option_env!("POLYHOST_PYTHON_EXECUTABLE");

/// That interpreter's prefix (`sys.base_prefix`, from `build.rs`): where its
/// standard library is. Set as `PyConfig.home`, since libpython's compiled-in
/// prefix may be a place site users cannot read (a pyenv build under `/root`
/// copied to `/opt/polyhost/python/3.X`).
const BUILT_HOME: Option<&str> = option_env!("POLYHOST_PYTHON_HOME");

/// Initialises CPython, then releases the GIL from the calling (main) thread.
///
/// With `home`, `PyConfig.executable` is `<home>/bin/python`, which makes
/// `sys.prefix` and site-packages the virtualenv's (`site` finds its
/// `pyvenv.cfg` next to `sys.executable`). `PyConfig.home` is always the
/// built interpreter's prefix ([`BUILT_HOME`]), never the virtualenv
/// (`PYTHONHOME=<venv>` breaks start-up: a virtualenv has no standard library).
/// Python's own signal handlers are not installed: `signals` owns SIGTERM/SIGINT.
#[allow(unsafe_code)] // PyConfig initialisation and PyEval_SaveThread are FFI only.
pub fn initialize(home: Option<&Path>, paths: &[PathBuf]) -> Result<(), StartError> {
    let executable: PathBuf = match home {
        Some(h) => h.join("bin").join("python"),
        None => PathBuf::from(BUILT_EXECUTABLE.unwrap_or("/usr/bin/python3")),
    };
    let exe_c = CString::new(executable.as_os_str().as_bytes())
        .map_err(|_| StartError::Init("executable path contains a NUL byte".into()))?;
    let home_c = BUILT_HOME.and_then(|h| CString::new(h).ok());

    // SAFETY: PyConfig is a plain C struct that PyConfig_InitPythonConfig fully
    // initialises before any field is read; all calls happen on this thread before
    // the interpreter exists; `exe_c` and `home_c` outlive the calls that copy them; the config is
    // cleared exactly once on every path.
    unsafe {
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        // print() from the app lands in the error log at once, and nothing is
        // lost when the worker exits without finalising Python.
        config.buffered_stdio = 0;
        let mut status =
            ffi::PyConfig_SetBytesString(&mut config, &mut config.executable, exe_c.as_ptr());
        if let (false, Some(home)) = (ffi::PyStatus_Exception(status) != 0, &home_c) {
            status = ffi::PyConfig_SetBytesString(&mut config, &mut config.home, home.as_ptr());
        }
        if ffi::PyStatus_Exception(status) != 0 {
            ffi::PyConfig_Clear(&mut config);
            return Err(StartError::Init(status_message(status)));
        }
        let status = ffi::Py_InitializeFromConfig(&config);
        ffi::PyConfig_Clear(&mut config);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(StartError::Init(status_message(status)));
        }
        // SAFETY: the interpreter was just initialised on this thread, which holds
        // the GIL; after this call the main thread never touches Python state
        // without `Python::attach`, which takes the GIL again.
        ffi::PyEval_SaveThread();
    }

    Python::attach(|py| -> PyResult<()> {
        let sys = py.import("sys")?;
        sys.setattr("executable", executable.as_os_str())?;
        let sys_path = sys.getattr("path")?.cast_into::<PyList>()?;
        for (i, p) in paths.iter().enumerate() {
            sys_path.insert(i, p.as_os_str())?;
        }
        Ok(())
    })
    .map_err(|e| StartError::Init(format!("cannot set up sys: {e}")))
}

#[allow(unsafe_code)] // reading PyStatus.err_msg.
fn status_message(status: ffi::PyStatus) -> String {
    if status.err_msg.is_null() {
        return format!(
            "Python initialisation failed (exit code {})",
            status.exitcode
        );
    }
    // SAFETY: a non-null err_msg of a PyStatus is a static NUL-terminated C string.
    let msg = unsafe { std::ffi::CStr::from_ptr(status.err_msg) };
    format!("Python initialisation failed: {}", msg.to_string_lossy())
}

/// Imports `spec.module` and resolves `spec.attr` to a callable.
///
/// On failure the full traceback goes to stderr (the site's error log).
pub fn import_app(spec: &AppSpec) -> Result<Py<PyAny>, StartError> {
    Python::attach(|py| {
        let resolve = || -> PyResult<Py<PyAny>> {
            let mut obj = py.import(spec.module.as_str())?.into_any();
            for part in spec.attr.split('.') {
                obj = obj.getattr(part)?;
            }
            if !obj.is_callable() {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "{}:{} is not callable (it is a {})",
                    spec.module,
                    spec.attr,
                    obj.get_type().name()?
                )));
            }
            Ok(obj.unbind())
        };
        resolve().map_err(|e| {
            eprintln!(
                "polyhost-python: cannot import the app {}:{}",
                spec.module, spec.attr
            );
            e.display(py);
            flush_python_stderr(py);
            StartError::Import
        })
    })
}
